"""Trust features of the web app, without the web: operating point, the doctor's final read, PDF report, batch.

Like `xray.web.service`, every function that touches records takes the signed-in `Doctor` and goes through
`xray.records.crud`, whose queries only see that doctor's rows. The model's stored output is never changed here: the
operating point recomputes a verdict from stored probabilities, and the final read is kept in its own fields.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlmodel import Session

from xray.errors import InvalidInputError, OperatingPointError, XrayError
from xray.imaging.io import IMAGE_EXTENSIONS
from xray.records import crud
from xray.records.db import Doctor, Record
from xray.records.storage import ImageStore
from xray.web import service

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- operating point


@dataclass
class OperatingDefaults:
    """Where the threshold slider and prevalence field start for a model, or why they are not offered."""

    available: bool
    threshold: float = 0.5
    prevalence: float = 0.5
    positive_label: str | None = None
    reason: str | None = None


def operating_defaults(info: service.ModelInfo | None) -> OperatingDefaults:
    """The model's threshold and validation prevalence; unavailable for non-binary models or without an ROC."""
    from xray.trust.operating import roc_from_metrics, validation_prevalence

    if info is None or info.error or info.threshold is None or not info.positive_label:
        return OperatingDefaults(False, reason="The operating point applies to two-class models only.")
    try:
        roc_from_metrics(info.metrics)
    except OperatingPointError as exc:
        return OperatingDefaults(False, threshold=info.threshold, positive_label=info.positive_label, reason=str(exc))
    prevalence = validation_prevalence(info.metrics, info.positive_label)
    return OperatingDefaults(
        True,
        threshold=info.threshold,
        prevalence=round(prevalence, 3) if prevalence is not None else 0.5,
        positive_label=info.positive_label,
    )


def verdict(record: Record, threshold: float) -> str | None:
    """The class a binary record falls in under `threshold` (from its stored probabilities), else None."""
    if not record.positive_label or len(record.label_names) != 2:
        return None
    p = float(record.probabilities.get(record.positive_label, math.nan))
    negative = next(name for name in record.label_names if name != record.positive_label)
    return record.positive_label if p >= threshold else negative


def operating_markdown(
    info: service.ModelInfo | None, threshold: Any, prevalence: Any, record: Record | None = None
) -> str:
    """Expected sensitivity, specificity, PPV and NPV at `threshold`, and the verdict of `record` under it.

    Raises:
        OperatingPointError: threshold or prevalence outside 0..1.
    """
    from xray.trust.operating import describe, operating_point, roc_from_metrics

    defaults = operating_defaults(info)
    if not defaults.available or info is None:
        return f"_{defaults.reason}_"
    point = operating_point(roc_from_metrics(info.metrics), threshold, prevalence)
    lines = [describe(point, defaults.positive_label or "the condition")]
    if record is not None and record.model_name == info.name:
        label = verdict(record, point.threshold)
        if label is not None:
            p = record.probabilities.get(defaults.positive_label or "", math.nan)
            changed = (
                "" if label == record.predicted_label else f" (the model's own threshold gave {record.predicted_label})"
            )
            lines += [
                "",
                f"**Under this threshold the current result is {label}**: P({defaults.positive_label}) = {p:.3f}"
                f"{changed}. The saved record keeps the model's output.",
            ]
    return "\n".join(lines)


def operating_for_record(
    session: Session, *, doctor: Doctor, info: service.ModelInfo | None, threshold: Any, prevalence: Any, record_id: Any
) -> str:
    """`operating_markdown` for one of the doctor's records by id (None or another doctor's id: no verdict)."""
    record = crud.get_record(session, doctor=doctor, record_id=int(record_id)) if record_id else None
    return operating_markdown(info, threshold, prevalence, record)


# ---------------------------------------------------------------------------------------------- final read

#: Radio value meaning "the model is right": stored as the model's predicted class.
CONFIRM = "confirm"
CLEAR = "clear"


def final_read_choices(record: Record | None, all_labels: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(shown, value) pairs for the final-read radio: confirm the model, each class, or clear the read."""
    confirm = f"Confirm the model ({record.predicted_label})" if record is not None else "Confirm the model"
    labels = list(record.label_names) if record is not None else list(all_labels)
    return [(confirm, CONFIRM), *[(label, label) for label in labels], ("Clear my read", CLEAR)]


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
    record = service._owned_record(session, doctor=doctor, record_id=record_id)
    value = (choice or "").strip()
    if not value:
        raise InvalidInputError("Choose your final read: confirm the model or pick a class.")
    if value == CLEAR:
        return service.set_final_read(session, doctor=doctor, record_id=record.id, final_read=None, final_note=None)
    if value == CONFIRM:
        value = record.predicted_label
    if value not in record.label_names:
        raise InvalidInputError(
            f"'{value}' is not a class of this record's model; choose one of {', '.join(record.label_names)}."
        )
    return service.set_final_read(session, doctor=doctor, record_id=record.id, final_read=value, final_note=note)


@dataclass
class Agreement:
    """How often the doctor's final reads agreed with the model."""

    total: int
    agreed: int
    disagreements: list[Record] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        """Share of final reads equal to the model's output (None without any read)."""
        return self.agreed / self.total if self.total else None


def agreement(session: Session, *, doctor: Doctor) -> Agreement:
    """The signed-in doctor's agreement with the model over all their final reads."""
    reads = crud.list_final_reads(session, doctor=doctor)
    disagreements = [r for r in reads if r.final_read != r.predicted_label]
    return Agreement(total=len(reads), agreed=len(reads) - len(disagreements), disagreements=disagreements)


def agreement_markdown(result: Agreement, *, max_listed: int = 20) -> str:
    """`Agreement with the model: 17/20 (85%)` and the disagreements (newest first)."""
    if not result.total:
        return "Agreement with the model: no final reads yet (open a record and save your read)."
    lines = [f"**Agreement with the model: {result.agreed}/{result.total} ({result.rate:.0%})**"]
    if result.disagreements:
        lines += ["", "Disagreements:"]
        for r in result.disagreements[:max_listed]:
            note = f": {service.md_escape(r.final_note)}" if r.final_note else ""
            lines.append(
                f"- record {r.id}, {service.md_escape(r.patient_name)} ({r.exam_date.isoformat()}): model "
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

    detail = service.open_record(session, store, doctor=doctor, record_id=record_id, max_pixels=max_pixels)
    record = detail.record
    warnings = []
    gate_text = service.gate_warning(record.gate_reasons)
    if gate_text:
        warnings.append(gate_text)
    if record.heat_in_lungs is not None and record.heat_in_chest is not None:
        heat_text = heat_warning(record.heat_in_lungs, record.heat_in_chest)
        if heat_text:
            warnings.append(heat_text)
    # the model's caveat as its folder states it now (describe_model reads config.json, never raises)
    warnings += service.caveat_warnings(service.describe_model(record.model_name).caveat)
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
    )
    folder = Path(tempfile.mkdtemp(prefix="xray-report-", dir=out_dir))
    path = folder / f"xray-report-record-{record.id}.pdf"
    path.write_bytes(data)
    logger.info("%s made the PDF report of record %s", doctor.username, record.id)
    return path


# ---------------------------------------------------------------------------------------------- batch

#: Most files one batch may hold (uploaded files plus zip members), so one request cannot occupy the server.
MAX_BATCH_FILES = 200
#: Most entries a zip may list, and most bytes its members may expand to in total (zip-bomb guard).
MAX_ZIP_ENTRIES = 1000
MAX_ZIP_TOTAL_BYTES = 1024 * 2**20
BATCH_COLUMNS = ["File", "Record", "Patient", "Model output", "Probabilities", "Input check", "Error"]


@dataclass
class BatchItem:
    """One file of a batch: its display name and bytes, or the reason it could not be taken."""

    name: str
    data: bytes | None = None
    error: str | None = None


@dataclass
class BatchRow:
    """The outcome for one file of a batch."""

    file: str
    record_id: int | None = None
    patient: str = ""
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    gate: str = ""
    error: str | None = None
    caveat: str | None = None


def _zip_items(path: Path, *, max_bytes: int, budget: int) -> list[BatchItem]:
    """The image members of a zip, read in memory (never extracted by name), with size and count limits."""
    label = path.name
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        return [BatchItem(label, error=f"not a readable zip file ({exc})")]
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            return [BatchItem(label, error=f"the zip lists {len(infos)} entries; at most {MAX_ZIP_ENTRIES}")]
        members = [i for i in infos if not i.is_dir() and not PurePosixPath(i.filename).name.startswith(".")]
        declared = sum(i.file_size for i in members)
        if declared > MAX_ZIP_TOTAL_BYTES:
            return [BatchItem(label, error=f"the zip expands to {declared / 2**20:.0f} MiB; the limit is "
                                           f"{MAX_ZIP_TOTAL_BYTES / 2**20:.0f} MiB")]  # fmt: skip
        items = []
        for info in members:
            # The member name is only shown, never used as a path.
            name = f"{label}/{PurePosixPath(info.filename.replace(chr(92), '/')).name}"[:255]
            suffix = PurePosixPath(info.filename).suffix.lower()
            if suffix not in IMAGE_EXTENSIONS:
                items.append(BatchItem(name, error="not an image or DICOM file (skipped)"))
                continue
            if len(items) >= budget:
                items.append(BatchItem(name, error=f"more than {MAX_BATCH_FILES} files in this batch (skipped)"))
                continue
            if info.file_size > max_bytes:
                items.append(BatchItem(name, error=service._too_large(info.file_size, max_bytes)))
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(max_bytes + 1)  # the header's size may lie: read at most the limit
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                items.append(BatchItem(name, error=f"could not be read from the zip ({exc})"))
                continue
            if len(data) > max_bytes:
                items.append(BatchItem(name, error=service._too_large(len(data), max_bytes)))
                continue
            items.append(BatchItem(name, data=data))
        return items


def batch_items(files: Sequence[str | Path] | None, *, max_bytes: int) -> list[BatchItem]:
    """The files of a batch upload, zips expanded in memory; each oversized or unreadable file gets its error.

    Raises:
        InvalidInputError: nothing uploaded.
    """
    if not files:
        raise InvalidInputError("Upload one or more chest X-rays (PNG, JPEG, DICOM) or a zip of them.")
    items: list[BatchItem] = []
    for raw in files:
        path = Path(raw)
        taken = sum(1 for i in items if i.data is not None)
        if path.suffix.lower() == ".zip":
            items += _zip_items(path, max_bytes=max_bytes, budget=MAX_BATCH_FILES - taken)
            continue
        if taken >= MAX_BATCH_FILES:
            items.append(BatchItem(path.name, error=f"more than {MAX_BATCH_FILES} files in this batch (skipped)"))
            continue
        try:
            items.append(BatchItem(path.name, data=service.read_upload(path, max_bytes=max_bytes)))
        except XrayError as exc:
            items.append(BatchItem(path.name, error=str(exc)))
    return items


def diagnose_batch(
    session: Session,
    store: ImageStore,
    *,
    doctor: Doctor,
    files: Sequence[str | Path] | None,
    exam_date: str | date | None,
    model_name: str | None,
    allowed_models: Sequence[str],
    method: str | None = "gradcam",
    max_upload_bytes: int,
    max_pixels: int,
    progress: Callable[[int, int, str], None] | None = None,
    today: date | None = None,
) -> list[BatchRow]:
    """Diagnose and save every file of a batch for `doctor`, through the same path as a single upload.

    The patient is the file name without its extension unless the DICOM header names one; the exam date is
    the header's when it has one, else `exam_date`. A file that fails gets its error in its row; the others go on.

    Raises:
        InvalidInputError: nothing uploaded, a bad exam date or model (checked before any file is processed).
    """
    from xray.analysis.pipeline import input_check_text

    fallback_date = service.parse_exam_date(exam_date, today=today)
    service.load_registered_model(model_name, allowed_models)  # a bad model fails the batch, not each row
    items = batch_items(files, max_bytes=max_upload_bytes)
    rows = []
    for number, item in enumerate(items, 1):
        if progress is not None:
            progress(number - 1, len(items), item.name)
        row = BatchRow(file=item.name, error=item.error)
        rows.append(row)
        if item.data is None:
            continue
        try:
            image = service.load_image(item.data, filename=item.name, max_pixels=max_pixels)
            prefill = service.prefill_from_metadata(image.metadata)
            row.patient = prefill.patient or (PurePosixPath(item.name).stem[: service.MAX_PATIENT_LENGTH] or "unnamed")
            exam = prefill.exam_date if prefill.exam_date and prefill.exam_date <= (today or date.today()) else None
            result = service.diagnose(
                session,
                store,
                doctor=doctor,
                source=item.data,
                filename=PurePosixPath(item.name).name,
                patient_name=row.patient,
                exam_date=exam or fallback_date,
                model_name=model_name,
                allowed_models=allowed_models,
                method=method,
                max_upload_bytes=max_upload_bytes,
                max_pixels=max_pixels,
                today=today,
                image=image,
            )
        except XrayError as exc:
            row.error = str(exc)
            continue
        row.record_id = result.record.id
        row.label = result.label
        row.probabilities = dict(result.probabilities)
        row.gate = input_check_text(result.gate, result.gate_note)
        row.caveat = result.model.caveat
    if progress is not None:
        progress(len(items), len(items), "done")
    logger.info("%s ran a batch of %d files (%d failed)", doctor.username, len(rows), sum(bool(r.error) for r in rows))
    return rows


def batch_table(rows: Sequence[BatchRow]) -> list[list[Any]]:
    """Table rows in `BATCH_COLUMNS` order."""
    return [
        [
            r.file,
            r.record_id,
            r.patient,
            r.label or "",
            ", ".join(f"{k} {v:.3f}" for k, v in r.probabilities.items()),
            r.gate,
            r.error or "",
        ]
        for r in rows
    ]


def batch_caveats(rows: Sequence[BatchRow]) -> list[str]:
    """The model caveats behind a batch's results (one per distinct caveat), as warnings for the doctor."""
    return [w for caveat in dict.fromkeys(r.caveat for r in rows if r.caveat) for w in service.caveat_warnings(caveat)]


def batch_csv(rows: Sequence[BatchRow], *, out_dir: str | Path | None = None) -> Path:
    """Write the batch results (one probability column per class) to a new CSV file and return its path.

    The last column, `model_caveat`, repeats the model's caveat (config.json) on each of its rows, so that the file
    read on its own says what the app says with every prediction of that model.
    """
    labels: list[str] = []
    for r in rows:
        labels += [name for name in r.probabilities if name not in labels]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file", "record_id", "patient", "predicted_label", *[f"p_{n}" for n in labels], "input_check",
                     "error", "model_caveat"])  # fmt: skip
    for r in rows:
        values = [
            r.file, r.record_id or "", r.patient, r.label or "",
            *[f"{r.probabilities[n]:.4f}" if n in r.probabilities else "" for n in labels],
            r.gate, r.error or "", r.caveat or "",
        ]  # fmt: skip
        writer.writerow([service._csv_text(v) for v in values])
    folder = Path(tempfile.mkdtemp(prefix="xray-batch-", dir=out_dir))
    path = folder / f"xray-batch-{datetime.now():%Y%m%d-%H%M%S}.csv"
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    return path
