from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xray.analysis import pipeline
from xray.errors import InvalidInputError, RecordNotFoundError
from xray.records import crud
from xray.trust.operating import operating_point
from xray.web import review, service

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNEUMONIA_JPEG = EXAMPLES / "person1951_bacteria_4882.jpeg"
NORMAL_JPEG = EXAMPLES / "NORMAL2-IM-1438-0001.jpeg"
TODAY = date(2025, 6, 30)
MB = 2**20
# A validation ROC as xray.training.metrics stores it (thresholds decreasing, the first clipped to 1).
ROC = {"fpr": [0.0, 0.1, 0.3, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0], "thresholds": [1.0, 0.7, 0.4, 0.0]}


@pytest.fixture(scope="module")
def model_with_roc(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model with a metrics.json holding a validation ROC and split counts."""
    folder = tmp_path_factory.mktemp("roc") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    metrics = {"validation": {"roc": ROC}, "data": {"split_counts": {"val": {"NORMAL": 300, "PNEUMONIA": 100}}}}
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return f"local-dir:{folder}"


@pytest.fixture
def doctors(session):
    alice = crud.create_doctor(session, username="alice", display_name="Alice Äsk", password_hash=None)
    bob = crud.create_doctor(session, username="bob", display_name="Bob", password_hash=None)
    return alice, bob


def _diagnose(session, store, doctor, model, source=PNEUMONIA_JPEG, patient="Jane Roe"):
    return service.diagnose(
        session, store, doctor=doctor, source=source, filename=None, patient_name=patient, exam_date="2025-06-01",
        model_name=model, allowed_models=[model], max_upload_bytes=5 * MB, max_pixels=50_000_000, today=TODAY,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ final read


def test_final_read_is_stored_and_private_to_its_doctor(session, store, doctors, tiny_model_dir):
    model = f"local-dir:{tiny_model_dir}"
    alice, bob = doctors
    first = _diagnose(session, store, alice, model, patient="First").record
    second = _diagnose(session, store, alice, model, patient="Second").record
    other = "NORMAL" if second.predicted_label == "PNEUMONIA" else "PNEUMONIA"
    saved = review.save_final_read(session, doctor=alice, record_id=first.id, choice=review.CONFIRM, note="fine")
    assert (saved.final_read, saved.final_note) == (first.predicted_label, "fine") and saved.final_read_at
    review.save_final_read(session, doctor=alice, record_id=second.id, choice=other, note="missed *consolidation*")
    reloaded = crud.get_record(session, doctor=alice, record_id=second.id)
    assert reloaded.final_read == other and reloaded.predicted_label == second.predicted_label  # output unchanged
    assert reloaded.probabilities == second.probabilities
    result = review.agreement(session, doctor=alice)
    assert (result.agreed, result.total, result.rate) == (1, 2, 0.5)
    assert [r.id for r in result.disagreements] == [second.id]
    text = review.agreement_markdown(result)
    assert "Agreement with the model: 1/2 (50%)" in text and f"record {second.id}, Second" in text
    assert f"your read **{other}**" in text and r"\*consolidation\*" in text
    # Bob can neither set nor see Alice's reads.
    with pytest.raises(RecordNotFoundError, match=f"Record {first.id} was not found"):
        review.save_final_read(session, doctor=bob, record_id=first.id, choice="NORMAL")
    assert crud.get_record(session, doctor=alice, record_id=first.id).final_read == first.predicted_label
    assert review.agreement(session, doctor=bob).total == 0
    assert "no final reads yet" in review.agreement_markdown(review.agreement(session, doctor=bob))
    # Bad choices, and clearing a read.
    with pytest.raises(InvalidInputError, match="not a class"):
        review.save_final_read(session, doctor=alice, record_id=first.id, choice="COVID-19")
    with pytest.raises(InvalidInputError, match="Choose your final read"):
        review.save_final_read(session, doctor=alice, record_id=first.id, choice="")
    cleared = review.save_final_read(session, doctor=alice, record_id=second.id, choice=review.CLEAR, note="x")
    assert cleared.final_read is None and cleared.final_note is None
    assert review.agreement(session, doctor=alice).total == 1
    choices = review.final_read_choices(first)
    assert choices[0] == (f"Confirm the model ({first.predicted_label})", review.CONFIRM)
    assert [v for _, v in choices[1:]] == ["NORMAL", "PNEUMONIA", review.CLEAR]


# ------------------------------------------------------------------------------------------------ operating point


def test_operating_point_defaults_and_markdown(session, store, doctors, model_with_roc, tiny_model_dir_3class):
    alice, _ = doctors
    info = service.describe_model(model_with_roc)
    defaults = review.operating_defaults(info)
    assert defaults.available and defaults.threshold == 0.5 and defaults.positive_label == "PNEUMONIA"
    assert defaults.prevalence == pytest.approx(0.25)  # 100 of 400 validation images
    record = _diagnose(session, store, alice, model_with_roc).record
    p = record.probabilities["PNEUMONIA"]
    expected = operating_point(ROC, 0.4, 0.1)
    text = review.operating_markdown(info, 0.4, 0.1, record)
    assert f"sensitivity {expected.sensitivity:.1%}" in text and f"specificity {expected.specificity:.1%}" in text
    assert f"right {expected.ppv:.1%} of the time (PPV), a negative one {expected.npv:.1%} (NPV)" in text
    # The verdict follows the slider from the stored probability (just below and just above it).
    below = review.operating_markdown(info, max(0.0, p - 0.01), 0.25, record)
    above = review.operating_markdown(info, min(1.0, p + 0.01), 0.25, record)
    assert "current result is PNEUMONIA" in below and "current result is NORMAL" in above
    assert crud.get_record(session, doctor=alice, record_id=record.id).predicted_label == record.predicted_label
    with pytest.raises(Exception, match="between 0 and 1"):
        review.operating_markdown(info, 1.5, 0.25, record)
    # Not offered without a validation ROC, nor for three-class models.
    assert not review.operating_defaults(service.describe_model(f"local-dir:{tiny_model_dir_3class}")).available
    bare = review.operating_defaults(service.ModelInfo(name="x", label_names=["A", "B"], threshold=0.5,
                                                      positive_label="B"))  # fmt: skip
    assert not bare.available and "no validation ROC" in bare.reason


# ------------------------------------------------------------------------------------------------ report


def test_pdf_report_has_the_record_fields(session, store, doctors, tiny_model_dir, tmp_path):
    from pypdf import PdfReader

    model = f"local-dir:{tiny_model_dir}"
    alice, bob = doctors
    record = _diagnose(session, store, alice, model, patient="Zoë Report").record
    review.save_final_read(session, doctor=alice, record_id=record.id, choice=review.CONFIRM, note="Agree, RLL.")
    path = review.record_report(session, store, doctor=alice, record_id=record.id, max_pixels=50_000_000,
                               out_dir=tmp_path)  # fmt: skip
    reader = PdfReader(path)
    assert len(reader.pages) == 1 and len(reader.pages[0].images) == 2  # image and heatmap
    text = " ".join(reader.pages[0].extract_text().split())
    for expected in (
        "Zoë Report", "2025-06-01", f"#{record.id}", "Alice Äsk (alice)", record.model_name, record.model_version,
        f"Model result: {record.predicted_label}", "at least 0.50", f"{record.final_read} (agrees with the model)",
        "Agree, RLL.", "Decision support only",
    ):  # fmt: skip
        assert expected in text, expected
    for label, p in record.probabilities.items():
        assert f"{label} {p:.1%}" in text
    assert "About this model" not in text
    with pytest.raises(RecordNotFoundError):
        review.record_report(session, store, doctor=bob, record_id=record.id, max_pixels=50_000_000, out_dir=tmp_path)


def test_pdf_report_carries_the_models_caveat(session, store, doctors, tiny_model_dir, tmp_path):
    import shutil

    from pypdf import PdfReader

    from xray.inference.models import update_config

    folder = shutil.copytree(tiny_model_dir, tmp_path / "with-caveat")
    update_config(folder, caveat="Its COVID-19 output follows age and image source.")
    alice, _ = doctors
    record = _diagnose(session, store, alice, f"local-dir:{folder}").record
    path = review.record_report(session, store, doctor=alice, record_id=record.id, max_pixels=50_000_000,
                               out_dir=tmp_path)  # fmt: skip
    text = " ".join(PdfReader(path).pages[0].extract_text().split())
    assert "Warnings" in text and "About this model: Its COVID-19 output follows age and image source." in text


# ------------------------------------------------------------------------------------------------ batch


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_batch_of_mixed_files_and_a_zip_gives_one_row_per_file(session, store, doctors, tiny_model_dir, tmp_path):
    model = f"local-dir:{tiny_model_dir}"
    alice, bob = doctors
    fake = tmp_path / "notes.png"
    fake.write_text("a text file pretending to be a PNG")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200), dtype=np.uint8)).save(big)
    photo = tmp_path / "holiday.png"
    y, x = np.mgrid[0:300, 0:300]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(photo)
    archive = _zip(
        tmp_path / "study.zip",
        {"scans/NORMAL-1.jpeg": NORMAL_JPEG.read_bytes(), "../../evil.jpeg": PNEUMONIA_JPEG.read_bytes(),
         "readme.txt": b"hello", "scans/": b""},
    )  # fmt: skip
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    seen = []
    rows = review.diagnose_batch(
        session, store, doctor=alice, files=[PNEUMONIA_JPEG, fake, big, photo, archive, broken],
        exam_date="2025-06-02", model_name=model, allowed_models=[model], max_upload_bytes=1 * MB,
        max_pixels=50_000_000, progress=lambda done, total, name: seen.append((done, total)), today=TODAY,
    )  # fmt: skip
    by_file = {r.file: r for r in rows}
    assert list(by_file) == [
        PNEUMONIA_JPEG.name, "notes.png", "big.png", "holiday.png",
        "study.zip/NORMAL-1.jpeg", "study.zip/evil.jpeg", "study.zip/readme.txt", "broken.zip",
    ]  # fmt: skip
    good = by_file[PNEUMONIA_JPEG.name]
    assert good.error is None and good.patient == PNEUMONIA_JPEG.stem
    assert good.gate == f"in scope ({pipeline.NO_OOD_NOTE})"  # the test model has no ood.npz: the row says so
    assert good.label in ("NORMAL", "PNEUMONIA") and sum(good.probabilities.values()) == pytest.approx(1.0)
    assert "notes.png" in by_file["notes.png"].error and by_file["notes.png"].record_id is None
    assert "limit is 1 MiB" in by_file["big.png"].error
    assert by_file["holiday.png"].gate.startswith("OUT OF SCOPE") and by_file["holiday.png"].record_id
    assert by_file["study.zip/evil.jpeg"].patient == "evil" and by_file["study.zip/evil.jpeg"].record_id
    assert "not an image" in by_file["study.zip/readme.txt"].error and "zip" in by_file["broken.zip"].error
    assert seen[-1] == (8, 8)
    # Saved for Alice only, one record per processed image, with the batch's exam date.
    saved = crud.list_records(session, doctor=alice)
    assert sorted(r.id for r in saved) == sorted(r.record_id for r in rows if r.record_id)
    assert len(saved) == 4 and {r.exam_date for r in saved} == {date(2025, 6, 2)}
    assert crud.list_records(session, doctor=bob) == []
    table = review.batch_table(rows)
    assert len(table) == 8 and len(table[0]) == len(review.BATCH_COLUMNS)
    exported = list(csv.DictReader(io.StringIO(review.batch_csv(rows, out_dir=tmp_path).read_text(encoding="utf-8"))))
    assert [r["file"] for r in exported] == list(by_file) and exported[0]["p_PNEUMONIA"]
    assert review.batch_caveats(rows) == [] and {r["model_caveat"] for r in exported} == {""}


def test_batch_decodes_each_file_once(session, store, doctors, tiny_model_dir, monkeypatch):
    model = f"local-dir:{tiny_model_dir}"
    alice, _ = doctors
    decoded = []
    real = service.load_image
    monkeypatch.setattr(service, "load_image", lambda data, **kw: decoded.append(kw["filename"]) or real(data, **kw))
    rows = review.diagnose_batch(
        session, store, doctor=alice, files=[PNEUMONIA_JPEG, NORMAL_JPEG], exam_date="2025-06-02", model_name=model,
        allowed_models=[model], max_upload_bytes=MB, max_pixels=50_000_000, today=TODAY,
    )  # fmt: skip
    assert decoded == [PNEUMONIA_JPEG.name, NORMAL_JPEG.name] and all(r.record_id for r in rows)
    saved = sorted(crud.list_records(session, doctor=alice), key=lambda r: r.id)
    assert [(r.image_width, r.image_height) for r in saved] == [Image.open(PNEUMONIA_JPEG).size,
                                                                Image.open(NORMAL_JPEG).size]  # fmt: skip


def test_batch_carries_the_models_caveat(session, store, doctors, tiny_model_dir, tmp_path):
    from xray.inference.models import update_config

    folder = shutil.copytree(tiny_model_dir, tmp_path / "with-caveat")
    update_config(folder, caveat="Its COVID-19 output follows age and image source.")
    model = f"local-dir:{folder}"
    alice, _ = doctors
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    rows = review.diagnose_batch(
        session, store, doctor=alice, files=[PNEUMONIA_JPEG, NORMAL_JPEG, fake], exam_date="2025-06-02",
        model_name=model, allowed_models=[model], max_upload_bytes=MB, max_pixels=50_000_000, today=TODAY,
    )  # fmt: skip
    # shown once above the table, however many rows the model answered
    assert review.batch_caveats(rows) == ["About this model: Its COVID-19 output follows age and image source."]
    exported = list(csv.DictReader(io.StringIO(review.batch_csv(rows, out_dir=tmp_path).read_text(encoding="utf-8"))))
    assert [r["model_caveat"] for r in exported] == ["Its COVID-19 output follows age and image source."] * 2 + [""]


def test_batch_refuses_zip_bombs_and_empty_uploads(session, store, doctors, tiny_model_dir, tmp_path, monkeypatch):
    model = f"local-dir:{tiny_model_dir}"
    alice, _ = doctors
    with pytest.raises(InvalidInputError, match="Upload one or more"):
        review.diagnose_batch(session, store, doctor=alice, files=[], exam_date="2025-06-02", model_name=model,
                             allowed_models=[model], max_upload_bytes=MB, max_pixels=10**7, today=TODAY)  # fmt: skip
    # 5 MiB of zeros compresses to a few KiB; with a 1 MiB expansion limit the zip is refused unread.
    bomb = _zip(tmp_path / "bomb.zip", {"a.png": bytes(5 * MB)})
    monkeypatch.setattr(review, "MAX_ZIP_TOTAL_BYTES", MB)
    items = review.batch_items([bomb], max_bytes=10 * MB)
    assert len(items) == 1 and "expands to 5 MiB" in items[0].error
    monkeypatch.setattr(review, "MAX_ZIP_ENTRIES", 3)
    many = _zip(tmp_path / "many.zip", {f"{i}.png": b"x" for i in range(5)})
    assert "at most 3" in review.batch_items([many], max_bytes=MB)[0].error
    assert crud.list_records(session, doctor=alice) == []


# ------------------------------------------------------------------------------------------------ database


def test_an_existing_database_gets_the_new_nullable_columns(tmp_path):
    from sqlalchemy import inspect, text

    from xray.records.db import init_db, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    init_db(engine)
    with engine.begin() as connection:  # the record table as it was before the trust columns
        connection.execute(text('ALTER TABLE "record" DROP COLUMN gate_reasons'))
        connection.execute(text('ALTER TABLE "record" DROP COLUMN heat_in_lungs'))
        connection.execute(text('ALTER TABLE "record" DROP COLUMN heat_in_chest'))
    assert "gate_reasons" not in {c["name"] for c in inspect(engine).get_columns("record")}
    init_db(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("record")}
    assert {"gate_reasons", "heat_in_lungs", "heat_in_chest"} <= columns
    engine.dispose()
