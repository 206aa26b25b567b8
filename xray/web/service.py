"""What the web app does, without the web: diagnose and save, history, edits, CSV export, model comparison.

`app.py` turns form values into calls to these functions and their results into components. Each function
that touches records takes the signed-in `Doctor` (resolved from the server-side session by `require_doctor`)
and relies on `xray.records.crud`, whose queries only ever see that doctor's rows. Bad input raises an
`xray.errors.XrayError` subclass whose message can be shown to the doctor as is.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session

from xray.config import PROJECT_ROOT, Settings
from xray.errors import (
    ImageReadError,
    InvalidInputError,
    NotSignedInError,
    RecordNotFoundError,
    UploadTooLargeError,
    XrayError,
)
from xray.imaging.io import IMAGE_EXTENSIONS, XrayImage, read_image
from xray.records import auth, crud
from xray.records.db import Doctor, Record, init_db, make_engine
from xray.records.storage import ImageStore

logger = logging.getLogger(__name__)

CAM_METHODS = ("gradcam", "gradcam++", "hirescam")
NOTICE = (
    "Decision support only, not a diagnosis. This research model has not been cleared as a medical device; "
    "the reading physician makes the diagnosis."
)
#: Longest side of images sent to the browser (the model always sees the full image).
DISPLAY_MAX_SIDE = 1024
PAGE_SIZE = 20
MAX_PATIENT_LENGTH = 200
EARLIEST_EXAM_DATE = date(1900, 1, 1)
HISTORY_COLUMNS = ["ID", "Saved (UTC)", "Patient", "Exam date", "Model output", "Probability", "Model"]
EXAMPLES_DIR = PROJECT_ROOT / "examples"


# ---------------------------------------------------------------------------------------------- start-up


def open_database(settings: Settings, *, hint_first_account: bool = True) -> Engine:
    """Create the data directory, connect to the database, create missing tables and bootstrap the admin.

    Logs how to create the first account when there is none (unless `hint_first_account` is False).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    with Session(engine) as session:
        if auth.bootstrap_admin(session, username=settings.admin_username, password=settings.admin_password):
            logger.info("admin account '%s' is ready (from XRAY_ADMIN_USERNAME/PASSWORD)", settings.admin_username)
        if hint_first_account and crud.count_doctors(session, active_only=True) == 0:
            logger.warning(
                "No doctor account exists yet, so nobody can sign in. Create one with: python -m xray users add NAME"
            )
    return engine


def image_store(settings: Settings) -> ImageStore:
    """The file store for uploads and heatmaps, inside the data directory."""
    return ImageStore(settings.data_dir / "images")


def require_doctor(session: Session, username: str | None) -> Doctor:
    """The enabled account of the signed-in user.

    Raises:
        NotSignedInError: no user on the request, or the account was disabled since signing in.
    """
    doctor = auth.active_doctor(session, username)
    if doctor is None:
        raise NotSignedInError("Please sign in: this action needs a doctor account that is enabled.")
    return doctor


# ---------------------------------------------------------------------------------------------- models


def registered_models(settings: Settings) -> list[str]:
    """Bundled models plus `settings.extra_models`, the default model first, without duplicates."""
    from xray.inference.models import CONFIG_NAME

    root = settings.models_dir
    bundled = sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file()) if root.is_dir() else []
    names = bundled + [n.strip() for n in settings.extra_models.split(",") if n.strip()]
    if settings.default_model in names:
        names.remove(settings.default_model)
        names.insert(0, settings.default_model)
    return list(dict.fromkeys(names))


@dataclass
class ModelInfo:
    """What the model selector and the Compare tab show about a model, read without loading its weights."""

    name: str
    architecture: str = ""
    label_names: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    threshold: float | None = None
    positive_label: str | None = None
    caveat: str | None = None

    @property
    def headline(self) -> dict[str, float]:
        """The test metrics worth a glance (see `headline_metrics`)."""
        return headline_metrics(self.metrics)

    @property
    def choice_label(self) -> str:
        """`name · architecture · test AUC 0.97, sens 0.95, spec 0.88` for a dropdown."""
        if self.error:
            return f"{self.name} (unavailable)"
        parts = [self.name, self.architecture]
        summary = format_headline(self.headline)
        parts.append(f"test {summary}" if summary else "no test metrics")
        return " · ".join(p for p in parts if p)


_HEADLINE_KEYS = (("auc", "AUC"), ("accuracy", "acc"), ("sensitivity", "sens"), ("specificity", "spec"))


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """AUC, accuracy, sensitivity and specificity on the test set, from a metrics.json.

    Reads `test.at_threshold.value` (the operating threshold), else `test.at_default.value`, else flat keys
    under `test` or at the top level; missing or non-numeric values are left out.
    """
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else metrics
    block: dict[str, Any] = test
    for key in ("at_threshold", "at_default"):
        candidate = test.get(key)
        if isinstance(candidate, dict) and isinstance(candidate.get("value"), dict):
            block = candidate["value"]
            break
    out: dict[str, float] = {}
    for key, _short in _HEADLINE_KEYS:
        value = block.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def format_headline(headline: dict[str, float]) -> str:
    """`AUC 0.968, sens 0.932, spec 0.901`."""
    return ", ".join(f"{short} {headline[key]:.3f}" for key, short in _HEADLINE_KEYS if key in headline)


def describe_model(name: str) -> ModelInfo:
    """Read a model's config.json and metrics.json (not its weights); errors end up in `.error`."""
    import json

    from xray.inference.models import METRICS_NAME, config_caveat, read_config, resolve_model_dir

    try:
        path, _revision = resolve_model_dir(name)
        config = read_config(path)
        metrics_path = path / METRICS_NAME
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    except (XrayError, OSError, ValueError) as exc:
        return ModelInfo(name=name, error=str(exc))
    labels = list(config["label_names"])
    binary = len(labels) == 2
    # The same defaults as xray.inference.models.load_model, so the slider starts where the model decides.
    return ModelInfo(
        name=name,
        architecture=str(config["architecture"]),
        label_names=labels,
        metrics=metrics,
        threshold=float(config.get("threshold", 0.5)) if binary else None,
        positive_label=(config.get("positive_label") or labels[1]) if binary else None,
        caveat=config_caveat(config),
    )


def caveat_warnings(caveat: str | None) -> list[str]:
    """The warning a model's `caveat` (config.json) adds to each of its predictions, e.g. a measured confound."""
    return [f"About this model: {caveat}"] if caveat else []


def load_registered_model(name: str | None, allowed: Sequence[str]) -> Any:
    """Load one of the app's models by name (never an arbitrary name sent by a client).

    Raises:
        InvalidInputError: no model chosen, or not one of `allowed`.
        ModelNotFoundError / ModelConfigError: the model cannot be loaded.
    """
    from xray.inference.models import load_model

    if not allowed:
        raise InvalidInputError(
            "No model is installed. Train one with train.py (see README) or set XRAY_EXTRA_MODELS to "
            "'local-dir:PATH' or 'hf-hub:org/repo'."
        )
    if not name:
        raise InvalidInputError("Choose a model.")
    if name not in allowed:
        raise InvalidInputError(f"Unknown model '{name}'. Choose one of: {', '.join(allowed)}.")
    return load_model(name)


def strip_front_matter(card: str) -> str:
    """A model card without its YAML metadata block (the part between the leading `---` lines)."""
    if card.startswith("---"):
        end = card.find("\n---", 3)
        if end != -1:
            return card[end + 4 :].lstrip("\n")
    return card


# ---------------------------------------------------------------------------------------------- form fields


def parse_patient(value: str | None) -> str:
    """Validate the patient name or ID.

    Raises:
        InvalidInputError: empty, longer than MAX_PATIENT_LENGTH, or containing control characters.
    """
    text = unicodedata.normalize("NFC", (value or "")).strip()
    if not text:
        raise InvalidInputError("Enter the patient's name or ID.")
    if len(text) > MAX_PATIENT_LENGTH:
        raise InvalidInputError(f"Patient name or ID is too long: at most {MAX_PATIENT_LENGTH} characters.")
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


def read_upload(source: str | Path | bytes | None, *, max_bytes: int) -> bytes:
    """The uploaded file's bytes, size-checked.

    Raises:
        InvalidInputError: nothing uploaded.
        UploadTooLargeError: larger than `max_bytes`.
        ImageReadError: the file cannot be read.
    """
    if source is None or (isinstance(source, (str, Path)) and not str(source)):
        raise InvalidInputError(
            f"Upload a chest X-ray first ({', '.join(sorted(e.lstrip('.').upper() for e in IMAGE_EXTENSIONS))})."
        )
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ImageReadError(f"The uploaded file could not be read ({exc.strerror}); upload it again.") from exc
        if size > max_bytes:
            raise UploadTooLargeError(_too_large(size, max_bytes))
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise UploadTooLargeError(_too_large(len(data), max_bytes))
    return data


def _too_large(size: int, max_bytes: int) -> str:
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
    if patient:
        patient = patient[:MAX_PATIENT_LENGTH]
    return Prefill(patient=patient, exam_date=exam)


# ---------------------------------------------------------------------------------------------- views


def display_size(width: int, height: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    """(width, height) scaled down so the long side is at most `max_side`."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def shrink(pixels: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """An RGB/gray image resized (area-averaged) so its long side is at most `max_side`."""
    import cv2

    height, width = pixels.shape[:2]
    new_w, new_h = display_size(width, height, max_side)
    if (new_w, new_h) == (width, height):
        return pixels
    return cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_AREA)


@dataclass
class HeatmapView:
    """An image and a heatmap at display size: everything the opacity slider needs, kept per browser session."""

    pixels: np.ndarray
    heatmap: np.ndarray
    target_label: str
    method: str
    record_id: int | None = None

    def overlay(self, alpha: float) -> np.ndarray:
        """The heatmap blended onto the image with opacity `alpha`."""
        from xray.inference.explain import overlay_heatmap

        return overlay_heatmap(self.pixels, self.heatmap, parse_opacity(alpha))


def make_view(
    pixels: np.ndarray, heatmap: np.ndarray, *, target_label: str, method: str, record_id: int | None
) -> HeatmapView:
    """Shrink an image and its heatmap to display size."""
    import cv2

    small = shrink(pixels)
    heat = cv2.resize(heatmap.astype(np.float32), (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)
    return HeatmapView(
        pixels=small, heatmap=np.clip(heat, 0, 1), target_label=target_label, method=method, record_id=record_id
    )


# ---------------------------------------------------------------------------------------------- diagnose


@dataclass
class Diagnosis:
    """A saved prediction with everything the Diagnose tab shows."""

    record: Record
    model: Any  # LoadedModel
    probabilities: dict[str, float]
    label: str
    view: HeatmapView
    latency_ms: float
    warnings: list[str] = field(default_factory=list)
    gate: Any = None  # xray.trust.gate.GateResult
    gate_note: str | None = None
    heatmap_check: Any = None  # xray.trust.lungs.HeatmapCheck

    @property
    def in_scope(self) -> bool:
        """False when the input gate found a reason to doubt the image (show the result only on request)."""
        return self.gate is None or self.gate.in_scope


def check_method(method: str | None) -> str:
    """Validate a CAM method name (default gradcam)."""
    method = method or "gradcam"
    if method not in CAM_METHODS:
        raise InvalidInputError(f"Unknown heatmap method '{method}'; choose one of {', '.join(CAM_METHODS)}.")
    return method


def check_target(loaded: Any, target_label: str | None) -> str | None:
    """Validate the class to explain (None or '' = the predicted class)."""
    if not target_label:
        return None
    if target_label not in loaded.label_names:
        raise InvalidInputError(
            f"Unknown class '{target_label}' for model {loaded.name}; its classes are {', '.join(loaded.label_names)}."
        )
    return target_label


def diagnose(
    session: Session,
    store: ImageStore,
    *,
    doctor: Doctor,
    source: str | Path | bytes | None,
    filename: str | None,
    patient_name: str | None,
    exam_date: str | date | None,
    model_name: str | None,
    allowed_models: Sequence[str],
    target_label: str | None = None,
    method: str | None = "gradcam",
    max_upload_bytes: int,
    max_pixels: int,
    today: date | None = None,
    image: XrayImage | None = None,
) -> Diagnosis:
    """Validate the form, predict with a Grad-CAM heatmap, and save the image and the record for `doctor`.

    Args:
        session: database session.
        store: where the image and heatmap files go.
        doctor: the signed-in doctor (the record's owner).
        source: the uploaded file (path or bytes).
        filename: its original name (format hint; stored for the doctor's reference).
        patient_name: patient name or ID.
        exam_date: YYYY-MM-DD, not in the future.
        model_name: one of `allowed_models`.
        allowed_models: the app's registered models.
        target_label: class to explain; default the predicted class.
        method: gradcam, gradcam++ or hirescam.
        max_upload_bytes: size limit for the file.
        max_pixels: pixel limit for the decoded image.
        today: the date "today" is checked against (tests).
        image: `source` already decoded by `load_image` with the same limits (the Batch tab decodes each file
            once, for its DICOM fields); decoded here when None.

    Raises:
        XrayError subclasses with a message for the doctor; nothing is saved then.
    """
    from xray.analysis.pipeline import analyse

    patient = parse_patient(patient_name)
    exam = parse_exam_date(exam_date, today=today)
    method = check_method(method)
    data = read_upload(source, max_bytes=max_upload_bytes)
    if filename is None and isinstance(source, (str, Path)):
        filename = Path(source).name
    if image is None:
        image = load_image(data, filename=filename, max_pixels=max_pixels)
    loaded = load_registered_model(model_name, allowed_models)
    target = check_target(loaded, target_label)
    analysis = analyse(loaded, image, target_label=target, method=method)
    prediction, explanation, gate_result, heat = (
        analysis.prediction, analysis.explanation, analysis.gate, analysis.heatmap_check
    )
    image_sha = store.put(data)
    heatmap_sha = store.put_heatmap(explanation.heatmap)
    width, height = image.size
    record = crud.create_record(
        session,
        doctor=doctor,
        patient_name=patient,
        exam_date=exam,
        image_sha256=image_sha,
        image_filename=Path(filename or "").name[:255],
        image_format=str(image.source_format)[:32],
        image_width=width,
        image_height=height,
        model_name=loaded.name,
        model_version=str(loaded.version),
        architecture=loaded.architecture,
        label_names=list(loaded.label_names),
        probabilities={k: float(v) for k, v in prediction.probabilities.items()},
        predicted_label=prediction.label,
        positive_label=loaded.positive_label,
        threshold=loaded.threshold,
        cam_method=method,
        cam_target_label=explanation.target_label,
        heatmap_sha256=heatmap_sha,
        latency_ms=analysis.latency_ms,
        gate_reasons=list(gate_result.reasons),
        heat_in_lungs=heat.heat_in_lungs,
        heat_in_chest=heat.heat_in_chest,
    )
    logger.info(
        "record %s saved for %s (%s: %s; %s)",
        record.id, doctor.username, loaded.name, prediction.label,
        "in scope" if gate_result.in_scope else "out of scope: " + ",".join(gate_result.codes),
    )  # fmt: skip
    warnings = caveat_warnings(analysis.caveat)
    view = make_view(
        image.pixels, explanation.heatmap, target_label=explanation.target_label, method=method, record_id=record.id
    )
    return Diagnosis(
        record=record,
        model=loaded,
        probabilities=dict(prediction.probabilities),
        label=prediction.label,
        view=view,
        latency_ms=analysis.latency_ms,
        warnings=warnings,
        gate=gate_result,
        gate_note=analysis.gate_note,
        heatmap_check=heat,
    )


def gate_warning(reasons: Sequence[str] | None) -> str | None:
    """The out-of-scope warning for stored gate reasons, or None when there were none."""
    if not reasons:
        return None
    return (
        "This image may be outside what the model was made for (frontal chest X-rays): "
        + " ".join(reasons)
        + " Any result for it is unreliable."
    )


def gate_markdown(reasons: Sequence[str] | None, note: str | None = None) -> str:
    """The warning box shown instead of the result for an out-of-scope image (empty when in scope)."""
    if not reasons:
        return f"ℹ️ {note}" if note else ""
    lines = ["### ⚠️ Out of scope: the prediction is hidden", ""]
    lines += [f"- {md_escape(r)}" for r in reasons]
    lines += [
        "",
        "The model was made for frontal chest X-rays; any result for this image is unreliable. The record is "
        "saved. Click **Show the prediction anyway** to see it under this warning.",
    ]
    if note:
        lines += ["", f"ℹ️ {note}"]
    return "\n".join(lines)


def heat_markdown(heat_in_lungs: float | None, heat_in_chest: float | None = None) -> str:
    """`62% of the heat lies inside the estimated lung fields`, with `xray.trust.lungs`' warning when it applies."""
    from xray.trust.lungs import heat_warning

    if heat_in_lungs is None:
        return "Where the heatmap lies relative to the lungs was not checked (the lung fields could not be outlined)."
    text = f"{heat_in_lungs:.0%} of the heat lies inside the estimated lung fields"
    if heat_in_chest is None:
        return text + "."
    text += f", {heat_in_chest:.0%} over the chest."
    warning = heat_warning(heat_in_lungs, heat_in_chest)
    return text + (f"\n\n⚠️ **{warning}**" if warning else "")


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def md_escape(text: str) -> str:
    """Text shown literally inside Markdown (a patient called `*Roe*` stays `*Roe*`, not italics)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def result_summary(record: Record) -> str:
    """One Markdown sentence stating the model's output against its operating threshold."""
    probs = record.probabilities
    label = record.predicted_label
    if record.threshold is not None and record.positive_label:
        p_pos = probs.get(record.positive_label, float("nan"))
        relation = "at or above" if p_pos >= record.threshold else "below"
        return (
            f"**Model output: {label}**: P({record.positive_label}) = {p_pos:.3f}, {relation} the model's operating "
            f"threshold {record.threshold:.3f}."
        )
    return f"**Model output: {label}** (most probable class, P = {probs.get(label, float('nan')):.3f})."


def model_line(record: Record) -> str:
    """`model pneumonia · mobilenetv3_large_100 · version 1a2b3c`."""
    return f"Model `{record.model_name}` · {record.architecture} · version `{record.model_version}`"


def _owned_record(session: Session, *, doctor: Doctor, record_id: Any) -> Record:
    rid = parse_record_id(record_id)
    record = crud.get_record(session, doctor=doctor, record_id=rid)
    if record is None:
        raise RecordNotFoundError(f"Record {rid} was not found among your records.")
    return record


def _stored_image(store: ImageStore, record: Record, *, max_pixels: int) -> XrayImage:
    try:
        data = store.get(record.image_sha256)
    except FileNotFoundError:
        raise ImageReadError(
            f"The image of record {record.id} is missing from the data folder ({store.root}); "
            "it may have been moved or deleted outside the app."
        ) from None
    return load_image(data, filename=record.image_filename, max_pixels=max_pixels)


def reexplain(
    session: Session,
    store: ImageStore,
    *,
    doctor: Doctor,
    record_id: Any,
    target_label: str | None,
    method: str | None,
    allowed_models: Sequence[str],
    max_pixels: int,
) -> HeatmapView:
    """A heatmap for another class (or method) of one of the doctor's records, with the record's model.

    The record itself is not changed.
    """
    from xray.analysis.pipeline import analyse

    record = _owned_record(session, doctor=doctor, record_id=record_id)
    loaded = load_registered_model(record.model_name, list(allowed_models) + [record.model_name])
    target = check_target(loaded, target_label)
    image = _stored_image(store, record, max_pixels=max_pixels)
    # only a new heatmap is wanted: the record's checks were stored when it was made
    explanation = analyse(loaded, image, target_label=target, method=check_method(method), checks=False).explanation
    return make_view(
        image.pixels,
        explanation.heatmap,
        target_label=explanation.target_label,
        method=explanation.method,
        record_id=record.id,
    )


# ---------------------------------------------------------------------------------------------- history


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
    """Table rows in `HISTORY_COLUMNS` order."""
    rows = []
    for r in records:
        p = r.probabilities.get(r.predicted_label)
        rows.append(
            [
                r.id,
                r.created_at.strftime("%Y-%m-%d %H:%M"),
                r.patient_name,
                r.exam_date.isoformat(),
                r.predicted_label,
                round(float(p), 3) if p is not None else None,
                r.model_name,
            ]
        )
    return rows


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
    record = _owned_record(session, doctor=doctor, record_id=record_id)
    image = _stored_image(store, record, max_pixels=max_pixels)
    if record.heatmap_sha256 and store.exists(record.heatmap_sha256):
        heatmap = store.get_heatmap(record.heatmap_sha256)
    else:
        heatmap = np.zeros(image.pixels.shape[:2], dtype=np.float32)
    view = make_view(
        image.pixels,
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


_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(value: Any) -> Any:
    # A spreadsheet would run a cell starting with '=' etc. as a formula (CSV injection): quote it as text.
    if isinstance(value, str) and value.startswith(_CSV_FORMULA):
        return "'" + value
    return value


def records_csv(records: Sequence[Record]) -> str:
    """CSV text of records: patient fields, model output (one probability column per class), model id."""
    labels: list[str] = []
    for r in records:
        labels += [name for name in r.label_names if name not in labels]
    header = [
        "record_id", "saved_utc", "patient", "exam_date", "predicted_label", "positive_label", "threshold",
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
                _csv_text(v)
                for v in [
                    r.id,
                    r.created_at.isoformat(timespec="seconds"),
                    r.patient_name,
                    r.exam_date.isoformat(),
                    r.predicted_label,
                    r.positive_label or "",
                    "" if r.threshold is None else f"{r.threshold:.4f}",
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


# ---------------------------------------------------------------------------------------------- compare


@dataclass
class Comparison:
    """One model's answer on the shared image in the Compare tab."""

    info: ModelInfo
    version: str = ""
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    view: HeatmapView | None = None
    error: str | None = None
    gate: Any = None  # xray.trust.gate.GateResult
    gate_note: str | None = None


def compare_models(
    source: str | Path | bytes | None,
    *,
    filename: str | None,
    model_names: Sequence[str],
    method: str | None = "gradcam",
    max_upload_bytes: int,
    max_pixels: int,
) -> list[Comparison]:
    """Run every model on one image (prediction + heatmap each); a failing model reports its error in its row.

    Each model's input gate runs too (its own OOD statistics), outside the timed prediction. Nothing is saved:
    this is the researchers' view of the backbones, not a patient's record.
    """
    from xray.analysis.pipeline import analyse
    from xray.inference.models import load_model

    method = check_method(method)
    if not model_names:
        raise InvalidInputError("No model is installed to compare.")
    data = read_upload(source, max_bytes=max_upload_bytes)
    if filename is None and isinstance(source, (str, Path)):
        filename = Path(source).name
    image = load_image(data, filename=filename, max_pixels=max_pixels)
    results = []
    for name in model_names:
        info = describe_model(name)
        try:
            # each model runs its own input gate on its own features; the heat check is not shown here
            analysis = analyse(loaded := load_model(name), image, method=method)
        except XrayError as exc:
            results.append(Comparison(info=info, error=str(exc)))
            continue
        results.append(
            Comparison(
                info=info,
                gate=analysis.gate,
                gate_note=analysis.gate_note,
                version=str(loaded.version),
                label=analysis.label,
                probabilities=dict(analysis.probabilities),
                latency_ms=analysis.latency_ms,
                view=make_view(
                    image.pixels,
                    analysis.heatmap,
                    target_label=analysis.explanation.target_label,
                    method=method,
                    record_id=None,
                ),
            )
        )
    return results


COMPARE_COLUMNS = ["Model", "Architecture", "Version", "Output", "Probabilities", "Latency (ms)", "Test metrics",
                   "Input check", "Caveat"]


def comparison_rows(results: Sequence[Comparison]) -> list[list[Any]]:
    """Table rows in `COMPARE_COLUMNS` order."""
    from xray.analysis.pipeline import input_check_text

    rows = []
    for c in results:
        probs = ", ".join(f"{k} {v:.3f}" for k, v in c.probabilities.items())
        rows.append(
            [
                c.info.name,
                c.info.architecture,
                c.version,
                c.label if c.error is None else f"error: {c.error}",
                probs,
                None if c.latency_ms is None else round(c.latency_ms, 1),
                format_headline(c.info.headline) or "none",
                input_check_text(c.gate, c.gate_note),
                c.info.caveat or "",
            ]
        )
    return rows


def example_files() -> list[Path]:
    """The sample X-rays shipped in `examples/` (sorted)."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
