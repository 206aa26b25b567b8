"""xray.web.diagnose: diagnose and save an upload, its input gate and heat check, re-explain."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from tests.dicom_files import make_dicom
from tests.web_cases import NORMAL_JPEG, PNEUMONIA_JPEG
from tests.web_cases import diagnose_upload as _diagnose
from xray.analysis import pipeline
from xray.errors import (
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    InvalidInputError,
    NotAnImageError,
    UploadTooLargeError,
)
from xray.records import crud
from xray.records.storage import sha256_hex
from xray.web import diagnose, forms, history, registry, views


def test_diagnose_saves_image_heatmap_and_calibrated_probabilities(session, store, doctors, model_name):
    from xray.imaging.io import read_image
    from xray.inference.models import load_model
    from xray.inference.predict import predict

    alice, _ = doctors
    result = _diagnose(session, store, alice, model_name)
    record = result.record
    assert record.doctor_id == alice.id and record.patient_name == "Jane Roe"
    assert record.exam_date == date(2025, 6, 1)
    # The stored file is the upload itself, named by its content hash.
    upload = PNEUMONIA_JPEG.read_bytes()
    assert record.image_sha256 == sha256_hex(upload)
    assert store.path(record.image_sha256).read_bytes() == upload
    assert (record.image_width, record.image_height) == Image.open(PNEUMONIA_JPEG).size
    heatmap = store.get_heatmap(record.heatmap_sha256)
    assert heatmap.dtype == np.float32 and 0.0 <= heatmap.min() and heatmap.max() <= 1.0
    assert max(heatmap.shape) == 512
    # Probabilities are the model's calibrated output, the same as batch prediction gives.
    expected = predict(load_model(model_name), [read_image(upload)])[0]
    assert record.probabilities == pytest.approx(expected.probabilities, abs=1e-5)
    assert sum(record.probabilities.values()) == pytest.approx(1.0)
    assert record.predicted_label == expected.label == result.label
    assert record.model_version == load_model(model_name).version and record.threshold == 0.5
    assert record.cam_target_label == record.predicted_label and record.cam_method == "gradcam"
    # The view for the browser is shrunk to display size, and the overlay responds to the opacity.
    assert max(result.view.pixels.shape[:2]) <= views.DISPLAY_MAX_SIDE
    assert result.view.overlay(0.0).tolist() == result.view.pixels.tolist()
    assert not np.array_equal(result.view.overlay(0.8), result.view.pixels)
    assert "operating threshold 0.500" in views.result_summary(record)


def test_model_caveat_travels_with_every_prediction(session, store, doctors, tiny_model_dir, tmp_path):
    import shutil

    from xray.inference.models import update_config

    alice, _ = doctors
    assert _diagnose(session, store, alice, f"local-dir:{tiny_model_dir}").warnings == []
    folder = shutil.copytree(tiny_model_dir, tmp_path / "with-caveat")
    update_config(folder, caveat="Its COVID-19 output separates adults from children.")
    result = _diagnose(session, store, alice, f"local-dir:{folder}")
    assert result.warnings == ["About this model: Its COVID-19 output separates adults from children."]
    # the app reads it without loading the weights too (a prediction revealed later, behind the input warning)
    assert (
        registry.describe_model(f"local-dir:{folder}").caveat == "Its COVID-19 output separates adults from children."
    )
    assert registry.describe_model(f"local-dir:{tiny_model_dir}").caveat is None
    assert registry.caveat_warnings(None) == []


def test_diagnose_with_another_class_and_method(session, store, doctors, model_name):
    alice, _ = doctors
    result = _diagnose(session, store, alice, model_name, target_label="PNEUMONIA", method="gradcam++")
    assert result.record.cam_target_label == "PNEUMONIA" and result.record.cam_method == "gradcam++"


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"patient_name": ""}, InvalidInputError, "patient"),
        ({"exam_date": "2025-07-01"}, InvalidInputError, "future"),
        ({"exam_date": "yesterday"}, InvalidInputError, "not a date"),
        ({"source": None}, InvalidInputError, "Upload a chest X-ray"),
        ({"source": b""}, EmptyFileError, None),
        ({"source": b"%PDF-1.7 this is not an image"}, NotAnImageError, None),
        ({"max_upload_bytes": 10_000}, UploadTooLargeError, "limit is"),
        ({"model_name": "pneumonia-v9"}, InvalidInputError, "Unknown model"),
        ({"allowed_models": []}, InvalidInputError, "No model is installed"),
        ({"method": "lime"}, InvalidInputError, "Unknown heatmap method"),
        ({"target_label": "COVID-19"}, InvalidInputError, "Unknown class"),
        ({"max_pixels": 1000}, ImageTooLargeError, None),
    ],
)
def test_bad_diagnose_inputs_save_nothing(session, store, doctors, model_name, overrides, error, message):
    alice, _ = doctors
    with pytest.raises(error, match=message):
        _diagnose(session, store, alice, model_name, **overrides)
    assert crud.count_records(session, doctor=alice) == 0
    assert not store.root.exists() or not any(p.is_file() for p in store.root.rglob("*"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": None}, "Upload a chest X-ray"),
        ({"patient_name": "  "}, "patient"),
        ({"exam_date": "yesterday"}, "not a date"),
        ({"exam_date": "2025-07-01"}, "future"),
        ({"model_name": "pneumonia-v9"}, "Unknown model"),
        ({"allowed_models": []}, "No model is installed"),
        ({"method": "lime"}, "Unknown heatmap method"),
    ],
)
def test_check_form_says_what_diagnose_would_without_reading_the_file(model_name, overrides, message):
    """The Diagnose tab checks the form first (one message, no error badge on the result panes)."""
    form = {
        "source": "/nonexistent/upload.png",  # never opened: the file's content is diagnose's to check
        "patient_name": "Jane Roe",
        "exam_date": "2025-06-01",
        "model_name": model_name,
        "allowed_models": [model_name],
        "method": "gradcam",
    }
    form.update(overrides)
    args = [form[k] for k in ("source", "patient_name", "exam_date", "model_name", "allowed_models", "method")]
    with pytest.raises(InvalidInputError, match=message):
        diagnose.check_form(*args, today=date(2025, 6, 30))
    if overrides == {"source": None}:
        assert diagnose.check_form("/nonexistent/upload.png", *args[1:], today=date(2025, 6, 30)) is None


def test_truncated_jpeg_is_refused(session, store, doctors, model_name):
    alice, _ = doctors
    data = PNEUMONIA_JPEG.read_bytes()
    with pytest.raises(ImageReadError):
        _diagnose(session, store, alice, model_name, source=data[: len(data) // 3], filename="cut.jpeg")


def test_dicom_upload_prefills_and_diagnoses(session, store, doctors, model_name):
    from xray.imaging.io import read_image

    alice, _ = doctors
    pixels = np.asarray(Image.open(NORMAL_JPEG).convert("L").resize((400, 320)))
    data = make_dicom(
        pixels.astype(np.uint8),
        SOPClassUID=SecondaryCaptureImageStorage,
        PatientName="Roe^Jane",
        PatientID="P-0042",
        StudyDate="20240315",
        Modality="CR",
    )
    prefill = forms.prefill_from_metadata(read_image(data).metadata)
    assert prefill.exam_date == date(2024, 3, 15)
    assert "P-0042" in prefill.patient and "Jane" in prefill.patient
    result = _diagnose(session, store, alice, model_name, source=data, filename="study.dcm")
    assert result.record.image_format == "DICOM" and (result.record.image_width, result.record.image_height) == (
        400,
        320,
    )
    assert store.get(result.record.image_sha256) == data


def test_reexplain_targets_another_class_without_changing_the_record(session, store, doctors, model_name):
    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name, target_label="NORMAL").record
    view = diagnose.reexplain(
        session, store, doctor=alice, record_id=record.id, target_label="PNEUMONIA", method="hirescam",
        allowed_models=[model_name], max_pixels=10**8,
    )  # fmt: skip
    assert view.target_label == "PNEUMONIA" and view.method == "hirescam" and view.record_id == record.id
    session.expire_all()
    assert crud.get_record(session, doctor=alice, record_id=record.id).cam_target_label == "NORMAL"


def _colour_photo(path: Path) -> Path:
    """A generated colour picture (hue gradients), the kind of upload the gate must flag."""
    y, x = np.mgrid[0:320, 0:400]
    rgb = np.stack([(x * 255 // 399), (y * 255 // 319), 255 - (x * 255 // 399)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_trust_frontal_xray_is_in_scope_with_heat_share(session, store, doctors, model_name):
    alice, _ = doctors
    result = _diagnose(session, store, alice, model_name)
    assert result.in_scope and result.gate.reasons == [] and result.record.gate_reasons == []
    # The tiny test model has no ood.npz: the gate says it checked image statistics only.
    assert result.gate_note == pipeline.NO_OOD_NOTE and result.gate.ood_distance is None
    share = result.record.heat_in_lungs
    assert share == pytest.approx(result.heatmap_check.heat_in_lungs) and 0.0 <= share <= 1.0
    assert f"{share:.0%} of the heat lies inside the estimated lung fields" in history.record_markdown(result.record)
    assert views.gate_markdown(result.record.gate_reasons) == ""


def test_trust_out_of_scope_upload_is_saved_with_its_reasons(session, store, doctors, model_name, tmp_path):
    alice, _ = doctors
    result = _diagnose(session, store, alice, model_name, source=_colour_photo(tmp_path / "photo.png"))
    assert not result.in_scope and "color" in result.gate.codes
    record = crud.get_record(session, doctor=alice, record_id=result.record.id)
    assert record.gate_reasons == result.gate.reasons and "colour image" in record.gate_reasons[0]
    box = views.gate_markdown(record.gate_reasons, result.gate_note)
    assert "prediction is hidden" in box and "colour image" in box and "Show the prediction anyway" in box
    assert "ood.npz" in box
    shown = views.gate_markdown(record.gate_reasons, result.gate_note, shown=True)  # after "Show the prediction"
    assert "shown on request" in shown and "prediction is hidden" not in shown and "Show the prediction" not in shown
    assert "colour image" in shown and "ood.npz" in shown
    assert "Input check:" in history.record_markdown(record) and "unreliable" in history.record_markdown(record)


def test_trust_small_and_blank_images_are_flagged(session, store, doctors, model_name, tmp_path):
    alice, _ = doctors
    small = tmp_path / "small.png"
    Image.open(NORMAL_JPEG).convert("L").resize((100, 90)).save(small)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((400, 400), 128, np.uint8)).save(blank)
    assert "too_small" in _diagnose(session, store, alice, model_name, source=small).gate.codes
    assert _diagnose(session, store, alice, model_name, source=blank).gate.codes == ["blank"]


@pytest.fixture
def split_model(tiny_model_dir: Path, tmp_path: Path) -> str:
    """The tiny model with per-population thresholds: children 0.0 (always PNEUMONIA), adults 1.0 (NORMAL)."""
    import shutil

    from xray.inference.models import update_config

    folder = shutil.copytree(tiny_model_dir, tmp_path / "split-model")
    update_config(folder, thresholds={"children": 0.0, "adults": 1.0, "rule": "test", "chosen_on": "test"})
    return f"local-dir:{folder}"


def test_record_summary_history_csv_and_pdf_say_which_threshold_and_why(session, store, doctors, split_model, tmp_path):
    import csv

    from pypdf import PdfReader

    from xray.web import review

    alice, _ = doctors
    pixels = (np.random.default_rng(1).random((256, 256)) * 255).astype(np.uint8)
    dicom_adult = make_dicom(pixels, PatientAge="045Y", PatientID="A-45")
    # the DICOM age decides over the doctor's "Child"
    by_age = _diagnose(session, store, alice, split_model, source=dicom_adult, filename="adult.dcm", population="Child")
    by_doctor = _diagnose(session, store, alice, split_model, population="Child")
    default = _diagnose(session, store, alice, split_model)  # no age, no choice: adults
    assert (by_age.record.threshold, by_age.record.population) == (1.0, "adults") and by_age.label == "NORMAL"
    assert by_age.record.population_reason == "from the DICOM age 45 years"
    assert (by_doctor.record.threshold, by_doctor.record.population) == (0.0, "children")
    assert by_doctor.label == by_doctor.record.predicted_label == "PNEUMONIA"
    assert by_doctor.record.population_reason == "chosen by the doctor"
    assert (default.record.threshold, default.record.population, default.label) == (1.0, "adults", "NORMAL")
    assert default.record.population_reason == "no age given: most patients are adults"
    stored = crud.get_record(session, doctor=alice, record_id=by_age.record.id)
    assert "operating threshold 1.000 for adults (from the DICOM age 45 years)" in views.result_summary(stored)
    assert "threshold 0.000 for children (chosen by the doctor)" in history.record_markdown(by_doctor.record)
    rows = {int(r["record_id"]): r for r in csv.DictReader(
        history.export_csv(session, doctor=alice, filters=crud.RecordFilter(), out_dir=tmp_path).open()
    )}  # fmt: skip
    assert (rows[by_age.record.id]["threshold"], rows[by_age.record.id]["threshold_population"]) == ("1.000", "adults")
    assert rows[by_age.record.id]["threshold_reason"] == "from the DICOM age 45 years"
    assert rows[by_doctor.record.id]["threshold_reason"] == "chosen by the doctor"
    path = review.record_report(session, store, doctor=alice, record_id=by_doctor.record.id, max_pixels=50_000_000,
                               out_dir=tmp_path)  # fmt: skip
    text = " ".join(PdfReader(path).pages[0].extract_text().split())
    assert "Threshold used: threshold 0.000 for children (chosen by the doctor)" in text
    with pytest.raises(InvalidInputError, match="Unknown patient group 'teen'"):
        _diagnose(session, store, alice, split_model, population="teen")


def test_model_without_population_thresholds_records_no_population(session, store, doctors, model_name):
    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name, population="Child").record
    assert (record.threshold, record.population, record.population_reason) == (0.5, None, None)
    assert views.result_summary(record).endswith("operating threshold 0.500.")
