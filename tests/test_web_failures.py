"""xray.web.failures: a user's mistake is one warning line, a bug is logged with its traceback and a reference."""

from __future__ import annotations

import logging

import gradio as gr
import pytest

from xray.errors import InvalidInputError
from xray.web import failures, forms


def _quiet(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


def test_a_user_error_is_one_warning_line_without_traceback(caplog):
    caplog.set_level(logging.INFO, logger="xray")
    try:
        forms.parse_exam_date("31/12/2024")
    except InvalidInputError as exc:
        failure = failures.handle_failure(exc, where="run_diagnose")
    assert failure.user_error and failure.reference is None
    assert failure.message.startswith("Exam date '31/12/2024' is not a date")
    [record] = [r for r in caplog.records if r.name == "xray.web.failures"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "\n" not in record.getMessage() and "run_diagnose" in record.getMessage()
    assert "31/12/2024" in record.getMessage()


def test_a_huge_user_input_is_not_repeated_whole_in_the_log(caplog):
    caplog.set_level(logging.INFO, logger="xray")
    failures.handle_failure(InvalidInputError("bad value " + "x" * 5000), where="h")
    message = caplog.records[-1].getMessage()
    assert len(message) < 500 and "more characters" in message


def test_a_bug_is_logged_with_its_traceback_and_a_reference(caplog):
    caplog.set_level(logging.INFO, logger="xray")
    try:
        {}["missing"]
    except KeyError as exc:
        failure = failures.handle_failure(exc, where="run_diagnose")
    assert not failure.user_error and failure.reference and failure.reference in failure.message
    record = caplog.records[-1]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert failure.reference in record.getMessage()
    assert "KeyError" in caplog.text and "Traceback" in caplog.text


def test_a_refused_file_type_is_one_line_and_a_quiet_message(tmp_path, caplog, capsys):
    from gradio.data_classes import FileData

    caplog.set_level(logging.INFO, logger="xray")
    upload = failures.quiet_preprocess(gr.File(file_types=[".png"], type="filepath", label="Chest X-ray"), _quiet)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(gr.Error) as info:
        upload.preprocess(FileData(path=str(notes), orig_name="notes.txt"))
    assert info.value.message.startswith("Invalid file type") and info.value.print_exception is False
    [record] = [r for r in caplog.records if r.name == "xray.web.failures"]
    assert record.levelno == logging.WARNING and record.exc_info is None and "Chest X-ray" in record.getMessage()


def test_an_unreadable_date_field_is_one_line_and_a_clear_message(caplog):
    caplog.set_level(logging.INFO, logger="xray")
    field = failures.quiet_preprocess(gr.DateTime(include_time=False, type="string", label="Exam date"), _quiet)
    with pytest.raises(gr.Error) as info:
        field.preprocess("a week before now")
    assert info.value.message.startswith("Exam date could not be read") and info.value.print_exception is False
    assert caplog.records[-1].exc_info is None
    assert field.preprocess("2024-05-01") == "2024-05-01"  # good input passes as before
