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
                     "at least 0.420",
                     "Agree: right lower lobe pneumonia", "Follow-up film in six weeks.", "Only 31% of the heatmap",
                     "Heatmap (Grad-CAM, PNEUMONIA)", "Decision support only, not a diagnosis"):
        assert expected in text, expected
    assert len(reader.pages[0].images) == 2


def test_threshold_is_printed_as_the_app_shows_it(image: np.ndarray) -> None:
    text = _text(_report(image, threshold=0.540506))
    assert "at least 0.541)" in text and "0.54)" not in text and "0.5405" not in text


def test_without_heatmap_threshold_or_final_read(image: np.ndarray) -> None:
    reader = _report(image, overlay=None, threshold=None, positive_label=None, final_read=None, final_note=None,
                     warnings=(), record_id=None)
    text = _text(reader)
    assert len(reader.pages) == 1 and len(reader.pages[0].images) == 1
    assert "Not recorded yet." in text and "not stored" in text and "Heatmap" not in text and "at least" not in text


def _page_words(reader: PdfReader) -> set[str]:
    return {w for page in reader.pages for w in page.extract_text().split()}


def _overruns(reader: PdfReader) -> list[str]:
    """Pieces of text on the first page that end right of the right margin (widths measured in the report's font)."""
    from fpdf import FPDF

    from xray.trust.report import MARGIN, _font_paths

    ruler = FPDF(unit="pt")
    ruler.add_font("DejaVu", "", str(_font_paths()[0]))
    ruler.add_font("DejaVu", "B", str(_font_paths()[1]))
    right = float(reader.pages[0].mediabox.width) - MARGIN / 25.4 * 72
    over: list[str] = []

    def visit(text, _cm, tm, font, size):
        if text.strip() and size:
            ruler.set_font("DejaVu", "B" if "Bold" in (font or {}).get("/BaseFont", "") else "", size)
            if tm[4] + ruler.get_string_width(text.rstrip()) > right + 1:
                over.append(text)

    reader.pages[0].extract_text(visitor_text=visit)
    return over


CAVEAT = ("About this model: trained on children's X-rays from one hospital in Guangzhou; on adult X-rays from other "
          "sources its sensitivity fell to 26%, so a NORMAL output does not rule pneumonia out in adults.")
PHOTO = ("This image may be outside what the model was made for (frontal chest X-rays): It is a colour image; chest "
         "X-rays are grey-scale. It is unlike the images the model was trained on. Any result for it is unreliable.")


def test_long_name_wraps_and_warnings_are_never_cut(image: np.ndarray) -> None:
    name = " ".join(["Maximilianus-Bartholomaeus"] * 7)[:200]  # the longest name the form takes
    reader = _report(image, patient_name=name, warnings=["Only 31% of the heatmap lies over the lung fields.", CAVEAT],
                     final_note="Consolidation in the right lower lobe with air bronchograms. " * 5)
    assert len(reader.pages) == 1
    text = _text(reader)
    assert name in text  # whole, wrapped over lines
    assert CAVEAT in text and "\u2026" not in text
    assert "Decision support only, not a diagnosis" in text
    assert _overruns(reader) == []


def test_unbroken_200_character_name_wraps_inside_the_page(image: np.ndarray) -> None:
    reader = _report(image, patient_name="P" * 200)
    assert len(reader.pages) == 1
    assert "P" * 200 in _text(reader).replace(" ", "")
    assert _overruns(reader) == []


def test_out_of_scope_warning_is_as_prominent_as_the_result_and_whole(image: np.ndarray) -> None:
    import re

    reader = _report(image, scope_warning=PHOTO, warnings=["Only 31% of the heatmap lies over the lung fields.",
                                                            CAVEAT])
    assert len(reader.pages) == 1
    text = _text(reader)
    assert "OUT OF SCOPE" in text and PHOTO in text and CAVEAT in text
    assert text.index("OUT OF SCOPE") < text.index("Model result: PNEUMONIA")
    assert "unreliable" in text[text.index("Model result"):text.index("Model result") + 120]
    fonts = []

    def visit(piece, _cm, _tm, font, size):
        if piece.strip():
            fonts.append((" ".join(piece.split()), (font or {}).get("/BaseFont", ""), size))

    reader.pages[0].extract_text(visitor_text=visit)
    result = [f for f in fonts if "Model result" in f[0]][0]
    scope = [f for f in fonts if "OUT OF SCOPE" in f[0]][0]
    assert re.search("Bold", scope[1]) and scope[2] >= result[2]  # bold, no smaller than the result


def test_very_long_inputs_are_never_cut(image: np.ndarray) -> None:
    note = "Consolidation in the right lower lobe with air bronchograms. " * 30
    warnings = ["A very long warning about the input image. " * 10] * 3
    reader = _report(image, final_note=note, warnings=warnings, scope_warning=PHOTO, patient_name="P" * 200)
    words = _page_words(reader)
    text = " ".join(" ".join(page.extract_text().split()) for page in reader.pages)
    assert note.strip() in text and warnings[0].strip() in text and PHOTO in text
    assert "\u2026" not in words
    assert "Decision support only, not a diagnosis" in " ".join(reader.pages[-1].extract_text().split())


def test_characters_missing_from_the_font_print_as_question_marks(image: np.ndarray) -> None:
    text = _text(_report(image, patient_name="王小明 Łukasz"))
    assert "??? Łukasz" in text


def test_grey_image_and_bad_arrays(image: np.ndarray) -> None:
    assert len(_report(image[..., 0], overlay=None).pages) == 1
    with pytest.raises(ValueError, match="uint8"):
        build_report(**{**dict(image=image.astype(np.float32), overlay=None, probabilities={"A": 1.0},
                               predicted_label="A", threshold=None, positive_label=None, model_name="m",
                               model_version="v", doctor="d", patient_name="p", exam_date=None)})
