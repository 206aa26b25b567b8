"""xray.web.review: the doctor's final read, agreement with the model, PDF report."""

from __future__ import annotations

import pytest

from tests.web_cases import diagnose_upload as _diagnose
from xray.errors import InvalidInputError, RecordNotFoundError
from xray.records import crud
from xray.web import review


def test_final_read_validation(session, store, doctors, model_name):
    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name).record
    saved = review.set_final_read(session, doctor=alice, record_id=record.id, final_read=" NORMAL ", final_note="")
    assert saved.final_read == "NORMAL" and saved.final_note is None and saved.predicted_label == record.predicted_label
    with pytest.raises(InvalidInputError, match="too long"):
        review.set_final_read(session, doctor=alice, record_id=record.id, final_read="x" * 101)


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


def test_agreement_counts_out_of_scope_reads_apart(session, store, doctors, model_name, tmp_path):
    from tests.web_cases import colour_photo

    alice, _ = doctors
    xray = _diagnose(session, store, alice, model_name, patient="Xray").record
    photo = _diagnose(session, store, alice, model_name, patient="Photo",
                      source=colour_photo(tmp_path / "photo.png")).record  # fmt: skip
    other = "NORMAL" if photo.predicted_label == "PNEUMONIA" else "PNEUMONIA"
    review.save_final_read(session, doctor=alice, record_id=xray.id, choice=review.CONFIRM)
    review.save_final_read(session, doctor=alice, record_id=photo.id, choice=other)
    result = review.agreement(session, doctor=alice)
    assert (result.agreed, result.total, result.rate) == (1, 1, 1.0)  # the photo's read does not count
    assert (result.out_of_scope_agreed, result.out_of_scope_total) == (0, 1)
    assert result.disagreements == []
    text = review.agreement_markdown(result)
    assert "Agreement with the model: 1/1 (100%)" in text
    assert "1 final read on out-of-scope images counted apart (agreed 0/1)" in text
    only_photo = review.agreement_markdown(review.Agreement(total=0, agreed=0, out_of_scope_total=1))
    assert "no final reads on in-scope images yet" in only_photo and "counted apart" in only_photo


def test_pdf_report_of_an_out_of_scope_record_says_so_above_the_result(session, store, doctors, model_name, tmp_path):
    from pypdf import PdfReader

    from tests.web_cases import colour_photo

    alice, _ = doctors
    record = _diagnose(session, store, alice, model_name, source=colour_photo(tmp_path / "photo.png")).record
    path = review.record_report(session, store, doctor=alice, record_id=record.id, max_pixels=50_000_000,
                               out_dir=tmp_path)  # fmt: skip
    reader = PdfReader(path)
    assert len(reader.pages) == 1
    text = " ".join(reader.pages[0].extract_text().split())
    assert "OUT OF SCOPE: this result is unreliable" in text
    assert text.index("OUT OF SCOPE") < text.index(f"Model result: {record.predicted_label}")
    for reason in record.gate_reasons:
        assert " ".join(reason.split()) in text  # every reason, whole
