"""The History tab: the doctor's own records, one page at a time; open, edit, delete one; export the list as CSV.

Every query goes through `xray.records.crud`, which only sees the signed-in doctor's rows: another doctor's
record is "not found". The model's stored output is never editable here.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from xray.errors import ImageReadError, InvalidInputError, RecordNotFoundError
from xray.imaging.io import XrayImage
from xray.records import crud
from xray.records.db import Doctor, Record
from xray.records.storage import ImageStore
from xray.trust.operating import format_threshold
from xray.web.forms import load_image, parse_exam_date, parse_patient, parse_record_id
from xray.web.views import (
    HeatmapView,
    csv_cell,
    gate_warning,
    heat_markdown,
    input_check_cell,
    listed_name,
    listed_output,
    make_view,
    md_escape,
    model_line,
    result_summary,
)

logger = logging.getLogger(__name__)

PAGE_SIZE = 20
HISTORY_COLUMNS = ["ID", "Saved (UTC)", "Patient", "Exam date", "Model output", "Probability", "Model"]
#: Share of the table's width per column (the Dataframe's `column_widths`): without them the browser sizes a column
#: to its longest text, and a long patient name pushes the model output off screen. Long text wraps inside.
HISTORY_COLUMN_WIDTHS = ["5%", "11%", "23%", "10%", "18%", "11%", "22%"]


# ---------------------------------------------------------------------------------------------- the list


@dataclass
class HistoryPage:
    """One page of the doctor's records."""

    records: list[Record]
    page: int
    pages: int
    total: int

    @property
    def caption(self) -> str:
        """`Page 2 of 5 · 93 records`."""
        noun = "record" if self.total == 1 else "records"
        return f"Page {self.page} of {self.pages} · {self.total} {noun}"


def history_page(
    session: Session, *, doctor: Doctor, filters: crud.RecordFilter, page: Any = 1, page_size: int = PAGE_SIZE
) -> HistoryPage:
    """The doctor's records matching `filters`, newest first, one page (clamped to the pages that exist)."""
    total = crud.count_records(session, doctor=doctor, filters=filters)
    pages = max(1, math.ceil(total / page_size))
    try:
        number = int(float(page or 1))
    except (TypeError, ValueError):
        raise InvalidInputError(f"Page '{page}' is not a number.") from None
    number = min(max(1, number), pages)
    records = crud.list_records(
        session, doctor=doctor, filters=filters, offset=(number - 1) * page_size, limit=page_size
    )
    return HistoryPage(records=records, page=number, pages=pages, total=total)


def history_rows(records: Sequence[Record]) -> list[list[Any]]:
    """Table rows in `HISTORY_COLUMNS` order (a long patient name shortened with '…'; the record keeps it whole)."""
    rows = []
    for r in records:
        p = r.probabilities.get(r.predicted_label)
        rows.append(
            [
                r.id,
                r.created_at.strftime("%Y-%m-%d %H:%M"),
                listed_name(r.patient_name),
                r.exam_date.isoformat(),
                listed_output(r.predicted_label, r.gate_reasons),
                round(float(p), 3) if p is not None else None,
                r.model_name,
            ]
        )
    return rows


# ---------------------------------------------------------------------------------------------- one record


def owned_record(session: Session, *, doctor: Doctor, record_id: Any) -> Record:
    """One of the doctor's records by the id from a form field.

    Raises:
        InvalidInputError: not a record id.
        RecordNotFoundError: not one of the doctor's records.
    """
    rid = parse_record_id(record_id)
    record = crud.get_record(session, doctor=doctor, record_id=rid)
    if record is None:
        raise RecordNotFoundError(f"Record {rid} was not found among your records.")
    return record


def stored_image(store: ImageStore, record: Record, *, max_pixels: int) -> XrayImage:
    """The record's image, decoded from the store.

    Raises:
        ImageReadError: the file is gone from the data folder or cannot be decoded.
    """
    try:
        data = store.get(record.image_sha256)
    except FileNotFoundError:
        raise ImageReadError(
            f"The image of record {record.id} is missing from the data folder ({store.root}); "
            "it may have been moved or deleted outside the app."
        ) from None
    return load_image(data, filename=record.image_filename, max_pixels=max_pixels)


@dataclass
class RecordDetail:
    """One record opened from History: the record and its image with the saved heatmap."""

    record: Record
    view: HeatmapView


def open_record(
    session: Session, store: ImageStore, *, doctor: Doctor, record_id: Any, max_pixels: int
) -> RecordDetail:
    """The doctor's record with its stored image and heatmap.

    Raises:
        RecordNotFoundError: not one of the doctor's records.
        ImageReadError: the stored image file is gone.
    """
    record = owned_record(session, doctor=doctor, record_id=record_id)
    image = stored_image(store, record, max_pixels=max_pixels)
    if record.heatmap_sha256 and store.exists(record.heatmap_sha256):
        heatmap = store.get_heatmap(record.heatmap_sha256)
    else:
        heatmap = np.zeros(image.pixels.shape[:2], dtype=np.float32)
    view = make_view(
        image,
        heatmap,
        target_label=record.cam_target_label or record.predicted_label,
        method=record.cam_method,
        record_id=record.id,
    )
    return RecordDetail(record=record, view=view)


def record_markdown(record: Record) -> str:
    """The record's details for the History tab."""
    probs = ", ".join(f"{k} {v:.3f}" for k, v in record.probabilities.items())
    lines = [
        f"### Record {record.id}: {md_escape(record.patient_name)}",
        f"Exam date {record.exam_date.isoformat()} · saved {record.created_at:%Y-%m-%d %H:%M} UTC"
        + (f" · edited {record.updated_at:%Y-%m-%d %H:%M} UTC" if record.updated_at else ""),
        "",
        result_summary(record),
        "",
        f"Probabilities: {probs}",
        "",
        model_line(record) + f" · heatmap: {record.cam_method} for {record.cam_target_label or record.predicted_label}",
    ]
    if record.heat_in_lungs is not None:
        lines += ["", heat_markdown(record.heat_in_lungs, record.heat_in_chest)]
    warning = gate_warning(record.gate_reasons)
    if warning:
        lines += ["", f"⚠️ **Input check:** {md_escape(warning)}"]
    if record.final_read:
        lines += [
            "",
            f"Final read by the doctor: **{record.final_read}**"
            + (f": {record.final_note}" if record.final_note else ""),
        ]
    return "\n".join(lines)


def update_patient(
    session: Session,
    *,
    doctor: Doctor,
    record_id: Any,
    patient_name: str | None,
    exam_date: str | date | None,
    today: date | None = None,
) -> Record:
    """Correct the patient name and exam date of one of the doctor's records (the prediction is not editable).

    Raises:
        InvalidInputError, RecordNotFoundError.
    """
    rid = parse_record_id(record_id)
    patient = parse_patient(patient_name)
    exam = parse_exam_date(exam_date, today=today)
    record = crud.update_record_patient(session, doctor=doctor, record_id=rid, patient_name=patient, exam_date=exam)
    if record is None:
        raise RecordNotFoundError(f"Record {rid} was not found among your records.")
    logger.info("record %s edited by %s", rid, doctor.username)
    return record


def delete_record(session: Session, store: ImageStore, *, doctor: Doctor, record_id: Any) -> Record:
    """Delete one of the doctor's records, and its image/heatmap files when no other record uses them.

    Raises:
        InvalidInputError, RecordNotFoundError.
    """
    rid = parse_record_id(record_id)
    record = crud.delete_record(session, doctor=doctor, record_id=rid)
    if record is None:
        raise RecordNotFoundError(f"Record {rid} was not found among your records.")
    for sha in {record.image_sha256, record.heatmap_sha256} - {None}:
        if crud.count_blob_references(session, sha256=sha) == 0:
            store.delete(sha)
    logger.info("record %s deleted by %s", rid, doctor.username)
    return record


# ---------------------------------------------------------------------------------------------- CSV export


def records_csv(records: Sequence[Record]) -> str:
    """CSV text of records: patient fields, model output (one probability column per class), input check, model id.

    The `input_check` column says `in scope`, or `OUT OF SCOPE:` and the gate's reasons (`not checked` before the gate).
    """
    labels: list[str] = []
    for r in records:
        labels += [name for name in r.label_names if name not in labels]
    header = [
        "record_id", "saved_utc", "patient", "exam_date", "predicted_label", "input_check", "positive_label",
        "threshold", "threshold_population", "threshold_reason",
        *[f"p_{name}" for name in labels],
        "model_name", "model_version", "architecture", "heatmap_method", "image_sha256", "image_filename",
        "final_read", "final_note", "final_read_utc",
    ]  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for r in records:
        writer.writerow(
            [
                csv_cell(v)
                for v in [
                    r.id,
                    r.created_at.isoformat(timespec="seconds"),
                    r.patient_name,
                    r.exam_date.isoformat(),
                    r.predicted_label,
                    input_check_cell(r.gate_reasons),
                    r.positive_label or "",
                    "" if r.threshold is None else format_threshold(r.threshold),
                    r.population or "",
                    r.population_reason or "",
                    *["" if name not in r.probabilities else f"{r.probabilities[name]:.4f}" for name in labels],
                    r.model_name,
                    r.model_version,
                    r.architecture,
                    r.cam_method,
                    r.image_sha256,
                    r.image_filename,
                    r.final_read or "",
                    r.final_note or "",
                    r.final_read_at.isoformat(timespec="seconds") if r.final_read_at else "",
                ]
            ]  # fmt: skip
        )
    return out.getvalue()


def export_csv(
    session: Session, *, doctor: Doctor, filters: crud.RecordFilter, out_dir: str | Path | None = None
) -> Path:
    """Write the doctor's filtered records (all pages) to a new CSV file and return its path."""
    records = crud.list_records(session, doctor=doctor, filters=filters)
    folder = Path(tempfile.mkdtemp(prefix="xray-export-", dir=out_dir))
    path = folder / f"xray-records-{datetime.now():%Y%m%d-%H%M%S}.csv"
    path.write_text(records_csv(records), encoding="utf-8", newline="")
    logger.info("%s exported %d records", doctor.username, len(records))
    return path
