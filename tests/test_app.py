"""The launched Gradio app, driven through its HTTP API with gradio_client, as a browser or a script would."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app_server import app_process, running_app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAMPLE = EXAMPLES / "person1951_bacteria_4882.jpeg"
PASSWORDS = {"alice": "first long passphrase", "bob": "second long passphrase", "carol": "third long passphrase"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir) -> Iterator[dict]:
    """One launched app per module: temp SQLite database, the tiny model, doctors alice, bob and carol."""
    model = f"local-dir:{tiny_model_dir}"
    with running_app(
        tmp_path_factory.mktemp("app"), model_names=[model], doctors=PASSWORDS, max_upload_mb=1.0
    ) as running:
        yield {**running, "model": model}


def _client(server: dict, name: str):
    from gradio_client import Client

    return Client(server["url"], auth=(name, PASSWORDS[name]), verbose=False, download_files=str(server["root"] / name))


@pytest.fixture(scope="module")
def alice(server):
    return _client(server, "alice")


@pytest.fixture(scope="module")
def bob(server):
    return _client(server, "bob")


def _diagnose(client, server, *, patient="Jane Roe", exam="2024-05-01", file=SAMPLE, model=None, method="gradcam"):
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(file)) if file is not None else None,
        patient,
        exam,
        model or server["model"],
        method,
        0.4,
        api_name="/diagnose",
    )


def _history(client, patient="", date_from=None, date_to=None, label="Any", page=1):
    table, caption, page = client.predict(patient, date_from, date_to, label, page, api_name="/history")
    return table["data"], caption


# ------------------------------------------------------------------------------------------------ sign-in


def test_unauthenticated_calls_are_refused(server):
    from gradio_client import Client

    with pytest.raises(Exception, match="401|Unauthorized|[Ll]ogin"):
        Client(server["url"], verbose=False)
    for path in ("gradio_api/call/history", "gradio_api/queue/join", "gradio_api/info"):
        response = httpx.request("GET" if path.endswith("info") else "POST", server["url"] + path, json={"data": []})
        assert response.status_code == 401, path
    page = httpx.get(server["url"])
    assert '"auth_required":true' in page.text.replace(" ", "") and "users add NAME" in page.text


def test_wrong_password_is_refused(server):
    from gradio_client import Client

    with pytest.raises(Exception, match="[Cc]redentials|401|[Ll]ogin"):
        Client(server["url"], auth=("alice", "not her password"), verbose=False)


def test_sign_in_is_throttled_after_repeated_failures(server):
    login = server["url"] + "login"
    for _ in range(5):
        assert httpx.post(login, data={"username": "carol", "password": "guess"}).status_code == 400
    # Even the right password is refused now, for carol only.
    assert httpx.post(login, data={"username": "carol", "password": PASSWORDS["carol"]}).status_code == 400
    assert httpx.post(login, data={"username": "bob", "password": PASSWORDS["bob"]}).status_code == 200


def test_logout_ends_the_session(server):
    with httpx.Client(base_url=server["url"]) as browser:
        assert browser.post("login", data={"username": "bob", "password": PASSWORDS["bob"]}).status_code == 200
        assert browser.get("gradio_api/info").status_code == 200
        assert browser.get("logout").status_code == 302
        browser.cookies.clear()  # a browser drops them when told to; the server must have forgotten them too
    with httpx.Client(base_url=server["url"]) as browser:
        cookies = dict(browser.post("login", data={"username": "bob", "password": PASSWORDS["bob"]}).cookies)
        browser.get("logout")
    # A client that kept the old cookies (e.g. copied them before logout) is refused too.
    with httpx.Client(base_url=server["url"], cookies=cookies) as replay:
        assert replay.get("gradio_api/info").status_code == 401


def test_only_the_intended_endpoints_are_public(alice):
    endpoints = set(alice.view_api(print_info=False, return_format="dict")["named_endpoints"])
    expected = {"/diagnose", "/history", "/export_csv", "/open_record", "/update_record", "/delete_record",
                "/show_prediction", "/final_read", "/agreement", "/report", "/operating_point", "/batch"}  # fmt: skip
    assert expected | {"/compare", "/model_card"} <= endpoints
    assert not {"/preview", "/greet", "/change_target", "/change_opacity"} & endpoints


# ------------------------------------------------------------------------------------------------ diagnose


def test_diagnose_returns_probabilities_heatmap_and_saves_the_record(server, alice):
    label, summary, original, overlay, target, info, heat, gate, record_id = _diagnose(
        alice, server, patient="Predict Test"
    )
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(confidences) == {"NORMAL", "PNEUMONIA"} and sum(confidences.values()) == pytest.approx(1.0)
    assert label["label"] in confidences
    assert "operating threshold 0.500" in summary and f"Model output: {label['label']}" in summary
    # display copies go to the browser as JPEG (WebP cost 130 ms of CPU each); the stored upload is untouched
    assert Image.open(original).format == "JPEG" and Image.open(overlay).format == "JPEG"
    original_px = np.asarray(Image.open(original).convert("RGB"))
    overlay_px = np.asarray(Image.open(overlay).convert("RGB"))
    assert original_px.shape == overlay_px.shape and max(original_px.shape[:2]) <= 1024
    assert np.abs(original_px.astype(int) - overlay_px.astype(int)).mean() > 5  # the heatmap is really drawn
    assert target["value"] == label["label"]
    assert f"saved as record **{int(record_id)}**" in info and "version" in info
    assert "of the heat lies inside the estimated lung fields" in heat and "prediction is hidden" not in str(gate)
    rows, _ = _history(alice, patient="Predict Test")
    assert [r[0] for r in rows] == [int(record_id)] and rows[0][4] == label["label"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"file": None}, "Upload a chest X-ray"),
        ({"patient": "   "}, "Enter the patient"),
        ({"exam": "2024-13-45"}, "not a date"),
        ({"exam": "2999-01-01"}, "in the future"),
        ({"model": "some-other-model"}, "not in the list of choices|Unknown model"),
        ({"method": "shap"}, "not in the list of choices|Unknown heatmap method"),
    ],
)
def test_bad_inputs_give_friendly_errors(server, alice, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message) as info:
        _diagnose(alice, server, **kwargs)
    assert "Traceback" not in str(info.value)


def test_user_errors_are_one_log_line_and_a_long_name_is_refused_not_cut(server, alice, caplog):
    """A doctor's mistake is logged as one warning line (no traceback); a 2,000-character name is refused whole."""
    from gradio_client.exceptions import AppError

    caplog.set_level("WARNING")
    with pytest.raises(AppError, match="not a date"):
        _diagnose(alice, server, exam="2024-13-45")
    with pytest.raises(AppError, match="2000 characters; at most 200"):
        _diagnose(alice, server, patient="N" * 2000)
    refused = [r for r in caplog.records if "refused input" in r.getMessage()]
    assert len(refused) >= 2 and all(r.levelname == "WARNING" and r.exc_info is None for r in refused)
    assert not [r for r in caplog.records if r.exc_info]  # no traceback for either mistake
    assert all("N" * 400 not in r.getMessage() for r in caplog.records)  # the huge field is not logged whole


def test_non_image_and_oversized_uploads_are_refused(server, alice, tmp_path):
    from gradio_client.exceptions import AppError

    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file pretending to be a PNG")
    with pytest.raises(AppError, match="(?i)not .*image|could not be read|accepted") as info:
        _diagnose(alice, server, file=fake)
    assert "Traceback" not in str(info.value)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2**20
    with pytest.raises(Exception, match="(?i)size|large|413"):
        _diagnose(alice, server, file=big)


# ------------------------------------------------------------------------------------------------ history


def test_history_is_private_between_doctors(server, alice, bob):
    from gradio_client.exceptions import AppError

    *_, alice_id = _diagnose(alice, server, patient="Alice Private Patient")
    *_, bob_id = _diagnose(bob, server, patient="Bob Private Patient")
    alice_id, bob_id = int(alice_id), int(bob_id)
    alice_rows, _ = _history(alice)
    bob_rows, _ = _history(bob)
    assert alice_id in [r[0] for r in alice_rows] and bob_id not in [r[0] for r in alice_rows]
    assert [r[0] for r in bob_rows] == [bob_id] and "Alice Private Patient" not in str(bob_rows)
    # Bob calls the endpoints directly with Alice's record id: each answers as if it did not exist.
    for api_name, args in (
        ("/open_record", (alice_id, 0.4)),
        ("/update_record", (alice_id, "Stolen", "2024-01-01")),
        ("/delete_record", (alice_id,)),
    ):
        with pytest.raises(AppError, match=f"Record {alice_id} was not found"):
            bob.predict(*args, api_name=api_name)
    details, *_ = alice.predict(alice_id, 0.4, api_name="/open_record")
    assert "Alice Private Patient" in details
    export = bob.predict("", None, None, "Any", api_name="/export_csv")
    assert "Alice Private Patient" not in Path(export).read_text()


def test_open_edit_and_delete_a_record(server, alice):
    from gradio_client.exceptions import AppError

    *_, record_id = _diagnose(alice, server, patient="Edit Me", exam="2024-02-02")
    record_id = int(record_id)
    details, image, heatmap, patient, exam, *_ = alice.predict(record_id, 0.5, api_name="/open_record")
    assert f"Record {record_id}: Edit Me" in details and (patient, exam) == ("Edit Me", "2024-02-02")
    assert Image.open(image).size == Image.open(heatmap).size
    message = alice.predict(record_id, "Edited Name", "2024-02-03", api_name="/update_record")
    assert message == f"Saved: record {record_id} is now Edited Name, exam date 2024-02-03."
    rows, _ = _history(alice, patient="Edited Name")
    assert [(r[0], r[3]) for r in rows] == [(record_id, "2024-02-03")]
    with pytest.raises(AppError, match="in the future"):
        alice.predict(record_id, "Edited Name", "2999-01-01", api_name="/update_record")
    message, *_ = alice.predict(record_id, api_name="/delete_record")
    assert message == f"Deleted record {record_id} (Edited Name)."
    with pytest.raises(AppError, match=f"Record {record_id} was not found"):
        alice.predict(record_id, 0.4, api_name="/open_record")
    assert _history(alice, patient="Edited Name")[0] == []


def test_history_filters_and_pages(server, bob):
    from gradio_client.exceptions import AppError

    for i in range(3):
        _diagnose(bob, server, patient=f"Paged {i}", exam=f"2023-0{i + 1}-15")
    rows, caption = _history(bob, patient="paged")
    assert [r[2] for r in rows] == ["Paged 2", "Paged 1", "Paged 0"] and "3 records" in caption
    rows, _ = _history(bob, patient="paged", date_from="2023-02-01", date_to="2023-02-28")
    assert [r[2] for r in rows] == ["Paged 1"]
    with pytest.raises(AppError, match="reversed"):
        _history(bob, date_from="2023-03-01", date_to="2023-01-01")


def test_csv_export_of_the_filtered_list(server, alice):
    _diagnose(alice, server, patient="Csv Patient One", exam="2022-06-01")
    _diagnose(alice, server, patient="Csv Patient Two", exam="2022-07-01")
    path = alice.predict("csv patient", "2022-06-15", None, "Any", api_name="/export_csv")
    rows = list(csv.DictReader(Path(path).open(encoding="utf-8")))
    assert [r["patient"] for r in rows] == ["Csv Patient Two"]
    assert rows[0]["exam_date"] == "2022-07-01" and rows[0]["model_name"] == server["model"]


# ------------------------------------------------------------------------------------------------ compare / about


def test_compare_and_model_card(server, alice):
    from gradio_client import handle_file

    table, gallery, view = alice.predict(handle_file(str(SAMPLE)), "gradcam", api_name="/compare")
    assert [row[0] for row in table["data"]] == [server["model"]]
    # the page shows the side-by-side view: the model's name over and under its heatmap, every row
    assert f"<figcaption>{server['model']}: " in view and "<th scope=\"row\">Caveat</th>" in view
    assert table["data"][0][5] > 0 and len(gallery) == 1
    assert table["headers"][-2:] == ["Input check", "Caveat"] and table["data"][0][7].startswith("in scope")
    assert "no out-of-distribution statistics" in table["data"][0][7]  # the test model has no ood.npz: said so
    card = alice.predict(server["model"], api_name="/model_card")
    assert server["model"] in card and "mobilenetv3_small_100" in card


# ------------------------------------------------------------------------------------------------ restart / hub


def test_records_survive_an_app_restart(tmp_path, tiny_model_dir):
    model = f"local-dir:{tiny_model_dir}"
    with running_app(tmp_path, model_names=[model], doctors={"alice": PASSWORDS["alice"]}) as first:
        *_, record_id = _diagnose(_client({**first, "root": tmp_path}, "alice"), {"model": model}, patient="Kept")
    with running_app(tmp_path, model_names=[model], doctors={"alice": PASSWORDS["alice"]}) as second:
        client = _client({**second, "root": tmp_path}, "alice")
        rows, _ = _history(client)
        assert [(r[0], r[2]) for r in rows] == [(int(record_id), "Kept")]
        details, image, *_ = client.predict(int(record_id), 0.4, api_name="/open_record")
        assert "Kept" in details and Image.open(image).size[0] > 0


def test_hugging_face_sign_in_maps_hub_users_to_doctor_accounts(tmp_path):
    """The route that turns an OAuth session (set by Gradio's /login/callback on a Space) into a doctor session."""
    from sqlmodel import Session
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from ui import server
    from xray.records import auth
    from xray.records.db import init_db, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    init_db(engine)
    with Session(engine) as session:
        auth.add_doctor(session, username="carol", password=None, hf_username="Carol-HF")

    def fake_oauth_callback(request):
        request.session["oauth_info"] = {"userinfo": {"preferred_username": request.query_params["user"]}}
        return PlainTextResponse("ok")

    web = Starlette(
        routes=[Route("/callback", fake_oauth_callback), Route("/xray/hub-signin", server._hub_signin(engine))],
        middleware=[Middleware(SessionMiddleware, secret_key="test")],
    )
    web.tokens, web.cookie_id = {}, "cid"  # what Gradio's App keeps: session tokens and its cookie suffix
    with TestClient(web) as browser:
        browser.get("/callback", params={"user": "carol-hf"})
        response = browser.get("/xray/hub-signin", follow_redirects=False)
        assert response.status_code == 302
        token = response.cookies.get("access-token-unsecure-cid")
        assert web.tokens == {token: "carol"}
    with TestClient(web) as stranger:
        stranger.get("/callback", params={"user": "mallory"})
        refused = stranger.get("/xray/hub-signin", follow_redirects=False)
        assert refused.status_code == 403 and "mallory" in refused.text and "users add" in refused.text
    assert list(web.tokens.values()) == ["carol"]
    engine.dispose()


def test_app_builds_and_explains_when_no_model_is_installed(tmp_path):
    import app
    from xray.config import Settings
    from xray.web import startup

    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "no-models", extra_models="")
    engine = startup.open_database(settings)
    demo = app.build_demo(settings, engine=engine)
    texts = [getattr(block, "value", "") for block in demo.blocks.values()]
    assert any(isinstance(t, str) and "No model is installed" in t for t in texts)
    engine.dispose()


def test_a_client_cannot_make_the_app_read_server_files(server):
    """A crafted API call naming a server path (here the app's own database) instead of an upload is refused."""
    database = Path(server["settings"].data_dir, "xray.db").resolve()
    payload = {"path": str(database), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
    with httpx.Client(base_url=server["url"], timeout=60) as browser:
        assert browser.post("login", data={"username": "bob", "password": PASSWORDS["bob"]}).status_code == 200
        before = _history_count(browser)
        started = browser.post(
            "gradio_api/call/diagnose",
            json={"data": [payload, "Path Probe", "2024-01-01", server["model"], "gradcam", 0.4]},
        )
        assert started.status_code == 200
        events = browser.get(f"gradio_api/call/diagnose/{started.json()['event_id']}").text
        assert "event: error" in events and "event: complete" not in events
        assert _history_count(browser) == before


def _history_count(browser: httpx.Client) -> int:
    started = browser.post("gradio_api/call/history", json={"data": ["Path Probe", None, None, "Any", 1]})
    events = browser.get(f"gradio_api/call/history/{started.json()['event_id']}").text
    assert "event: complete" in events
    return events.count("Path Probe")


# ------------------------------------------------------------------------------------------------ trust


def _colour_photo(path: Path) -> Path:
    y, x = np.mgrid[0:320, 0:400]
    rgb = np.stack([(x * 255 // 399), (y * 255 // 319), 255 - (x * 255 // 399)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_out_of_scope_upload_hides_the_prediction_until_asked(server, alice, bob, tmp_path):
    from gradio_client.exceptions import AppError

    photo = _colour_photo(tmp_path / "holiday.png")
    label, summary, original, overlay, target, info, heat, gate, record_id = _diagnose(
        alice, server, patient="Gate Test", file=photo
    )
    record_id, gate = int(record_id), gate["value"]  # the box comes as an update that also makes it visible
    assert gate and "prediction is hidden" in gate and "colour image" in gate and "ood.npz" in gate
    assert not (label or {}).get("confidences") and overlay is None and summary == "" and heat == ""
    assert original is not None
    assert f"saved as record **{record_id}**" in info
    # Bob cannot reveal Alice's record; Alice can, under the warning.
    with pytest.raises(AppError, match=f"Record {record_id} was not found"):
        bob.predict(record_id, 0.4, api_name="/show_prediction")
    label, summary, overlay, target, heat, gate = alice.predict(record_id, 0.4, api_name="/show_prediction")
    assert set(c["label"] for c in label["confidences"]) == {"NORMAL", "PNEUMONIA"}
    gate = gate["value"]
    assert "shown on request" in gate and "prediction is hidden" not in gate and "colour image" in gate
    assert "Shown on request despite the input warning" in summary and "Model output" in summary
    assert Image.open(overlay).size[0] > 0 and "lung fields" in heat
    details, *_ = alice.predict(record_id, 0.4, api_name="/open_record")
    assert "Input check:" in details and "colour image" in details


def test_final_read_and_agreement_are_per_doctor(server, alice, bob):
    from gradio_client.exceptions import AppError

    *_, record_id = _diagnose(alice, server, patient="Read Test")
    record_id = int(record_id)
    message, details = alice.predict(record_id, "confirm", "looks right", api_name="/final_read")
    assert message.startswith(f"Saved your final read of record {record_id}") and "Final read by the doctor" in details
    assert "Agreement with the model: 1/1 (100%)" in alice.predict(api_name="/agreement")
    # Bob can neither set Alice's read nor see it, whatever he sends.
    for choice in ("confirm", "NORMAL", "clear"):
        with pytest.raises(AppError, match=f"Record {record_id} was not found"):
            bob.predict(record_id, choice, "hijack", api_name="/final_read")
    assert "no final reads yet" in bob.predict(api_name="/agreement")
    _details, _img, _heat, _patient, _exam, choice, note = alice.predict(record_id, 0.4, api_name="/open_record")
    assert (choice["value"], note) == ("confirm", "looks right") and ["NORMAL", "NORMAL"] in choice["choices"]
    with pytest.raises(AppError, match="not in the list of choices|not a class"):
        alice.predict(record_id, "MADE-UP", "", api_name="/final_read")


def test_pdf_report_download(server, alice, bob):
    from gradio_client.exceptions import AppError
    from pypdf import PdfReader

    *_, record_id = _diagnose(alice, server, patient="Pdf Patient", exam="2024-03-04")
    record_id = int(record_id)
    path = alice.predict(record_id, api_name="/report")
    text = " ".join(PdfReader(path).pages[0].extract_text().split())
    assert "Pdf Patient" in text and "2024-03-04" in text and "Dr Alice (alice)" in text and server["model"] in text
    with pytest.raises(AppError, match=f"Record {record_id} was not found"):
        bob.predict(record_id, api_name="/report")


def test_operating_point_without_validation_roc_says_why(server, alice):
    text = alice.predict(server["model"], 0.3, 0.2, api_name="/operating_point")
    assert "no validation ROC" in text


def test_batch_of_files_and_a_zip(server, bob, tmp_path):
    import zipfile

    from gradio_client import handle_file

    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(EXAMPLES / "NORMAL2-IM-1437-0001.jpeg", "a/NORMAL2-IM-1437-0001.jpeg")
        zf.writestr("../notes.txt", "hello")
    files = [handle_file(str(SAMPLE)), handle_file(str(fake)), handle_file(str(archive))]
    table, caveat, csv_path = bob.predict(files, "2024-06-01", server["model"], api_name="/batch")
    assert caveat == ""  # the test model has no caveat (test_trust covers one that has)
    rows = table["data"]
    assert [r[0] for r in rows] == [SAMPLE.name, "fake.png", "two.zip/NORMAL2-IM-1437-0001.jpeg", "two.zip/notes.txt"]
    assert rows[0][2] == SAMPLE.stem and rows[0][5].startswith("in scope (") and rows[0][6] == ""
    assert rows[1][1] is None and rows[1][6] and "not an image" in rows[3][6]
    exported = list(csv.DictReader(Path(csv_path).open(encoding="utf-8")))
    assert len(exported) == 4 and exported[2]["patient"] == "NORMAL2-IM-1437-0001"
    history, _ = _history(bob, patient="NORMAL2-IM-1437")
    assert len(history) == 1 and history[0][3] == "2024-06-01"


# ------------------------------------------------------------------------------------------------ shutdown


def _stopped_within(process, limit_s: float) -> float:
    """Seconds `process` took to exit after SIGTERM (fails past `limit_s`)."""
    import signal
    import subprocess
    import time

    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"app.py still runs {limit_s:.0f} s after SIGTERM")
    return time.monotonic() - sent


def test_sigterm_stops_the_app_within_seconds_with_clients_connected(tmp_path, tiny_model_dir):
    """A signed-in gradio_client (doctors' app) and a visitor's client (public app) stay connected meanwhile."""
    from gradio_client import Client

    model = f"local-dir:{tiny_model_dir}"
    with app_process(tmp_path, model_names=[model], doctors={"alice": PASSWORDS["alice"]}, XRAY_PUBLIC_DEMO="1") as app:
        doctor = Client(app["url"] + "doctor/", auth=("alice", PASSWORDS["alice"]), verbose=False)
        assert "Agreement" in doctor.predict(api_name="/agreement")
        visitor = Client(app["url"], verbose=False)
        assert "/demo_sample" in visitor.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert _stopped_within(app["process"], 5.0) < 5.0
    assert "Traceback" not in app["log"].read_text()


def test_sigterm_lets_a_record_being_saved_finish(tmp_path, tiny_model_dir):
    """SIGTERM while a diagnosis runs: the process waits for it, and the record is in the database afterwards."""
    import time

    from gradio_client import Client, handle_file
    from gradio_client.utils import Status
    from sqlmodel import Session, select

    from xray.records.db import Record, make_engine

    # A large upload, so that the analysis still runs when the signal comes.
    big = tmp_path / "big.png"
    Image.open(SAMPLE).convert("L").resize((5000, 4500)).save(big)
    model = f"local-dir:{tiny_model_dir}"
    with app_process(tmp_path, model_names=[model], doctors={"alice": PASSWORDS["alice"]}) as app:
        # the result's images are not fetched: the server no longer listens for new connections once stopping
        client = Client(app["url"], auth=("alice", PASSWORDS["alice"]), verbose=False, download_files=False)
        job = client.submit(handle_file(str(big)), "Saved At Shutdown", "2024-05-01", model, "gradcam", 0.4,
                            api_name="/diagnose")  # fmt: skip
        started = time.monotonic()
        while job.status().code != Status.PROCESSING:
            assert time.monotonic() - started < 60, job.status()
            time.sleep(0.01)
        time.sleep(0.2)
        assert not job.done()  # else this test would prove nothing: use a larger image
        _stopped_within(app["process"], 60.0)
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'xray.db'}")
    with Session(engine) as session:
        records = session.exec(select(Record).where(Record.patient_name == "Saved At Shutdown")).all()
    engine.dispose()
    assert len(records) == 1 and records[0].label_names
    assert int(job.result(timeout=10)[-1]) == records[0].id  # and the doctor got the result before the stop
    log = app["log"].read_text()
    assert "waiting for 1 running event(s) to finish" in log and "Traceback" not in log
