"""Form fields and uploads: turn what a doctor typed or uploaded into checked values.

Every parser raises an `xray.errors.XrayError` subclass whose message can be shown to the doctor as is.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from xray.errors import FieldTooLongError, ImageReadError, InvalidInputError, UploadTooLargeError, XrayError
from xray.imaging.io import IMAGE_EXTENSIONS, XrayImage, read_image
from xray.records import crud

logger = logging.getLogger(__name__)

MAX_PATIENT_LENGTH = 200
EARLIEST_EXAM_DATE = date(1900, 1, 1)


# ---------------------------------------------------------------------------------------------- fields


def parse_patient(value: str | None) -> str:
    """Validate the patient name or ID.

    Raises:
        InvalidInputError: empty or containing control characters.
        FieldTooLongError: longer than MAX_PATIENT_LENGTH (refused, never cut: a record keeps what was typed).
    """
    text = unicodedata.normalize("NFC", (value or "")).strip()
    if not text:
        raise InvalidInputError("Enter the patient's name or ID.")
    if len(text) > MAX_PATIENT_LENGTH:
        raise FieldTooLongError(
            f"Patient name or ID is {len(text)} characters; at most {MAX_PATIENT_LENGTH} are accepted. "
            "Shorten it (the patient ID alone is enough)."
        )
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise InvalidInputError("Patient name or ID contains control characters (tabs, line breaks, ...).")
    return text


def _parse_date(value: str | date | None, field_name: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    text = str(value).strip()
    if not text:
        return None
    # The date picker sends YYYY-MM-DD; a pasted "YYYY-MM-DD HH:MM:SS" keeps its date part.
    text = text.split(" ")[0].split("T")[0]
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"{field_name} '{value}' is not a date: use YYYY-MM-DD, e.g. 2024-03-31.") from None


#: The Diagnose and Batch forms' patient group (picks the threshold of a model with one per population).
PATIENT_GROUPS = ("Adult", "Child")
PATIENT_GROUP_INFO = (
    "Used when the file has no DICOM PatientAge (which decides) and the model has one threshold per population"
)


def parse_population(value: str | None) -> str:
    """The doctor's patient group ("Adult" / "Child"; empty: adults) as `adults` / `children`.

    Raises:
        InvalidInputError: any other value.
    """
    from xray.inference.population import parse_population as parse

    try:
        return parse(value)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc


def parse_exam_date(value: str | date | None, *, today: date | None = None) -> date:
    """Validate the exam date (required, YYYY-MM-DD, not in the future, not before 1900).

    Raises:
        InvalidInputError: with what was wrong.
    """
    today = today or date.today()
    parsed = _parse_date(value, "Exam date")
    if parsed is None:
        raise InvalidInputError("Enter the exam date (YYYY-MM-DD).")
    if parsed > today:
        raise InvalidInputError(f"Exam date {parsed.isoformat()} is in the future (today is {today.isoformat()}).")
    if parsed < EARLIEST_EXAM_DATE:
        raise InvalidInputError(f"Exam date {parsed.isoformat()} is before {EARLIEST_EXAM_DATE.year}.")
    return parsed


def parse_filters(
    patient: str | None, date_from: str | date | None, date_to: str | date | None, predicted_label: str | None
) -> crud.RecordFilter:
    """Turn the History filter fields into a `RecordFilter` (blank fields mean "any").

    Raises:
        InvalidInputError: a date is malformed or the range is reversed.
    """
    start = _parse_date(date_from, "From date")
    end = _parse_date(date_to, "To date")
    if start and end and start > end:
        raise InvalidInputError(f"The date range is reversed: {start.isoformat()} is after {end.isoformat()}.")
    label = (predicted_label or "").strip()
    return crud.RecordFilter(
        patient=(patient or "").strip()[:MAX_PATIENT_LENGTH] or None,
        date_from=start,
        date_to=end,
        predicted_label=None if label in ("", "Any") else label,
    )


def parse_record_id(value: Any) -> int:
    """A record id from a form field.

    Raises:
        InvalidInputError: empty or not a positive whole number.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidInputError("Choose a record first (click a row in the table or type its ID).")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"Record ID '{value}' is not a number.") from None
    if not math.isfinite(number) or number != int(number) or number < 1:
        raise InvalidInputError(f"Record ID '{value}' is not a positive whole number.")
    return int(number)


def parse_opacity(value: Any) -> float:
    """The heatmap opacity in [0, 1].

    Raises:
        InvalidInputError: not a number in [0, 1].
    """
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"Heatmap opacity '{value}' is not a number between 0 and 1.") from None
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"Heatmap opacity must be between 0 and 1, got {alpha}.")
    return alpha


# ---------------------------------------------------------------------------------------------- uploads


def require_upload(source: str | Path | bytes | None) -> None:
    """Refuse a form without a file (the message names the accepted formats).

    Raises:
        InvalidInputError: nothing uploaded.
    """
    if source is None or (isinstance(source, (str, Path)) and not str(source)):
        raise InvalidInputError(
            f"Upload a chest X-ray first ({', '.join(sorted(e.lstrip('.').upper() for e in IMAGE_EXTENSIONS))})."
        )


def read_upload(source: str | Path | bytes | None, *, max_bytes: int) -> bytes:
    """The uploaded file's bytes, size-checked.

    Raises:
        InvalidInputError: nothing uploaded.
        UploadTooLargeError: larger than `max_bytes`.
        ImageReadError: the file cannot be read.
    """
    require_upload(source)
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ImageReadError(f"The uploaded file could not be read ({exc.strerror}); upload it again.") from exc
        if size > max_bytes:
            raise UploadTooLargeError(too_large(size, max_bytes))
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise UploadTooLargeError(too_large(len(data), max_bytes))
    return data


def too_large(size: int, max_bytes: int) -> str:
    """`The file is 7.3 MiB; the limit is 5 MiB (XRAY_MAX_UPLOAD_MB).`."""
    return f"The file is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB (XRAY_MAX_UPLOAD_MB)."


def load_image(data: bytes, *, filename: str | None, max_pixels: int) -> XrayImage:
    """Decode uploaded bytes (PNG/JPEG/DICOM/...) into model-ready pixels; errors are `ImageReadError`s."""
    try:
        return read_image(data, filename=filename, max_pixels=max_pixels)
    except XrayError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file to the doctor
        logger.info("unreadable upload %s: %s", filename, exc)
        raise ImageReadError(
            f"'{Path(filename or 'upload').name}' could not be read as a chest X-ray image. "
            f"Upload a PNG, JPEG or DICOM file ({exc.__class__.__name__})."
        ) from exc


@dataclass
class Prefill:
    """Patient fields read from DICOM tags (None: the file did not say)."""

    patient: str | None = None
    exam_date: date | None = None


_DICOM_DATE_KEYS = ("StudyDate", "AcquisitionDate", "SeriesDate", "ContentDate")


def prefill_from_metadata(metadata: dict[str, Any]) -> Prefill:
    """Patient name/ID and exam date from DICOM tags (`XrayImage.metadata`), when present and valid."""
    name = str(metadata.get("PatientName") or "").replace("^", " ").strip()
    name = re.sub(r"\s+", " ", name)
    patient_id = str(metadata.get("PatientID") or "").strip()
    if name and patient_id:
        patient = f"{name} ({patient_id})"
    else:
        patient = name or patient_id or None
    exam: date | None = None
    for key in _DICOM_DATE_KEYS:
        raw = str(metadata.get(key) or "").strip()
        if re.fullmatch(r"\d{8}", raw):
            try:
                exam = date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
                break
            except ValueError:
                continue
        parsed = None
        try:
            parsed = date.fromisoformat(raw[:10]) if raw else None
        except ValueError:
            parsed = None
        if parsed:
            exam = parsed
            break
    # kept whole: a name longer than MAX_PATIENT_LENGTH is refused with its length when the form is sent
    return Prefill(patient=patient, exam_date=exam)
