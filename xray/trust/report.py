"""One-page PDF report of a record: image, heatmap, probabilities, threshold, model, doctor, patient, final read.

Built with fpdf2 in memory (nothing touches the disk). Text uses the DejaVu Sans font that matplotlib ships, so
accented and Cyrillic/Greek names print as typed; characters the font lacks (e.g. CJK) print as '?'.
Nothing is shortened (these are medical records): long fields wrap, the pictures shrink to leave the text room on
one A4 page, and only text that cannot fit even then goes on to a second page, the disclaimer closing the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from xray.trust.operating import describe_threshold, format_threshold

logger = logging.getLogger(__name__)

DISCLAIMER = (
    "Decision support only, not a diagnosis. The probabilities and heatmap come from a machine-learning model "
    "trained on public research data sets; they can be wrong, and they do not replace a radiologist's or "
    "physician's reading of the image together with the clinical picture. The final read above is the doctor's."
)

PAGE_W, PAGE_H, MARGIN = 210.0, 297.0, 15.0
IMAGE_BOX = 80.0  # mm, the square each picture is fitted into
MIN_IMAGE_BOX = 45.0  # mm, the smallest the pictures shrink to, to leave the text room on the first page
FOOTER_Y = PAGE_H - MARGIN - 20  # mm, where the disclaimer starts
MAX_PIXELS_SIDE = 800  # pictures are downscaled to this before embedding, to keep the PDF small
LABEL_W = 28.0  # mm, the field names' column


@lru_cache(maxsize=1)
def _font_paths() -> tuple[Path, Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"


@lru_cache(maxsize=1)
def _font_codepoints() -> frozenset[int]:
    from fontTools.ttLib import TTFont

    with TTFont(str(_font_paths()[0]), lazy=True) as font:
        return frozenset(font.getBestCmap())


def _text(value: object, *, lines: bool = False) -> str:
    """Printable single-font text, whole: characters missing from the font become '?'.

    Runs of white space become one space (line breaks are kept with `lines`).
    """
    text = "" if value is None else str(value)
    text = text.strip() if lines else " ".join(text.split())
    known = _font_codepoints()
    return "".join(ch if ord(ch) in known or ch == "\n" else "?" for ch in text)


def _picture(pixels: np.ndarray) -> Image.Image:
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"report pictures must be uint8 arrays, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 1:
        raise ValueError(f"report pictures must be HxW or HxWx3 arrays, got shape {arr.shape}")
    image = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    image.thumbnail((MAX_PIXELS_SIDE, MAX_PIXELS_SIDE), Image.Resampling.BILINEAR)
    return image


def _fit(image: Image.Image, box: float) -> tuple[float, float]:
    w, h = image.size
    scale = box / max(w, h)
    return w * scale, h * scale


def build_report(
    *,
    image: np.ndarray,
    overlay: np.ndarray | None,
    probabilities: Mapping[str, float],
    predicted_label: str,
    threshold: float | None,
    positive_label: str | None,
    model_name: str,
    model_version: str,
    doctor: str,
    patient_name: str,
    exam_date: date | str | None,
    final_read: str | None = None,
    final_note: str | None = None,
    record_id: int | str | None = None,
    created_at: datetime | None = None,
    target_label: str | None = None,
    warnings: Sequence[str] = (),
    scope_warning: str | None = None,
    population: str | None = None,
    population_reason: str | None = None,
) -> bytes:
    """Render a record as a one-page A4 PDF.

    Args:
        image: the X-ray as shown to the model (HxWx3 or HxW uint8).
        overlay: the Grad-CAM overlay (HxWx3 uint8), or None when no heatmap was made.
        probabilities: calibrated probability per class name.
        predicted_label: the model's decision under `threshold`.
        threshold: the operating threshold on `positive_label`'s probability (binary models), else None.
        positive_label: the class the threshold applies to, else None.
        model_name: model id (bundled name, `hf-hub:...` or `local-dir:...`).
        model_version: hub revision or weights hash.
        doctor: the doctor's user name.
        patient_name: as entered.
        exam_date: date of the exam.
        final_read: the doctor's final read (e.g. "agree", "disagree: normal"), or None if not given yet.
        final_note: the doctor's free-text note.
        record_id: the stored record's id.
        created_at: when the prediction was made (default: now).
        target_label: the class the heatmap explains.
        warnings: heatmap warnings and the model's caveat, to repeat on the report.
        scope_warning: the input gate's warning when the image is out of scope: printed as prominently as the
            result, right above it.
        population: the population whose threshold decided it (models with one per population), else None.
        population_reason: why that population ("from the DICOM age 45 years", "chosen by the doctor").

    Returns:
        The PDF file as bytes.
    """
    from fpdf import FPDF

    regular, bold = _font_paths()
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_margins(MARGIN, MARGIN, MARGIN)
    pdf.add_font("DejaVu", "", str(regular))
    pdf.add_font("DejaVu", "B", str(bold))
    # JPEG inside the PDF keeps a report with two pictures well under a megabyte.
    pdf.set_image_filter("DCTDecode")
    pdf.set_title(_text(f"Chest X-ray report {record_id or ''}".strip()))
    pdf.set_creator("xray decision support")
    pdf.add_page()
    width = PAGE_W - 2 * MARGIN

    pdf.set_font("DejaVu", "B", 15)
    pdf.cell(width, 8, "Chest X-ray decision support report", new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.set_font("DejaVu", "B", 10)
    pdf.set_text_color(170, 0, 0)
    pdf.cell(width, 6, "Decision support only, not a diagnosis.", new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)

    created = created_at or datetime.now().astimezone()
    exam = exam_date.isoformat() if isinstance(exam_date, date) else (exam_date or "not given")
    fields = [
        ("Patient", patient_name),
        ("Exam date", exam),
        ("Record", f"#{record_id}" if record_id is not None else "not stored"),
        ("Created", created.strftime("%Y-%m-%d %H:%M %Z").strip()),
        ("Doctor", doctor),
        ("Model", f"{model_name} (version {model_version})"),
    ]
    for label, value in fields:
        pdf.set_font("DejaVu", "B", 10)
        pdf.cell(LABEL_W, 5.5, f"{label}:")
        pdf.set_font("DejaVu", "", 10)
        # multi_cell wraps a long value (and breaks a word longer than the line) instead of running off the page
        pdf.multi_cell(width - LABEL_W, 5.5, _text(value), new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.ln(3)

    def text_part(target) -> None:  # noqa: ANN001 - the FPDF, or its recorder when measuring
        _text_part(
            target, width, probabilities=probabilities, predicted_label=predicted_label, threshold=threshold,
            positive_label=positive_label, final_read=final_read, final_note=final_note, warnings=warnings,
            scope_warning=scope_warning, population=population, population_reason=population_reason,
        )  # fmt: skip

    top = pdf.get_y()
    with pdf.offset_rendering() as dry:
        text_part(dry)
    text_height = dry.y - top
    pictures = [("Image", _picture(image))]
    if overlay is not None:
        caption = f"Heatmap (Grad-CAM, {target_label})" if target_label else "Heatmap (Grad-CAM)"
        pictures.append((caption, _picture(overlay)))
    # the pictures give way to the text (down to MIN_IMAGE_BOX), never the other way round
    box = max(MIN_IMAGE_BOX, min(IMAGE_BOX, FOOTER_Y - 2 - top - text_height - 5 - 4))
    x = MARGIN
    tallest = 0.0
    for caption, picture in pictures:
        w, h = _fit(picture, box)
        pdf.set_font("DejaVu", "B", 9)
        pdf.set_xy(x, top)
        pdf.cell(box, 5, _text(caption))
        pdf.image(picture, x=x + (box - w) / 2, y=top + 5, w=w, h=h)
        tallest = max(tallest, h)
        x += box + (width - 2 * box)
    pdf.set_xy(MARGIN, top + 5 + tallest + 4)

    # Text that still does not fit goes on to a next page rather than being cut; the disclaimer closes the last.
    pdf.set_auto_page_break(True, margin=PAGE_H - FOOTER_Y + 2)
    text_part(pdf)
    pdf.set_auto_page_break(False)

    pdf.set_xy(MARGIN, FOOTER_Y)
    pdf.set_draw_color(150, 150, 150)
    pdf.line(MARGIN, pdf.get_y(), PAGE_W - MARGIN, pdf.get_y())
    pdf.ln(1.5)
    pdf.set_font("DejaVu", "", 8)
    pdf.multi_cell(width, 4, DISCLAIMER, new_x="LMARGIN", new_y="NEXT", align="L")
    data = bytes(pdf.output())
    if pdf.page_no() != 1:  # only text too long for one page even with small pictures gets here
        logger.info("report for record %s runs over %d pages", record_id, pdf.page_no())
    return data


def _text_part(
    pdf,  # noqa: ANN001 - FPDF or its offset_rendering recorder
    width: float,
    *,
    probabilities: Mapping[str, float],
    predicted_label: str,
    threshold: float | None,
    positive_label: str | None,
    final_read: str | None,
    final_note: str | None,
    warnings: Sequence[str],
    scope_warning: str | None,
    population: str | None = None,
    population_reason: str | None = None,
) -> None:
    """Everything below the pictures: model output, the out-of-scope warning, other warnings, the final read."""
    pdf.set_font("DejaVu", "B", 11)
    pdf.cell(width, 6, "Model output", new_x="LMARGIN", new_y="NEXT", align="L")
    if scope_warning:
        # As prominent as the result (bold, the same size and above it), in red, and whole.
        pdf.set_text_color(170, 0, 0)
        pdf.set_font("DejaVu", "B", 11)
        pdf.cell(width, 6, "OUT OF SCOPE: this result is unreliable", new_x="LMARGIN", new_y="NEXT", align="L")
        pdf.set_font("DejaVu", "B", 10)
        pdf.multi_cell(width, 5.5, _text(scope_warning), new_x="LMARGIN", new_y="NEXT", align="L")
        pdf.set_text_color(0, 0, 0)
        pdf.ln(1)
    pdf.set_font("DejaVu", "", 10)
    for name, value in sorted(probabilities.items(), key=lambda kv: -kv[1]):
        pdf.cell(60, 5.5, _text(name))
        pdf.cell(25, 5.5, f"{float(value):.1%}", align="R")
        bar = max(0.0, min(1.0, float(value))) * 70
        y = pdf.get_y()
        pdf.set_fill_color(70, 110, 180)
        if bar > 0:
            pdf.rect(MARGIN + 90, y + 1.2, bar, 3.2, style="F")
        pdf.ln(5.5)
    pdf.set_font("DejaVu", "B", 10)
    decision = f"Model result: {predicted_label}"
    if scope_warning:
        decision += " (unreliable: the image is out of scope)"
    if threshold is not None and positive_label:
        decision += f"  (called {positive_label} when its probability is at least {format_threshold(threshold)})"
    pdf.multi_cell(width, 5.5, _text(decision), new_x="LMARGIN", new_y="NEXT", align="L")
    if threshold is not None and positive_label and population:
        pdf.set_font("DejaVu", "", 10)
        used = f"Threshold used: {describe_threshold(threshold, population, population_reason)}"
        pdf.multi_cell(width, 5.5, _text(used), new_x="LMARGIN", new_y="NEXT", align="L")

    shown = [w for w in warnings if w]
    if shown:
        pdf.ln(1)
        pdf.set_text_color(150, 80, 0)
        pdf.set_font("DejaVu", "B", 10)
        pdf.cell(width, 5.5, "Warnings", new_x="LMARGIN", new_y="NEXT", align="L")
        pdf.set_font("DejaVu", "", 9)
        for warning in shown:
            pdf.multi_cell(width, 4.6, "\u2022 " + _text(warning), new_x="LMARGIN", new_y="NEXT", align="L")
        pdf.set_text_color(0, 0, 0)

    pdf.ln(2)
    pdf.set_font("DejaVu", "B", 11)
    pdf.cell(width, 6, "Final read by the doctor", new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.set_font("DejaVu", "", 10)
    pdf.multi_cell(width, 5.5, _text(final_read or "Not recorded yet."), new_x="LMARGIN", new_y="NEXT", align="L")
    if final_note:
        pdf.set_font("DejaVu", "", 9)
        pdf.multi_cell(width, 4.6, _text(final_note, lines=True), new_x="LMARGIN", new_y="NEXT", align="L")
