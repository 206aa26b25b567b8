"""xray.web.forms: form fields and uploads."""

from __future__ import annotations

from datetime import date

import pytest

from tests.web_cases import TODAY
from xray.errors import InvalidInputError
from xray.records import crud
from xray.web import forms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Enter the patient"),
        ("   ", "Enter the patient"),
        ("x" * 201, "201 characters; at most 200"),
        ("a\nb", "control"),
    ],
)
def test_bad_patient_fields(value, message):
    with pytest.raises(InvalidInputError, match=message):
        forms.parse_patient(value)


def test_a_too_long_patient_name_is_refused_with_its_length_never_cut():
    from xray.errors import FieldTooLongError

    with pytest.raises(FieldTooLongError, match="Patient name or ID is 2000 characters; at most 200 are accepted"):
        forms.parse_patient("x" * 2000)
    assert forms.parse_patient("y" * 200) == "y" * 200
    # a DICOM header's long name reaches the form whole, to be refused there with its length
    prefill = forms.prefill_from_metadata({"PatientName": "Doe^" + "J" * 250})
    assert prefill.patient == "Doe " + "J" * 250


def test_patient_is_stripped():
    assert forms.parse_patient("  Jane Roe (ID 17) ") == "Jane Roe (ID 17)"


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
        forms.parse_exam_date(value, today=TODAY)


def test_exam_date_accepts_iso_and_datetime_text():
    assert forms.parse_exam_date("2025-06-30", today=TODAY) == TODAY
    assert forms.parse_exam_date("2024-01-02 00:00:00", today=TODAY) == date(2024, 1, 2)


def test_filters():
    f = forms.parse_filters(" ann ", "2024-01-01", "", "Any")
    assert f == crud.RecordFilter(patient="ann", date_from=date(2024, 1, 1), date_to=None, predicted_label=None)
    assert forms.parse_filters("", None, None, "NORMAL").predicted_label == "NORMAL"
    with pytest.raises(InvalidInputError, match="reversed"):
        forms.parse_filters("", "2024-02-01", "2024-01-01", None)


@pytest.mark.parametrize("value", [None, "", "abc", 0, -3, 1.5, float("nan")])
def test_bad_record_ids(value):
    with pytest.raises(InvalidInputError):
        forms.parse_record_id(value)


def test_record_id_and_opacity_parsing():
    assert forms.parse_record_id("12") == 12 and forms.parse_record_id(7.0) == 7
    assert forms.parse_opacity(0.3) == 0.3
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        forms.parse_opacity(1.5)


def test_prefill_from_dicom_style_metadata():
    prefill = forms.prefill_from_metadata({"PatientName": "Doe^John", "PatientID": "A-17", "StudyDate": "2023-04-05"})
    assert prefill == forms.Prefill(patient="Doe John (A-17)", exam_date=date(2023, 4, 5))
    assert forms.prefill_from_metadata({"StudyDate": "20230405"}).exam_date == date(2023, 4, 5)
    assert forms.prefill_from_metadata({"StudyDate": "garbage"}) == forms.Prefill()
    assert forms.prefill_from_metadata({}) == forms.Prefill()
