"""The doctor's review of a saved record: their final read, their agreement with the model, the PDF report.

The model's stored output is never changed here: the final read is kept in its own fields. Like every module
that touches records, each function takes the signed-in `Doctor` and only sees that doctor's rows.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session

from xray.errors import InvalidInputError, RecordNotFoundError
from xray.records import crud
from xray.records.db import Doctor, Record
from xray.records.storage import ImageStore
from xray.web.forms import parse_record_id
from xray.web.history import open_record, owned_record
from xray.web.registry import caveat_warnings, describe_model
from xray.web.views import gate_warning, md_escape

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- final read

#: Radio value meaning "the model is right": stored as the model's predicted class.
CONFIRM = "confirm"
CLEAR = "clear"


def final_read_choices(record: Record | None, all_labels: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(shown, value) pairs for the final-read radio: confirm the model, each class, or clear the read."""
    confirm = f"Confirm the model ({record.predicted_label})" if record is not None else "Confirm the model"
    labels = list(record.label_names) if record is not None else list(all_labels)
    return [(confirm, CONFIRM), *[(label, label) for label in labels], ("Clear my read", CLEAR)]


def final_read_value(record: Record) -> str | None:
    """The radio value of the record's stored final read: `CONFIRM` when it is the model's class, None when unread."""
    if record.final_read is None:
        return None
    return CONFIRM if record.final_read == record.predicted_label else record.final_read


def set_final_read(
    session: Session, *, doctor: Doctor, record_id: Any, final_read: str | None, final_note: str | None = None
) -> Record:
    """Record the doctor's own final read (or clear it with an empty value); the model output is unchanged.

    Raises:
        InvalidInputError, RecordNotFoundError.
    """
    rid = parse_record_id(record_id)
    read = (final_read or "").strip() or None
    note = (final_note or "").strip() or None
    if read is not None and len(read) > 100:
        raise InvalidInputError("Final read is too long: at most 100 characters.")
    if note is not None and len(note) > 2000:
        raise InvalidInputError("Note is too long: at most 2000 characters.")
    record = crud.set_final_read(session, doctor=doctor, record_id=rid, final_read=read, final_note=note)
    if record is None:
        raise RecordNotFoundError(f"Record {rid} was not found among your records.")
    return record


def save_final_read(
    session: Session, *, doctor: Doctor, record_id: Any, choice: str | None, note: str | None = None
) -> Record:
    """Store the doctor's final read on one of their records (the model's output is unchanged).

    Args:
        session: database session.
        doctor: the signed-in doctor (only their records can be read).
        record_id: the record.
        choice: `CONFIRM` (the model's class), one of the record's classes, or `CLEAR`.
        note: short free text.

    Raises:
        InvalidInputError: no choice, or a class the record's model does not have.
        RecordNotFoundError: not one of the doctor's records.
    """
    record = owned_record(session, doctor=doctor, record_id=record_id)
    value = (choice or "").strip()
    if not value:
        raise InvalidInputError("Choose your final read: confirm the model or pick a class.")
    if value == CLEAR:
        return set_final_read(session, doctor=doctor, record_id=record.id, final_read=None, final_note=None)
    if value == CONFIRM:
        value = record.predicted_label
    if value not in record.label_names:
        raise InvalidInputError(
            f"'{value}' is not a class of this record's model; choose one of {', '.join(record.label_names)}."
        )
    return set_final_read(session, doctor=doctor, record_id=record.id, final_read=value, final_note=note)


# ---------------------------------------------------------------------------------------------- agreement


@dataclass
class Agreement:
    """How often the doctor's final reads agreed with the model, on in-scope images.

    Reads on images the input gate called out of scope are counted apart: the model's output on them is unreliable
    by the gate's own verdict, so they say nothing about how the model does on the X-rays it was made for.
    """

    total: int
    agreed: int
    disagreements: list[Record] = field(default_factory=list)
    out_of_scope_total: int = 0
    out_of_scope_agreed: int = 0

    @property
    def rate(self) -> float | None:
        """Share of final reads equal to the model's output (None without any read)."""
        return self.agreed / self.total if self.total else None


def agreement(session: Session, *, doctor: Doctor) -> Agreement:
    """The signed-in doctor's agreement with the model over all their final reads."""
    every = crud.list_final_reads(session, doctor=doctor)
    reads = [r for r in every if not r.gate_reasons]
    apart = [r for r in every if r.gate_reasons]
    disagreements = [r for r in reads if r.final_read != r.predicted_label]
    return Agreement(
        total=len(reads),
        agreed=len(reads) - len(disagreements),
        disagreements=disagreements,
        out_of_scope_total=len(apart),
        out_of_scope_agreed=sum(r.final_read == r.predicted_label for r in apart),
    )


def agreement_markdown(result: Agreement, *, max_listed: int = 20) -> str:
    """`Agreement with the model: 17/20 (85%)`, the disagreements (newest first) and the out-of-scope reads apart."""
    apart = ""
    if result.out_of_scope_total:
        noun = "read" if result.out_of_scope_total == 1 else "reads"
        apart = (
            f"⚠️ {result.out_of_scope_total} final {noun} on out-of-scope images counted apart (agreed "
            f"{result.out_of_scope_agreed}/{result.out_of_scope_total}): the model's output on them is unreliable."
        )
    if not result.total:
        if apart:
            return "\n\n".join(["Agreement with the model: no final reads on in-scope images yet.", apart])
        return "Agreement with the model: no final reads yet (open a record and save your read)."
    lines = [f"**Agreement with the model: {result.agreed}/{result.total} ({result.rate:.0%})**"]
    if apart:
        lines += ["", apart]
    if result.disagreements:
        lines += ["", "Disagreements:"]
        for r in result.disagreements[:max_listed]:
            note = f": {md_escape(r.final_note)}" if r.final_note else ""
            lines.append(
                f"- record {r.id}, {md_escape(r.patient_name)} ({r.exam_date.isoformat()}): model "
                f"{r.predicted_label}, your read **{r.final_read}**{note}"
            )
        if len(result.disagreements) > max_listed:
            lines.append(f"- … and {len(result.disagreements) - max_listed} more (Export CSV lists them all)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


def record_report(
    session: Session,
    store: ImageStore,
    *,
    doctor: Doctor,
    record_id: Any,
    max_pixels: int,
    out_dir: str | Path | None = None,
) -> Path:
    """Write the one-page PDF report of one of the doctor's records into a new temporary folder.

    Raises:
        RecordNotFoundError, ImageReadError.
    """
    from xray.trust.lungs import heat_warning
    from xray.trust.report import build_report

    detail = open_record(session, store, doctor=doctor, record_id=record_id, max_pixels=max_pixels)
    record = detail.record
    warnings = []
    if record.heat_in_lungs is not None and record.heat_in_chest is not None:
        heat_text = heat_warning(record.heat_in_lungs, record.heat_in_chest)
        if heat_text:
            warnings.append(heat_text)
    # the model's caveat as its folder states it now (describe_model reads config.json, never raises)
    warnings += caveat_warnings(describe_model(record.model_name).caveat)
    final = record.final_read
    if final:
        final = f"{final} ({'agrees' if final == record.predicted_label else 'disagrees'} with the model)"
    data = build_report(
        image=detail.view.pixels,
        overlay=detail.view.overlay(0.4) if record.heatmap_sha256 else None,
        probabilities=record.probabilities,
        predicted_label=record.predicted_label,
        threshold=record.threshold,
        positive_label=record.positive_label,
        model_name=record.model_name,
        model_version=record.model_version,
        doctor=f"{doctor.display_name} ({doctor.username})",
        patient_name=record.patient_name,
        exam_date=record.exam_date,
        final_read=final,
        final_note=record.final_note,
        record_id=record.id,
        created_at=record.created_at,
        target_label=detail.view.target_label,
        warnings=warnings,
        scope_warning=gate_warning(record.gate_reasons),
        population=record.population,
        population_reason=record.population_reason,
    )
    folder = Path(tempfile.mkdtemp(prefix="xray-report-", dir=out_dir))
    path = folder / f"xray-report-record-{record.id}.pdf"
    path.write_bytes(data)
    logger.info("%s made the PDF report of record %s", doctor.username, record.id)
    return path
