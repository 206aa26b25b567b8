from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage
from sqlmodel import Session

from tests.dicom_files import make_dicom
from xray.analysis import pipeline
from xray.errors import (
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    InvalidInputError,
    NotAnImageError,
    NotSignedInError,
    RecordNotFoundError,
    UploadTooLargeError,
)
from xray.records import auth, crud
from xray.records.storage import sha256_hex
from xray.web import service

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNEUMONIA_JPEG = EXAMPLES / "person1951_bacteria_4882.jpeg"
NORMAL_JPEG = EXAMPLES / "NORMAL2-IM-1438-0001.jpeg"
TODAY = date(2025, 6, 30)
MB = 2**20


@pytest.fixture
def model_name(tiny_model_dir) -> str:
    return f"local-dir:{tiny_model_dir}"


@pytest.fixture
def doctors(session):
    alice = crud.create_doctor(session, username="alice", display_name="Alice", password_hash=None)
    bob = crud.create_doctor(session, username="bob", display_name="Bob", password_hash=None)
    return alice, bob


def _diagnose(session, store, doctor, model, source=PNEUMONIA_JPEG, **overrides):
    args = dict(
        doctor=doctor,
        source=source,
        filename=None,
        patient_name="Jane Roe",
        exam_date="2025-06-01",
        model_name=model,
        allowed_models=[model],
        max_upload_bytes=5 * MB,
        max_pixels=50_000_000,
        today=TODAY,
    )
    args.update(overrides)
    return service.diagnose(session, store, **args)


# ------------------------------------------------------------------------------------------------ fields


@pytest.mark.parametrize(
    ("value", "message"),
    [(None, "Enter the patient"), ("   ", "Enter the patient"), ("x" * 201, "too long"), ("a\nb", "control")],
)
def test_bad_patient_fields(value, message):
    with pytest.raises(InvalidInputError, match=message):
        service.parse_patient(value)


def test_patient_is_stripped():
    assert service.parse_patient("  Jane Roe (ID 17) ") == "Jane Roe (ID 17)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Enter the exam date"),
        ("", "Enter the exam date"),
        ("31/12/2024", "not a date"),
        ("2024-02-30", "not a date"),
        ("2025-07-01", "in the future"),
        ("1899-12-31", "before 1900"),
    ],
)
def test_bad_exam_dates(value, message):
    with pytest.raises(InvalidInputError, match=message):
        service.parse_exam_date(value, today=TODAY)


def test_exam_date_accepts_iso_and_datetime_text():
    assert service.parse_exam_date("2025-06-30", today=TODAY) == TODAY
    assert service.parse_exam_date("2024-01-02 00:00:00", today=TODAY) == date(2024, 1, 2)


def test_filters():
    f = service.parse_filters(" ann ", "2024-01-01", "", "Any")
    assert f == crud.RecordFilter(patient="ann", date_from=date(2024, 1, 1), date_to=None, predicted_label=None)
    assert service.parse_filters("", None, None, "NORMAL").predicted_label == "NORMAL"
    with pytest.raises(InvalidInputError, match="reversed"):
        service.parse_filters("", "2024-02-01", "2024-01-01", None)


@pytest.mark.parametrize("value", [None, "", "abc", 0, -3, 1.5, float("nan")])
def test_bad_record_ids(value):
    with pytest.raises(InvalidInputError):
        service.parse_record_id(value)


def test_record_id_and_opacity_parsing():
    assert service.parse_record_id("12") == 12 and service.parse_record_id(7.0) == 7
    assert service.parse_opacity(0.3) == 0.3
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        service.parse_opacity(1.5)


def test_prefill_from_dicom_style_metadata():
    prefill = service.prefill_from_metadata({"PatientName": "Doe^John", "PatientID": "A-17", "StudyDate": "2023-04-05"})
    assert prefill == service.Prefill(patient="Doe John (A-17)", exam_date=date(2023, 4, 5))
    assert service.prefill_from_metadata({"StudyDate": "20230405"}).exam_date == date(2023, 4, 5)
    assert service.prefill_from_metadata({"StudyDate": "garbage"}) == service.Prefill()
    assert service.prefill_from_metadata({}) == service.Prefill()


def test_headline_metrics_read_the_evaluate_layout():
    metrics = {
        "test": {
            "at_default": {"value": {"auc": 0.9, "accuracy": 0.8}},
            "at_threshold": {"value": {"auc": 0.97, "accuracy": 0.91, "sensitivity": 0.95, "specificity": 0.88}},
        }
    }
    assert service.headline_metrics(metrics) == {
        "auc": 0.97,
        "accuracy": 0.91,
        "sensitivity": 0.95,
        "specificity": 0.88,
    }
    assert service.format_headline(service.headline_metrics(metrics)) == "AUC 0.970, acc 0.910, sens 0.950, spec 0.880"
    assert service.headline_metrics({"test": {"at_default": {"value": {"auc": None, "accuracy": 0.8}}}}) == {
        "accuracy": 0.8
    }
    assert service.headline_metrics({}) == {}


def test_model_card_front_matter_is_removed():
    assert service.strip_front_matter("---\nlicense: mit\n---\n\n# Card\ntext") == "# Card\ntext"
    assert service.strip_front_matter("# Card") == "# Card"


def test_describe_model_reads_config_without_loading(tiny_model_dir, tmp_path):
    info = service.describe_model(f"local-dir:{tiny_model_dir}")
    assert info.error is None and info.architecture == "mobilenetv3_small_100"
    assert info.label_names == ["NORMAL", "PNEUMONIA"]
    assert "no test metrics" in info.choice_label
    missing = service.describe_model(f"local-dir:{tmp_path}")
    assert missing.error and "config.json" in missing.error and "(unavailable)" in missing.choice_label


def test_require_doctor(session, doctors):
    assert service.require_doctor(session, "ALICE").username == "alice"
    with pytest.raises(NotSignedInError):
        service.require_doctor(session, None)
    auth.set_active(session, username="bob", active=False)
    with pytest.raises(NotSignedInError):
        service.require_doctor(session, "bob")


# ------------------------------------------------------------------------------------------------ diagnose


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
    assert max(result.view.pixels.shape[:2]) <= service.DISPLAY_MAX_SIDE
    assert result.view.overlay(0.0).tolist() == result.view.pixels.tolist()
    assert not np.array_equal(result.view.overlay(0.8), result.view.pixels)
    assert "operating threshold 0.500" in service.result_summary(record)


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
    assert service.describe_model(f"local-dir:{folder}").caveat == "Its COVID-19 output separates adults from children."
    assert service.describe_model(f"local-dir:{tiny_model_dir}").caveat is None
    assert service.caveat_warnings(None) == []


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
    prefill = service.prefill_from_metadata(read_image(data).metadata)
    assert prefill.exam_date == date(2024, 3, 15)
    assert "P-0042" in prefill.patient and "Jane" in prefill.patient
    result = _diagnose(session, store, alice, model_name, source=data, filename="study.dcm")
    assert result.record.image_format == "DICOM" and (result.record.image_width, result.record.image_height) == (
        400,
        320,
    )
    assert store.get(result.record.image_sha256) == data


# ------------------------------------------------------------------------------------------------ records


def test_records_are_private_to_their_doctor(session, store, doctors, model_name):
    alice, bob = doctors
    record = _diagnose(session, store, alice, model_name).record
    for call in (
        lambda: service.open_record(session, store, doctor=bob, record_id=record.id, max_pixels=10**8),
        lambda: service.update_patient(
            session, doctor=bob, record_id=record.id, patient_name="X", exam_date="2024-01-01"
        ),
        lambda: service.delete_record(session, store, doctor=bob, record_id=record.id),
        lambda: service.set_final_read(session, doctor=bob, record_id=record.id, final_read="NORMAL"),
        lambda: service.reexplain(
            session,
            store,
            doctor=bob,
            record_id=record.id,
            target_label="NORMAL",
            method="gradcam",
            allowed_models=[model_name],
            max_pixels=10**8,
        ),  # fmt: skip
    ):
        with pytest.raises(RecordNotFoundError, match=f"Record {record.id} was not found"):
            call()
    assert service.history_page(session, doctor=bob, filters=crud.RecordFilter()).total == 0
    assert "Jane Roe" not in service.export_csv(session, doctor=bob, filters=crud.RecordFilter()).read_text()
    session.expire_all()
    assert crud.get_record(session, doctor=alice, record_id=record.id).patient_name == "Jane Roe"
    assert store.exists(record.image_sha256)


def test_open_record_shows_the_saved_image_and_heatmap(session, store, doctors, model_name):
    alice, _ = doctors
    result = _diagnose(session, store, alice, model_name)
    detail = service.open_record(session, store, doctor=alice, record_id=result.record.id, max_pixels=10**8)
    assert detail.view.pixels.shape == result.view.pixels.shape
    # The saved heatmap is stored as 8 bits at 512 px, so it matches the live one up to rounding.
    assert np.abs(detail.view.heatmap - result.view.heatmap).max() < 0.05
    text = service.record_markdown(detail.record)
    assert f"Record {result.record.id}: Jane Roe" in text and "operating threshold" in text


def test_reexplain_targets_another_class_without_changing_the_record(session, store, doctors, model_name):
    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name, target_label="NORMAL").record
    view = service.reexplain(
        session, store, doctor=alice, record_id=record.id, target_label="PNEUMONIA", method="hirescam",
        allowed_models=[model_name], max_pixels=10**8,
    )  # fmt: skip
    assert view.target_label == "PNEUMONIA" and view.method == "hirescam" and view.record_id == record.id
    session.expire_all()
    assert crud.get_record(session, doctor=alice, record_id=record.id).cam_target_label == "NORMAL"


def test_edit_patient_fields(session, store, doctors, model_name):
    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name).record
    edited = service.update_patient(
        session, doctor=alice, record_id=str(record.id), patient_name=" Jane Q. Roe ", exam_date="2025-05-31",
        today=TODAY,
    )  # fmt: skip
    assert (edited.patient_name, edited.exam_date) == ("Jane Q. Roe", date(2025, 5, 31))
    assert edited.probabilities == record.probabilities
    with pytest.raises(InvalidInputError, match="future"):
        service.update_patient(
            session, doctor=alice, record_id=record.id, patient_name="Jane", exam_date="2099-01-01", today=TODAY
        )


def test_final_read_validation(session, store, doctors, model_name):
    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name).record
    saved = service.set_final_read(session, doctor=alice, record_id=record.id, final_read=" NORMAL ", final_note="")
    assert saved.final_read == "NORMAL" and saved.final_note is None and saved.predicted_label == record.predicted_label
    with pytest.raises(InvalidInputError, match="too long"):
        service.set_final_read(session, doctor=alice, record_id=record.id, final_read="x" * 101)


def test_delete_removes_files_only_when_unused(session, store, doctors, model_name):
    alice, bob = doctors
    first = _diagnose(session, store, alice, model_name).record
    shared = _diagnose(session, store, bob, model_name).record  # same image bytes, another doctor
    assert shared.image_sha256 == first.image_sha256
    service.delete_record(session, store, doctor=alice, record_id=first.id)
    assert store.exists(first.image_sha256)  # still used by bob's record
    service.delete_record(session, store, doctor=bob, record_id=shared.id)
    assert not store.exists(first.image_sha256) and not store.exists(first.heatmap_sha256)
    with pytest.raises(RecordNotFoundError):
        service.open_record(session, store, doctor=alice, record_id=first.id, max_pixels=10**8)


def test_missing_image_file_is_reported(session, store, doctors, model_name):
    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name).record
    store.delete(record.image_sha256)
    with pytest.raises(ImageReadError, match="missing from the data folder"):
        service.open_record(session, store, doctor=alice, record_id=record.id, max_pixels=10**8)


def test_history_pages_newest_first(session, doctors):
    alice, _ = doctors
    values = dict(
        exam_date=date(2024, 1, 1), image_sha256="a" * 64, model_name="m", model_version="v",
        label_names=["NORMAL", "PNEUMONIA"], probabilities={"NORMAL": 0.7, "PNEUMONIA": 0.3}, predicted_label="NORMAL",
    )  # fmt: skip
    ids = [crud.create_record(session, doctor=alice, patient_name=f"P{i}", **values).id for i in range(5)]
    page = service.history_page(session, doctor=alice, filters=crud.RecordFilter(), page=2, page_size=2)
    assert [r.id for r in page.records] == [ids[2], ids[1]]
    assert (page.page, page.pages, page.total, page.caption) == (2, 3, 5, "Page 2 of 3 · 5 records")
    last = service.history_page(session, doctor=alice, filters=crud.RecordFilter(), page=99, page_size=2)
    assert last.page == 3 and [r.id for r in last.records] == [ids[0]]
    rows = service.history_rows(page.records)
    assert rows[0][0] == ids[2] and rows[0][2] == "P2" and rows[0][4] == "NORMAL" and rows[0][5] == 0.7


def test_csv_export_is_filtered_and_safe_for_spreadsheets(session, store, doctors, model_name):
    alice, bob = doctors
    _diagnose(session, store, alice, model_name, patient_name='=HYPERLINK("http://x")')
    _diagnose(session, store, alice, model_name, patient_name="Anna Normal", exam_date="2025-01-01")
    _diagnose(session, store, bob, model_name, patient_name="Bobs Patient")
    path = service.export_csv(session, doctor=alice, filters=crud.RecordFilter(date_from=date(2025, 6, 1)))
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [r["patient"] for r in rows] == ['\'=HYPERLINK("http://x")']
    assert set(rows[0]) >= {"record_id", "exam_date", "predicted_label", "p_NORMAL", "p_PNEUMONIA", "model_version"}
    assert float(rows[0]["p_NORMAL"]) + float(rows[0]["p_PNEUMONIA"]) == pytest.approx(1.0, abs=1e-3)
    everything = list(csv.DictReader(service.export_csv(session, doctor=alice, filters=crud.RecordFilter()).open()))
    assert sorted(r["patient"] for r in everything) == ['\'=HYPERLINK("http://x")', "Anna Normal"]


# ------------------------------------------------------------------------------------------------ compare


def test_compare_runs_every_model_and_reports_broken_ones(tiny_model_dir, tiny_model_dir_3class, tmp_path):
    import shutil

    from xray.inference.models import update_config

    three_class = shutil.copytree(tiny_model_dir_3class, tmp_path / "three")
    update_config(three_class, caveat="Its COVID-19 output follows age and image source.")
    (tmp_path / "broken").mkdir()
    names = [f"local-dir:{tiny_model_dir}", f"local-dir:{three_class}", f"local-dir:{tmp_path / 'broken'}"]
    results = service.compare_models(
        PNEUMONIA_JPEG, filename=None, model_names=names, max_upload_bytes=5 * MB, max_pixels=10**8
    )
    assert [r.info.name for r in results] == names
    two, three, broken = results
    assert set(two.probabilities) == {"NORMAL", "PNEUMONIA"} and two.latency_ms > 0 and two.view is not None
    assert set(three.probabilities) == {"NORMAL", "PNEUMONIA", "COVID-19"}
    assert three.info.architecture == "resnet18"
    assert broken.error and broken.view is None
    rows = service.comparison_rows(results)
    assert rows[1][0] == names[1] and rows[2][3].startswith("error:")
    columns = dict(zip(service.COMPARE_COLUMNS, rows[1], strict=True))
    assert columns["Caveat"] == "Its COVID-19 output follows age and image source."
    assert columns["Input check"] == pipeline.input_check_text(three.gate, three.gate_note) and three.gate is not None
    assert pipeline.NO_OOD_NOTE in columns["Input check"]  # no ood.npz in the test model: "in scope" is qualified
    assert dict(zip(service.COMPARE_COLUMNS, rows[0], strict=True))["Caveat"] == "" and broken.gate is None
    # each model's own gate: a colour photograph is out of scope for every model that answers
    y, x = np.mgrid[0:300, 0:300]
    photo = tmp_path / "holiday.png"
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(photo)
    on_photo = service.compare_models(photo, filename=None, model_names=names[:2], max_upload_bytes=5 * MB,
                                      max_pixels=10**8)  # fmt: skip
    assert all(not c.gate.in_scope and "colour image" in " ".join(c.gate.reasons) for c in on_photo)
    assert all(row[7].startswith("OUT OF SCOPE") for row in service.comparison_rows(on_photo))
    with pytest.raises(InvalidInputError, match="No model"):
        service.compare_models(PNEUMONIA_JPEG, filename=None, model_names=[], max_upload_bytes=MB, max_pixels=10**8)


# ------------------------------------------------------------------------------------------------ start-up


def test_open_database_creates_data_dir_and_bootstraps_admin(tmp_path, caplog):
    from xray.config import Settings

    settings = Settings(data_dir=tmp_path / "fresh", admin_username=None, admin_password=None)
    with caplog.at_level("WARNING"):
        engine = service.open_database(settings)
    assert (tmp_path / "fresh" / "xray.db").is_file()
    assert any("python -m xray users add NAME" in r.getMessage() for r in caplog.records)
    engine.dispose()
    settings = Settings(data_dir=tmp_path / "fresh", admin_username="admin", admin_password="from a secret 123")
    engine = service.open_database(settings)
    with Session(engine) as session:
        assert auth.authenticate(session, username="admin", password="from a secret 123") == "success"
    engine.dispose()


def test_registered_models_put_the_default_first(tmp_path, tiny_model_dir):
    import shutil

    from xray.config import Settings

    models = tmp_path / "models"
    for name in ("covid", "pneumonia"):
        shutil.copytree(tiny_model_dir, models / name)
    settings = Settings(models_dir=models, default_model="pneumonia", extra_models="local-dir:/x, covid")
    assert service.registered_models(settings) == ["pneumonia", "covid", "local-dir:/x"]
    assert service.registered_models(Settings(models_dir=tmp_path / "none", extra_models="")) == []


def test_example_files_are_the_four_samples():
    names = [p.name for p in service.example_files()]
    assert len(names) == 4 and sum(n.startswith("NORMAL") for n in names) == 2


def test_markdown_escape_keeps_patient_names_literal():
    assert service.md_escape("*Roe* [x](http://y) #1") == "\\*Roe\\* \\[x\\]\\(http://y\\) \\#1"
    assert service.md_escape("Jane Roe") == "Jane Roe"


# ------------------------------------------------------------------------------------------------ trust: input gate


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
    assert f"{share:.0%} of the heat lies inside the estimated lung fields" in service.record_markdown(result.record)
    assert service.gate_markdown(result.record.gate_reasons) == ""


def test_trust_out_of_scope_upload_is_saved_with_its_reasons(session, store, doctors, model_name, tmp_path):
    alice, _ = doctors
    result = _diagnose(session, store, alice, model_name, source=_colour_photo(tmp_path / "photo.png"))
    assert not result.in_scope and "color" in result.gate.codes
    record = crud.get_record(session, doctor=alice, record_id=result.record.id)
    assert record.gate_reasons == result.gate.reasons and "colour image" in record.gate_reasons[0]
    box = service.gate_markdown(record.gate_reasons, result.gate_note)
    assert "prediction is hidden" in box and "colour image" in box and "Show the prediction anyway" in box
    assert "ood.npz" in box
    assert "Input check:" in service.record_markdown(record) and "unreliable" in service.record_markdown(record)


def test_trust_small_and_blank_images_are_flagged(session, store, doctors, model_name, tmp_path):
    alice, _ = doctors
    small = tmp_path / "small.png"
    Image.open(NORMAL_JPEG).convert("L").resize((100, 90)).save(small)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((400, 400), 128, np.uint8)).save(blank)
    assert "too_small" in _diagnose(session, store, alice, model_name, source=small).gate.codes
    assert _diagnose(session, store, alice, model_name, source=blank).gate.codes == ["blank"]


def test_trust_heat_markdown_warns_when_low():
    low = service.heat_markdown(0.2, 0.3)
    assert "Only 30% of the heatmap lies over the chest (20% over the lung fields)" in low and "⚠️" in low
    high = service.heat_markdown(0.45, 0.8)
    assert "45% of the heat lies inside the estimated lung fields, 80% over the chest." == high
    assert "not checked" in service.heat_markdown(None)
