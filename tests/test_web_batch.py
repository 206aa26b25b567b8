"""xray.web.batch: several files and zips through the same path as one upload."""

from __future__ import annotations

import csv
import io
import shutil
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.web_cases import MB, NORMAL_JPEG, PNEUMONIA_JPEG, TODAY
from xray.analysis import pipeline
from xray.errors import InvalidInputError
from xray.records import crud
from xray.web import batch, forms


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
    rows = batch.diagnose_batch(
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
    table = batch.batch_table(rows)
    assert len(table) == 8 and len(table[0]) == len(batch.BATCH_COLUMNS)
    cells = {row[0]: dict(zip(batch.BATCH_COLUMNS, row, strict=True)) for row in table}
    photo_label = by_file["holiday.png"].label
    assert cells["holiday.png"]["Model output"] == f"⚠️ OUT OF SCOPE · {photo_label}"
    assert cells["holiday.png"]["Input check"].startswith("OUT OF SCOPE: ")
    assert cells[PNEUMONIA_JPEG.name]["Model output"] == good.label
    exported = list(csv.DictReader(io.StringIO(batch.batch_csv(rows, out_dir=tmp_path).read_text(encoding="utf-8"))))
    assert [r["file"] for r in exported] == list(by_file) and exported[0]["p_PNEUMONIA"]
    assert batch.batch_caveats(rows) == [] and {r["model_caveat"] for r in exported} == {""}


def test_batch_decodes_each_file_once(session, store, doctors, tiny_model_dir, monkeypatch):
    model = f"local-dir:{tiny_model_dir}"
    alice, _ = doctors
    decoded = []
    real = forms.load_image
    monkeypatch.setattr(forms, "load_image", lambda data, **kw: decoded.append(kw["filename"]) or real(data, **kw))
    rows = batch.diagnose_batch(
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
    rows = batch.diagnose_batch(
        session, store, doctor=alice, files=[PNEUMONIA_JPEG, NORMAL_JPEG, fake], exam_date="2025-06-02",
        model_name=model, allowed_models=[model], max_upload_bytes=MB, max_pixels=50_000_000, today=TODAY,
    )  # fmt: skip
    # shown once above the table, however many rows the model answered
    assert batch.batch_caveats(rows) == ["About this model: Its COVID-19 output follows age and image source."]
    exported = list(csv.DictReader(io.StringIO(batch.batch_csv(rows, out_dir=tmp_path).read_text(encoding="utf-8"))))
    assert [r["model_caveat"] for r in exported] == ["Its COVID-19 output follows age and image source."] * 2 + [""]


def test_batch_refuses_zip_bombs_and_empty_uploads(session, store, doctors, tiny_model_dir, tmp_path, monkeypatch):
    model = f"local-dir:{tiny_model_dir}"
    alice, _ = doctors
    with pytest.raises(InvalidInputError, match="Upload one or more"):
        batch.diagnose_batch(session, store, doctor=alice, files=[], exam_date="2025-06-02", model_name=model,
                             allowed_models=[model], max_upload_bytes=MB, max_pixels=10**7, today=TODAY)  # fmt: skip
    # 5 MiB of zeros compresses to a few KiB; with a 1 MiB expansion limit the zip is refused unread.
    bomb = _zip(tmp_path / "bomb.zip", {"a.png": bytes(5 * MB)})
    monkeypatch.setattr(batch, "MAX_ZIP_TOTAL_BYTES", MB)
    items = batch.batch_items([bomb], max_bytes=10 * MB)
    assert len(items) == 1 and "expands to 5 MiB" in items[0].error
    monkeypatch.setattr(batch, "MAX_ZIP_ENTRIES", 3)
    many = _zip(tmp_path / "many.zip", {f"{i}.png": b"x" for i in range(5)})
    assert "at most 3" in batch.batch_items([many], max_bytes=MB)[0].error
    assert crud.list_records(session, doctor=alice) == []


def test_a_file_name_too_long_for_a_patient_name_fails_its_row_never_cut(session, store, doctors, tiny_model_dir,
                                                                        tmp_path):
    model = f"local-dir:{tiny_model_dir}"
    alice, _ = doctors
    long_name = tmp_path / ("Patient-" + "x" * 222 + ".jpeg")  # a 230-character stem
    shutil.copy(NORMAL_JPEG, long_name)
    [row] = batch.diagnose_batch(
        session, store, doctor=alice, files=[long_name], exam_date="2025-06-02", model_name=model,
        allowed_models=[model], max_upload_bytes=5 * MB, max_pixels=50_000_000, today=TODAY,
    )  # fmt: skip
    assert row.record_id is None and "230 characters; at most 200 are accepted" in row.error
    assert crud.list_records(session, doctor=alice) == []


def test_batch_form_checks_come_before_any_file_is_read():
    from datetime import date

    from xray.errors import InvalidInputError
    from xray.web import batch

    with pytest.raises(InvalidInputError, match="Upload one or more chest X-rays"):
        batch.check_batch_form([], "2024-01-01", "m", ["m"])
    with pytest.raises(InvalidInputError, match="(?i)future"):
        batch.check_batch_form(["a.png"], "2999-01-01", "m", ["m"], today=date(2024, 1, 2))
    with pytest.raises(InvalidInputError, match="(?i)model"):
        batch.check_batch_form(["a.png"], "2024-01-01", "other", ["m"])
    assert batch.check_batch_form(["a.png"], "2024-01-01", "m", ["m"], today=date(2024, 1, 2)) is None


def test_batch_patient_group_applies_to_files_without_a_dicom_age(session, store, doctors, tiny_model_dir, tmp_path):
    from tests.dicom_files import make_dicom
    from xray.inference.models import update_config

    folder = shutil.copytree(tiny_model_dir, tmp_path / "split-model")
    update_config(folder, thresholds={"children": 0.0, "adults": 1.0, "rule": "test", "chosen_on": "test"})
    model = f"local-dir:{folder}"
    alice, _ = doctors
    pixels = (np.random.default_rng(2).random((256, 256)) * 255).astype(np.uint8)
    adult = tmp_path / "adult.dcm"
    adult.write_bytes(make_dicom(pixels, PatientAge="062Y", PatientID="P-62"))
    rows = batch.diagnose_batch(
        session, store, doctor=alice, files=[PNEUMONIA_JPEG, adult], exam_date="2025-06-02", model_name=model,
        allowed_models=[model], max_upload_bytes=1 * MB, max_pixels=50_000_000, today=TODAY, population="Child",
    )  # fmt: skip
    by_file = {r.file: r for r in rows}
    assert by_file[PNEUMONIA_JPEG.name].threshold == "threshold 0.000 for children (chosen by the doctor)"
    assert by_file[PNEUMONIA_JPEG.name].label == "PNEUMONIA"
    assert by_file["adult.dcm"].threshold == "threshold 1.000 for adults (from the DICOM age 62 years)"
    assert by_file["adult.dcm"].label == "NORMAL"
    exported = list(csv.DictReader(batch.batch_csv(rows, out_dir=tmp_path).open()))
    assert [r["threshold"] for r in exported] == [by_file[n].threshold for n in (PNEUMONIA_JPEG.name, "adult.dcm")]
    with pytest.raises(InvalidInputError, match="Unknown patient group"):
        batch.diagnose_batch(
            session, store, doctor=alice, files=[PNEUMONIA_JPEG], exam_date="2025-06-02", model_name=model,
            allowed_models=[model], max_upload_bytes=1 * MB, max_pixels=50_000_000, today=TODAY, population="x",
        )  # fmt: skip
