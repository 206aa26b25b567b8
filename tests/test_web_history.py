"""xray.web.history: the doctor's records, private to them: list, open, edit, delete, CSV export."""

from __future__ import annotations

import csv
from datetime import date

import numpy as np
import pytest

from tests.web_cases import TODAY
from tests.web_cases import diagnose_upload as _diagnose
from xray.errors import ImageReadError, InvalidInputError, RecordNotFoundError
from xray.records import crud
from xray.web import diagnose, history, review


def test_records_are_private_to_their_doctor(session, store, doctors, model_name):
    alice, bob = doctors
    record = _diagnose(session, store, alice, model_name).record
    for call in (
        lambda: history.open_record(session, store, doctor=bob, record_id=record.id, max_pixels=10**8),
        lambda: history.update_patient(
            session, doctor=bob, record_id=record.id, patient_name="X", exam_date="2024-01-01"
        ),
        lambda: history.delete_record(session, store, doctor=bob, record_id=record.id),
        lambda: review.set_final_read(session, doctor=bob, record_id=record.id, final_read="NORMAL"),
        lambda: diagnose.reexplain(
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
    assert history.history_page(session, doctor=bob, filters=crud.RecordFilter()).total == 0
    assert "Jane Roe" not in history.export_csv(session, doctor=bob, filters=crud.RecordFilter()).read_text()
    session.expire_all()
    assert crud.get_record(session, doctor=alice, record_id=record.id).patient_name == "Jane Roe"
    assert store.exists(record.image_sha256)


def test_open_record_shows_the_saved_image_and_heatmap(session, store, doctors, model_name):
    alice, _ = doctors
    result = _diagnose(session, store, alice, model_name)
    detail = history.open_record(session, store, doctor=alice, record_id=result.record.id, max_pixels=10**8)
    assert detail.view.pixels.shape == result.view.pixels.shape
    # The saved heatmap is stored as 8 bits at 512 px, so it matches the live one up to rounding.
    assert np.abs(detail.view.heatmap - result.view.heatmap).max() < 0.05
    text = history.record_markdown(detail.record)
    assert f"Record {result.record.id}: Jane Roe" in text and "operating threshold" in text


def test_edit_patient_fields(session, store, doctors, model_name):
    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name).record
    edited = history.update_patient(
        session, doctor=alice, record_id=str(record.id), patient_name=" Jane Q. Roe ", exam_date="2025-05-31",
        today=TODAY,
    )  # fmt: skip
    assert (edited.patient_name, edited.exam_date) == ("Jane Q. Roe", date(2025, 5, 31))
    assert edited.probabilities == record.probabilities
    with pytest.raises(InvalidInputError, match="future"):
        history.update_patient(
            session, doctor=alice, record_id=record.id, patient_name="Jane", exam_date="2099-01-01", today=TODAY
        )


def test_delete_removes_files_only_when_unused(session, store, doctors, model_name):
    alice, bob = doctors
    first = _diagnose(session, store, alice, model_name).record
    shared = _diagnose(session, store, bob, model_name).record  # same image bytes, another doctor
    assert shared.image_sha256 == first.image_sha256
    history.delete_record(session, store, doctor=alice, record_id=first.id)
    assert store.exists(first.image_sha256)  # still used by bob's record
    history.delete_record(session, store, doctor=bob, record_id=shared.id)
    assert not store.exists(first.image_sha256) and not store.exists(first.heatmap_sha256)
    with pytest.raises(RecordNotFoundError):
        history.open_record(session, store, doctor=alice, record_id=first.id, max_pixels=10**8)


def test_missing_image_file_is_reported(session, store, doctors, model_name):
    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name).record
    store.delete(record.image_sha256)
    with pytest.raises(ImageReadError, match="missing from the data folder"):
        history.open_record(session, store, doctor=alice, record_id=record.id, max_pixels=10**8)


def test_history_pages_newest_first(session, doctors):
    alice, _ = doctors
    values = dict(
        exam_date=date(2024, 1, 1), image_sha256="a" * 64, model_name="m", model_version="v",
        label_names=["NORMAL", "PNEUMONIA"], probabilities={"NORMAL": 0.7, "PNEUMONIA": 0.3}, predicted_label="NORMAL",
    )  # fmt: skip
    ids = [crud.create_record(session, doctor=alice, patient_name=f"P{i}", **values).id for i in range(5)]
    page = history.history_page(session, doctor=alice, filters=crud.RecordFilter(), page=2, page_size=2)
    assert [r.id for r in page.records] == [ids[2], ids[1]]
    assert (page.page, page.pages, page.total, page.caption) == (2, 3, 5, "Page 2 of 3 · 5 records")
    last = history.history_page(session, doctor=alice, filters=crud.RecordFilter(), page=99, page_size=2)
    assert last.page == 3 and [r.id for r in last.records] == [ids[0]]
    rows = history.history_rows(page.records)
    assert rows[0][0] == ids[2] and rows[0][2] == "P2" and rows[0][4] == "NORMAL" and rows[0][5] == 0.7


def test_csv_export_is_filtered_and_safe_for_spreadsheets(session, store, doctors, model_name):
    alice, bob = doctors
    _diagnose(session, store, alice, model_name, patient_name='=HYPERLINK("http://x")')
    _diagnose(session, store, alice, model_name, patient_name="Anna Normal", exam_date="2025-01-01")
    _diagnose(session, store, bob, model_name, patient_name="Bobs Patient")
    path = history.export_csv(session, doctor=alice, filters=crud.RecordFilter(date_from=date(2025, 6, 1)))
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [r["patient"] for r in rows] == ['\'=HYPERLINK("http://x")']
    assert set(rows[0]) >= {"record_id", "exam_date", "predicted_label", "p_NORMAL", "p_PNEUMONIA", "model_version"}
    assert float(rows[0]["p_NORMAL"]) + float(rows[0]["p_PNEUMONIA"]) == pytest.approx(1.0, abs=1e-3)
    from xray.trust.operating import format_threshold

    record = history.owned_record(session, doctor=alice, record_id=int(rows[0]["record_id"]))
    assert rows[0]["threshold"] == format_threshold(record.threshold)  # as the app shows it: one way everywhere
    everything = list(csv.DictReader(history.export_csv(session, doctor=alice, filters=crud.RecordFilter()).open()))
    assert sorted(r["patient"] for r in everything) == ['\'=HYPERLINK("http://x")', "Anna Normal"]


def test_delete_then_diagnose_gives_a_new_record_number(session, store, doctors, model_name):
    alice, _ = doctors
    _diagnose(session, store, alice, model_name, patient="Older")
    newest = _diagnose(session, store, alice, model_name, patient="Deleted").record
    history.delete_record(session, store, doctor=alice, record_id=newest.id)
    again = _diagnose(session, store, alice, model_name, patient="Another patient").record
    assert again.id > newest.id
    with pytest.raises(RecordNotFoundError):
        history.owned_record(session, doctor=alice, record_id=newest.id)


def test_out_of_scope_records_are_marked_in_the_list_and_the_csv(session, store, doctors, model_name, tmp_path):
    from tests.web_cases import colour_photo

    alice, _ = doctors
    xray = _diagnose(session, store, alice, model_name, patient="Xray Patient").record
    photo = _diagnose(session, store, alice, model_name, patient="Photo Patient",
                      source=colour_photo(tmp_path / "photo.png")).record  # fmt: skip
    unchecked = crud.create_record(
        session, doctor=alice, patient_name="Before the gate", exam_date=date(2024, 1, 1), image_sha256="b" * 64,
        model_name="m", model_version="v", label_names=["NORMAL", "PNEUMONIA"],
        probabilities={"NORMAL": 0.7, "PNEUMONIA": 0.3}, predicted_label="NORMAL",
    )  # fmt: skip
    rows = {row[0]: row for row in history.history_rows(crud.list_records(session, doctor=alice))}
    output = history.HISTORY_COLUMNS.index("Model output")
    assert rows[photo.id][output] == f"⚠️ OUT OF SCOPE · {photo.predicted_label}"
    assert rows[xray.id][output] == xray.predicted_label
    assert rows[unchecked.id][output] == "NORMAL"
    exported = {int(r["record_id"]): r for r in csv.DictReader(
        history.export_csv(session, doctor=alice, filters=crud.RecordFilter(), out_dir=tmp_path).open(encoding="utf-8")
    )}  # fmt: skip
    assert exported[photo.id]["input_check"].startswith("OUT OF SCOPE: ")
    assert "colour image" in exported[photo.id]["input_check"]
    assert exported[xray.id]["input_check"] == "in scope"
    assert exported[unchecked.id]["input_check"] == "not checked"


def test_a_long_patient_name_is_shortened_in_the_list_only(session, store, doctors, model_name, tmp_path):
    alice, _ = doctors
    name = " ".join(["Maximilianus-Bartholomaeus"] * 7)[:200]
    record = _diagnose(session, store, alice, model_name, patient=name).record
    [row] = history.history_rows([record])
    shown = row[history.HISTORY_COLUMNS.index("Patient")]
    assert shown.endswith("…") and len(shown) <= 60 and name.startswith(shown[:-1])
    assert history.history_rows([record])[0][history.HISTORY_COLUMNS.index("Model output")] == record.predicted_label
    session.expire_all()
    assert crud.get_record(session, doctor=alice, record_id=record.id).patient_name == name  # the record: whole
    assert f"Record {record.id}: {name}" in history.record_markdown(record).replace("\\", "")
    exported = history.export_csv(session, doctor=alice, filters=crud.RecordFilter(), out_dir=tmp_path)
    assert [r["patient"] for r in csv.DictReader(exported.open(encoding="utf-8"))] == [name]
    assert len(history.HISTORY_COLUMN_WIDTHS) == len(history.HISTORY_COLUMNS)
    assert sum(float(w.rstrip("%")) for w in history.HISTORY_COLUMN_WIDTHS) == 100
