"""The Batch tab: several files or a zip through the same checks and saving as a single upload, with a CSV.

Zips are read in memory (never extracted by name) under entry-count, size and expansion limits, so that one
request cannot occupy the server.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlmodel import Session

from xray.errors import InvalidInputError, XrayError
from xray.imaging.io import IMAGE_EXTENSIONS
from xray.records.db import Doctor
from xray.records.storage import ImageStore
from xray.trust.operating import describe_threshold
from xray.web import forms
from xray.web.diagnose import diagnose
from xray.web.registry import caveat_warnings, load_registered_model
from xray.web.views import csv_cell, listed_name, listed_output

logger = logging.getLogger(__name__)

#: Most files one batch may hold (uploaded files plus zip members), so one request cannot occupy the server.
MAX_BATCH_FILES = 200
#: Most entries a zip may list, and most bytes its members may expand to in total (zip-bomb guard).
MAX_ZIP_ENTRIES = 1000
MAX_ZIP_TOTAL_BYTES = 1024 * 2**20
BATCH_COLUMNS = ["File", "Record", "Patient", "Model output", "Probabilities", "Input check", "Error"]
#: Share of the table's width per column (the Dataframe's `column_widths`), so that long file names and input-check
#: reasons wrap inside their column instead of pushing the error column off screen.
BATCH_COLUMN_WIDTHS = ["16%", "6%", "14%", "14%", "14%", "20%", "16%"]


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
    gate_reasons: list[str] | None = None  # the input gate's reasons; non-empty: out of scope
    threshold: str = ""  # the threshold it was decided with, and why ("threshold 0.112 for adults (...)")


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
                items.append(BatchItem(name, error=forms.too_large(info.file_size, max_bytes)))
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(max_bytes + 1)  # the header's size may lie: read at most the limit
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                items.append(BatchItem(name, error=f"could not be read from the zip ({exc})"))
                continue
            if len(data) > max_bytes:
                items.append(BatchItem(name, error=forms.too_large(len(data), max_bytes)))
                continue
            items.append(BatchItem(name, data=data))
        return items


NOTHING_UPLOADED = "Upload one or more chest X-rays (PNG, JPEG, DICOM) or a zip of them."


def check_batch_form(
    files: Sequence[str | Path] | None,
    exam_date: str | date | None,
    model_name: str | None,
    allowed_models: Sequence[str],
    *,
    today: date | None = None,
) -> None:
    """The Batch form's checks that need neither the files' content nor the model (cheap, run first).

    Raises:
        InvalidInputError: nothing uploaded, a bad or future exam date, an unknown model.
    """
    if not files:
        raise InvalidInputError(NOTHING_UPLOADED)
    forms.parse_exam_date(exam_date, today=today)
    if model_name not in allowed_models:
        load_registered_model(model_name, allowed_models)  # its message says what to choose


def batch_items(files: Sequence[str | Path] | None, *, max_bytes: int) -> list[BatchItem]:
    """The files of a batch upload, zips expanded in memory; each oversized or unreadable file gets its error.

    Raises:
        InvalidInputError: nothing uploaded.
    """
    if not files:
        raise InvalidInputError(NOTHING_UPLOADED)
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
            items.append(BatchItem(path.name, data=forms.read_upload(path, max_bytes=max_bytes)))
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
    population: str | None = None,
) -> list[BatchRow]:
    """Diagnose and save every file of a batch for `doctor`, through the same path as a single upload.

    The patient is the file name without its extension unless the DICOM header names one; the exam date is
    the header's when it has one, else `exam_date`. A file that fails gets its error in its row; the others go on.
    `population` (the doctor's "Adult" / "Child") picks the threshold of a model with one per population for the
    files without a DICOM PatientAge.

    Raises:
        InvalidInputError: nothing uploaded, a bad exam date or model (checked before any file is processed).
    """
    from xray.analysis.pipeline import input_check_text

    fallback_date = forms.parse_exam_date(exam_date, today=today)
    forms.parse_population(population)  # a bad choice fails the batch, not each row
    load_registered_model(model_name, allowed_models)  # a bad model fails the batch, not each row
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
            image = forms.load_image(item.data, filename=item.name, max_pixels=max_pixels)
            prefill = forms.prefill_from_metadata(image.metadata)
            # never cut: a name over forms.MAX_PATIENT_LENGTH fails this row with its length (parse_patient)
            row.patient = prefill.patient or PurePosixPath(item.name).stem or "unnamed"
            exam = prefill.exam_date if prefill.exam_date and prefill.exam_date <= (today or date.today()) else None
            result = diagnose(
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
                population=population,
            )
        except XrayError as exc:
            row.error = str(exc)
            continue
        row.record_id = result.record.id
        row.label = result.label
        row.probabilities = dict(result.probabilities)
        row.gate = input_check_text(result.gate, result.gate_note)
        row.gate_reasons = result.record.gate_reasons
        row.caveat = result.model.caveat
        record = result.record
        row.threshold = describe_threshold(record.threshold, record.population, record.population_reason)
    if progress is not None:
        progress(len(items), len(items), "done")
    logger.info("%s ran a batch of %d files (%d failed)", doctor.username, len(rows), sum(bool(r.error) for r in rows))
    return rows


def batch_table(rows: Sequence[BatchRow]) -> list[list[Any]]:
    """Table rows in `BATCH_COLUMNS` order (a long patient name shortened with '…'; the CSV keeps it whole)."""
    return [
        [
            r.file,
            r.record_id,
            listed_name(r.patient),
            listed_output(r.label, r.gate_reasons) if r.label else "",
            ", ".join(f"{k} {v:.3f}" for k, v in r.probabilities.items()),
            r.gate,
            r.error or "",
        ]
        for r in rows
    ]


def batch_caveats(rows: Sequence[BatchRow]) -> list[str]:
    """The model caveats behind a batch's results (one per distinct caveat), as warnings for the doctor."""
    return [w for caveat in dict.fromkeys(r.caveat for r in rows if r.caveat) for w in caveat_warnings(caveat)]


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
    writer.writerow(["file", "record_id", "patient", "predicted_label", *[f"p_{n}" for n in labels], "threshold",
                     "input_check", "error", "model_caveat"])  # fmt: skip
    for r in rows:
        values = [
            r.file, r.record_id or "", r.patient, r.label or "",
            *[f"{r.probabilities[n]:.4f}" if n in r.probabilities else "" for n in labels],
            r.threshold, r.gate, r.error or "", r.caveat or "",
        ]  # fmt: skip
        writer.writerow([csv_cell(v) for v in values])
    folder = Path(tempfile.mkdtemp(prefix="xray-batch-", dir=out_dir))
    path = folder / f"xray-batch-{datetime.now():%Y%m%d-%H%M%S}.csv"
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    return path
