"""The public demo and the doctors' app served together (XRAY_PUBLIC_DEMO=1), driven over HTTP as a visitor would.

Without a session the demo answers and stores nothing, while every doctor endpoint refuses, through the doctors'
app (401) and through the public app (which has none of them and serves no files).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app_server import running_app
from xray.web import demo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAMPLE = EXAMPLES / "person1951_bacteria_4882.jpeg"
PASSWORD = "a public-test passphrase"
#: Every named endpoint of the doctors' app that reads or writes records (or runs a model for a doctor).
DOCTOR_ENDPOINTS = ["diagnose", "show_prediction", "history", "open_record", "update_record", "delete_record",
                    "final_read", "agreement", "report", "export_csv", "operating_point", "batch", "compare",
                    "model_card"]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir) -> Iterator[dict]:
    """Public demo on: the public app at /, the doctors' app at /doctor/; one doctor, alice."""
    model = f"local-dir:{tiny_model_dir}"
    with running_app(
        tmp_path_factory.mktemp("public"), model_names=[model], doctors={"alice": PASSWORD}, public_demo=True,
        demo_rate=1000, demo_max_upload_mb=1.0,
    ) as running:  # fmt: skip
        yield {**running, "model": model}


def _visitor(server: dict, **kwargs):
    from gradio_client import Client

    return Client(server["public_url"], verbose=False, download_files=str(server["root"] / "visitor"), **kwargs)


def _snapshot(server: dict) -> dict:
    """Rows per table, files (and sizes) in the data folder and the image store, files in the demo's upload folder."""
    from sqlalchemy import func, select
    from sqlmodel import Session, SQLModel

    import app

    with Session(server["engine"]) as session:
        tables = SQLModel.metadata.sorted_tables
        rows = {t.name: session.exec(select(func.count()).select_from(t)).one() for t in tables}
    data = Path(server["settings"].data_dir)
    uploads = Path(app.public_upload_root())
    return {
        "rows": rows,
        "data": {str(p.relative_to(data)): p.stat().st_size for p in data.rglob("*") if p.is_file()},
        "uploads": sorted(str(p) for p in uploads.rglob("*") if p.is_file()),
    }


def _images(html: str) -> list[np.ndarray]:
    import base64
    import io

    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB"))
        for uri in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)
    ]


# ------------------------------------------------------------------------------------------------ the demo


def test_demo_answers_a_sample_without_sign_in(server):
    visitor = _visitor(server)
    endpoints = set(visitor.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert endpoints == {"/demo", "/demo_sample"}  # the public app has nothing else
    label, summary, check, caveat, images, heat, info = visitor.predict(
        SAMPLE.name, server["model"], api_name="/demo_sample"
    )
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(confidences) == {"NORMAL", "PNEUMONIA"} and sum(confidences.values()) == pytest.approx(1.0)
    assert f"Model output: {label['label']}" in summary and "operating threshold" in summary
    assert check.startswith("**Input check:** in scope") and caveat == ""  # the tiny model has no caveat
    original, overlay = _images(images)
    assert original.shape == overlay.shape and np.abs(original.astype(int) - overlay.astype(int)).mean() > 5
    assert "lung fields" in heat and "nothing was stored" in info


def test_demo_stores_nothing(server):
    from gradio_client import handle_file

    visitor = _visitor(server)
    before = _snapshot(server)
    assert {"record", "doctor"} <= set(before["rows"])
    visitor.predict(SAMPLE.name, server["model"], api_name="/demo_sample")
    label, *_ = visitor.predict(handle_file(str(EXAMPLES / "NORMAL2-IM-1437-0001.jpeg")), server["model"],
                                api_name="/demo")  # fmt: skip
    assert label["confidences"]
    after = _snapshot(server)
    assert after == before  # no row, no file in the data folder or image store, no upload left behind


def test_demo_refuses_large_uploads_and_unknown_samples(server, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2**20
    visitor = _visitor(server)
    with pytest.raises(Exception, match="(?i)size|large|413"):
        visitor.predict(handle_file(str(big)), server["model"], api_name="/demo")
    for name in ("../data/xray.db", str(SAMPLE)):
        with pytest.raises(AppError, match="not in the list of choices|Unknown sample"):
            visitor.predict(name, server["model"], api_name="/demo_sample")


# ------------------------------------------------------------------------------------------------ doctors only


def test_every_doctor_endpoint_refuses_a_caller_without_a_session(server):
    from gradio_client import Client

    doctors = server["url"]
    assert doctors.endswith("/doctor/")
    with pytest.raises(Exception, match="401|Unauthorized|[Ll]ogin"):
        Client(doctors, verbose=False)
    with httpx.Client(base_url=doctors) as http:
        for name in DOCTOR_ENDPOINTS:
            assert http.post(f"gradio_api/call/{name}", json={"data": []}).status_code == 401, name
        for path in ("gradio_api/queue/join", "gradio_api/upload"):
            assert http.post(path, json={"data": []}).status_code == 401, path
        database = Path(server["settings"].data_dir, "xray.db").resolve()
        for path in ("gradio_api/info", f"gradio_api/file={database}", "config"):
            assert http.get(path).status_code == 401, path
        page = http.get("")
        assert '"auth_required":true' in page.text.replace(" ", "") and "public demo" in page.text
    # The public app has none of the doctors' endpoints, whatever a client asks for.
    visitor = _visitor(server)
    for name in DOCTOR_ENDPOINTS:
        with pytest.raises(Exception, match="(?i)api_name|not found|cannot find"):
            visitor.predict(api_name=f"/{name}")
    with httpx.Client(base_url=server["public_url"]) as http:
        for name in ("history", "diagnose", "export_csv", "report"):
            # Gradio fails an unknown api_name with a server error (500, or the connection dropped): no event id
            try:
                response = http.post(f"gradio_api/call/{name}", json={"data": []})
            except httpx.TransportError:
                continue
            assert response.status_code >= 400 and "event_id" not in response.text, name


def test_the_public_app_serves_no_file(server):
    from gradio.utils import get_upload_folder

    secret = Path(get_upload_folder()) / "xray-test-doctor-file" / "report.pdf"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(b"%PDF-1.4 a doctor's report")
    try:
        with httpx.Client(base_url=server["public_url"]) as visitor:
            for path in (secret, Path(server["settings"].data_dir, "xray.db").resolve(), SAMPLE):
                assert visitor.get(f"gradio_api/file={path}").status_code == 403
        with httpx.Client(base_url=server["url"]) as doctor:
            assert doctor.get(f"gradio_api/file={secret}").status_code == 401
            assert doctor.post("login", data={"username": "alice", "password": PASSWORD}).status_code == 200
            assert doctor.get(f"gradio_api/file={secret}").status_code == 200  # Gradio's own route serves it
    finally:
        secret.unlink()
        secret.parent.rmdir()


def test_doctors_sign_in_diagnose_and_log_out_under_doctor(server):
    from gradio_client import Client, handle_file

    with httpx.Client(base_url=server["base"]) as http:
        moved = http.get("doctor")
        assert moved.status_code == 307 and moved.headers["location"] == "/doctor/"
    alice = Client(server["url"], auth=("alice", PASSWORD), verbose=False, download_files=str(server["root"] / "a"))
    *_, record_id = alice.predict(handle_file(str(SAMPLE)), "Public Test", "2024-05-01", server["model"], "gradcam",
                                  0.4, api_name="/diagnose")  # fmt: skip
    table, _caption, _page = alice.predict("Public Test", None, None, "Any", 1, api_name="/history")
    assert [row[0] for row in table["data"]] == [int(record_id)]
    with httpx.Client(base_url=server["url"]) as browser:
        assert browser.post("login", data={"username": "alice", "password": PASSWORD}).status_code == 200
        assert browser.get("gradio_api/info").status_code == 200
        cookies = dict(browser.cookies)
        out = browser.get("logout")
        assert out.status_code == 302 and out.headers["location"] == "./"
    with httpx.Client(base_url=server["url"], cookies=cookies) as replay:
        assert replay.get("gradio_api/info").status_code == 401


def test_models_page_is_public_and_lists_every_model(server):
    config = httpx.get(server["public_url"] + "config").json()
    pages = {c["props"].get("elem_id"): c["props"].get("value") for c in config["components"] if c["type"] == "html"}
    tables = pages["xray-models-tables"]
    assert 'id="xray-models-overview"' in tables and f"<td class=\"one\">{server['model']}</td>" in tables
    # the tiny model has no metrics.json: said, never shown as figures
    assert "has no metrics.json" in tables and 'id="xray-models-populations"' in pages["xray-models-summary"]


# ------------------------------------------------------------------------------------------------ rate limit


def test_rate_limit_names_when_to_retry(tmp_path, tiny_model_dir):
    import shutil

    from gradio_client import Client

    # a model folder of its own: sample results are kept per process, per model and version
    model = f"local-dir:{shutil.copytree(tiny_model_dir, tmp_path / 'rate-model')}"
    with running_app(tmp_path, model_names=[model], doctors={}, public_demo=True, demo_rate=2) as running:
        visitor = Client(running["public_url"], verbose=False, download_files=False)
        # samples()[0] may be warmed up (kept, free) at start: the others are each counted once
        first, second, third = (s.name for s in demo.samples()[1:4])
        shown = visitor.predict(first, model, api_name="/demo_sample")
        for _ in range(3):  # a sample already analysed with this model: the same answer, not counted
            assert visitor.predict(first, model, api_name="/demo_sample") == shown
        assert visitor.predict(second, model, api_name="/demo_sample")[0]["confidences"]
        label, summary, *rest = visitor.predict(third, model, api_name="/demo_sample")
        assert not label and not any(rest)  # one message, and no earlier result left under it
        assert re.search(r"2 analyses per minute .* Try again in \d+ s \(at \d\d:\d\d:\d\d UTC\)", summary)
        # uploads are counted at the upload route too, before anything is stored
        with httpx.Client(base_url=running["public_url"]) as http:
            codes = [
                http.post("gradio_api/upload", files={"files": ("x.png", b"not stored")}).status_code for _ in range(3)
            ]
            assert codes[:2] == [200, 200] and codes[2] == 429


# ------------------------------------------------------------------------------------------------ crafted calls


def test_the_demo_reads_only_its_own_uploads(server):
    """A crafted call naming a file elsewhere in Gradio's upload folder (a doctor's upload) is refused, untouched."""
    from gradio.utils import get_upload_folder

    doctor_upload = Path(get_upload_folder()) / "xray-test-doctor-upload" / "scan.jpeg"
    doctor_upload.parent.mkdir(parents=True, exist_ok=True)
    doctor_upload.write_bytes(SAMPLE.read_bytes())
    payload = {"path": str(doctor_upload), "meta": {"_type": "gradio.FileData"}, "orig_name": "scan.jpeg"}
    try:
        with httpx.Client(base_url=server["public_url"], timeout=60) as http:
            started = http.post("gradio_api/call/demo", json={"data": [payload, server["model"]]})
            assert started.status_code == 200
            events = http.get(f"gradio_api/call/demo/{started.json()['event_id']}").text
        assert "event: error" in events and "event: complete" not in events
        assert "upload field" in events and "data:image" not in events
        assert doctor_upload.read_bytes() == SAMPLE.read_bytes()
    finally:
        doctor_upload.unlink()
        doctor_upload.parent.rmdir()


def test_hugging_face_sign_in_reaches_the_doctors_app_under_doctor(tmp_path, tiny_model_dir, monkeypatch):
    """On a Space, Hugging Face sends sign-ins back to /login/callback at the root: it must reach the doctors' app."""
    import gradio.oauth
    from fastapi.responses import PlainTextResponse
    from starlette.testclient import TestClient

    import app
    from ui import common
    from xray.config import Settings
    from xray.web import startup

    def fake_oauth_routes(gradio_app):  # what Gradio adds on a Space, minus the calls to huggingface.co
        gradio_app.add_api_route("/login/callback", lambda: PlainTextResponse("doctors' OAuth callback"))

    monkeypatch.setattr(gradio.oauth, "_add_mocked_oauth_routes", fake_oauth_routes)
    monkeypatch.setattr(common, "oauth_enabled", lambda: True)
    settings = Settings(data_dir=tmp_path / "data", public_demo=True, extra_models="")
    engine = startup.open_database(settings)
    server = app.create_app(settings, engine=engine, model_names=[f"local-dir:{tiny_model_dir}"], warm_up=False)
    with TestClient(server) as browser:
        assert browser.get("/login/callback").text == "doctors' OAuth callback"
        page = browser.get("/doctor/").text
        assert "/doctor/login/huggingface?_target_url=/doctor/xray/hub-signin" in page
        refused = browser.get("/doctor/xray/hub-signin", follow_redirects=False)
        assert refused.status_code == 403 and "not linked" in refused.text
    engine.dispose()


def test_a_lifespan_in_the_doctors_app_kwargs_runs_in_both_layouts(tmp_path, tiny_model_dir, monkeypatch):
    """`doctor_app_options` is the one place for the doctors' app kwargs: a lifespan put there runs, mounted or not."""
    from contextlib import asynccontextmanager

    from starlette.testclient import TestClient

    import app
    from ui import server as ui_server
    from xray.config import Settings
    from xray.web import startup

    events: list[str] = []

    @asynccontextmanager
    async def lifespan(gradio_app):
        events.append(f"start {gradio_app.get_blocks().title}")
        yield
        events.append("stop")

    plain = ui_server.doctor_app_options

    def with_lifespan(settings, engine):
        options = plain(settings, engine)
        options["app_kwargs"]["lifespan"] = lifespan
        return options

    monkeypatch.setattr(ui_server, "doctor_app_options", with_lifespan)
    for public in (False, True):
        settings = Settings(data_dir=tmp_path / str(public), public_demo=public, extra_models="")
        engine = startup.open_database(settings)
        server = app.create_app(settings, engine=engine, model_names=[f"local-dir:{tiny_model_dir}"], warm_up=False)
        with TestClient(server):
            assert events[-1] == f"start {app.TITLE}"
        assert events[-1] == "stop"
        engine.dispose()
