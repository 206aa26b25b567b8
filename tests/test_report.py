"""The PDF report: opened with pypdf, one page, every field present."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader

from xray.imaging.io import read_image
from xray.trust.report import build_report


@pytest.fixture(scope="module")
def image(kermany_fullres: list[Path]) -> np.ndarray:
    return read_image(kermany_fullres[-1]).pixels


def _report(image: np.ndarray, **overrides) -> PdfReader:
    fields = dict(
        image=image,
        overlay=np.ascontiguousarray(np.dstack([np.full_like(image[..., 0], 255), image[..., 1], image[..., 2]])),
        probabilities={"NORMAL": 0.123, "PNEUMONIA": 0.877},
        predicted_label="PNEUMONIA",
        threshold=0.42,
        positive_label="PNEUMONIA",
        model_name="pneumonia",
        model_version="3f2a9c1b7d4e",
        doctor="dr_house",
        patient_name="Zoë Brontë",
        exam_date=date(2024, 5, 1),
        final_read="Agree: right lower lobe pneumonia",
        final_note="Follow-up film in six weeks.",
        record_id=17,
        created_at=datetime(2024, 5, 2, 9, 30, tzinfo=UTC),
        target_label="PNEUMONIA",
        warnings=["Only 31% of the heatmap lies over the lung fields."],
    )
    fields.update(overrides)
    data = build_report(**fields)
    assert data.startswith(b"%PDF-")
    return PdfReader(io.BytesIO(data))


def _text(reader: PdfReader) -> str:
    return " ".join(reader.pages[0].extract_text().split())


def test_one_page_with_every_field(image: np.ndarray) -> None:
    reader = _report(image)
    assert len(reader.pages) == 1
    text = _text(reader)
    for expected in ("Zoë Brontë", "2024-05-01", "#17", "2024-05-02 09:30", "dr_house",
                     "pneumonia (version 3f2a9c1b7d4e)", "PNEUMONIA 87.7%", "NORMAL 12.3%", "Model result: PNEUMONIA",
                     "at least 0.42",
                     "Agree: right lower lobe pneumonia", "Follow-up film in six weeks.", "Only 31% of the heatmap",
                     "Heatmap (Grad-CAM, PNEUMONIA)", "Decision support only, not a diagnosis"):
        assert expected in text, expected
    assert len(reader.pages[0].images) == 2


def test_without_heatmap_threshold_or_final_read(image: np.ndarray) -> None:
    reader = _report(image, overlay=None, threshold=None, positive_label=None, final_read=None, final_note=None,
                     warnings=(), record_id=None)
    text = _text(reader)
    assert len(reader.pages) == 1 and len(reader.pages[0].images) == 1
    assert "Not recorded yet." in text and "not stored" in text and "Heatmap" not in text and "at least" not in text


def test_long_inputs_stay_on_one_page(image: np.ndarray) -> None:
    note = "Consolidation in the right lower lobe with air bronchograms. " * 80
    reader = _report(image, final_note=note, warnings=["A very long warning about the input image. " * 10] * 8,
                     patient_name="P" * 500)
    assert len(reader.pages) == 1
    text = _text(reader)
    assert "Decision support only, not a diagnosis" in text
    assert "\u2026" in text  # the note was shortened, visibly


def test_characters_missing_from_the_font_print_as_question_marks(image: np.ndarray) -> None:
    text = _text(_report(image, patient_name="王小明 Łukasz"))
    assert "??? Łukasz" in text


def test_grey_image_and_bad_arrays(image: np.ndarray) -> None:
    assert len(_report(image[..., 0], overlay=None).pages) == 1
    with pytest.raises(ValueError, match="uint8"):
        build_report(**{**dict(image=image.astype(np.float32), overlay=None, probabilities={"A": 1.0},
                               predicted_label="A", threshold=None, positive_label=None, model_name="m",
                               model_version="v", doctor="d", patient_name="p", exam_date=None)})
