"""The Diagnose tab: check the form, run the analysis pipeline on the upload, save the record for the doctor.

Also a new heatmap (another class or CAM method) for a saved record, without changing it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sqlmodel import Session

from xray.errors import InvalidInputError
from xray.imaging.io import XrayImage
from xray.inference.population import ThresholdChoice, choose_threshold
from xray.records import crud
from xray.records.db import Doctor, Record
from xray.records.storage import ImageStore
from xray.web.forms import (
    load_image,
    parse_exam_date,
    parse_patient,
    parse_population,
    read_upload,
    require_upload,
)
from xray.web.history import owned_record, stored_image
from xray.web.registry import caveat_warnings, load_registered_model
from xray.web.views import HeatmapView, make_view

logger = logging.getLogger(__name__)

CAM_METHODS = ("gradcam", "gradcam++", "hirescam")
#: How each CAM method is named above its heatmap.
CAM_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM"}


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


def check_form(
    source: str | Path | bytes | None,
    patient_name: str | None,
    exam_date: str | date | None,
    model_name: str | None,
    allowed_models: Sequence[str],
    method: str | None,
    *,
    today: date | None = None,
) -> None:
    """The Diagnose form's checks that need neither the file's content nor the model (cheap, run first).

    Raises:
        InvalidInputError: no file, no patient, a bad or future exam date, an unknown model or heatmap method.
    """
    require_upload(source)
    parse_patient(patient_name)
    parse_exam_date(exam_date, today=today)
    check_method(method)
    if model_name not in allowed_models:
        load_registered_model(model_name, allowed_models)  # its message says what to choose


def threshold_choice(loaded: Any, image: XrayImage | None, population: str | None) -> ThresholdChoice:
    """The threshold one image is decided with: its DICOM PatientAge's population, else the doctor's choice.

    Raises:
        InvalidInputError: the doctor's choice is neither Adult nor Child.
    """
    metadata = getattr(image, "metadata", None) or {}
    parse_population(population)  # an unknown choice is the doctor's form error
    return choose_threshold(loaded, patient_age=metadata.get("PatientAge"), population=population)


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
    population: str | None = None,
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
        population: the doctor's "Adult" / "Child" (default adults), for a model with one threshold per
            population when the file has no DICOM PatientAge (which takes precedence).

    Raises:
        XrayError subclasses with a message for the doctor; nothing is saved then.
    """
    from xray.analysis.pipeline import analyse

    patient = parse_patient(patient_name)
    exam = parse_exam_date(exam_date, today=today)
    method = check_method(method)
    parse_population(population)
    data = read_upload(source, max_bytes=max_upload_bytes)
    if filename is None and isinstance(source, (str, Path)):
        filename = Path(source).name
    if image is None:
        image = load_image(data, filename=filename, max_pixels=max_pixels)
    loaded = load_registered_model(model_name, allowed_models)
    target = check_target(loaded, target_label)
    choice = threshold_choice(loaded, image, population)
    analysis = analyse(loaded, image, target_label=target, method=method, threshold=choice.threshold)
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
        threshold=choice.threshold,
        population=choice.population,
        population_reason=choice.why or None,
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
        image, explanation.heatmap, target_label=explanation.target_label, method=method, record_id=record.id
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

    record = owned_record(session, doctor=doctor, record_id=record_id)
    loaded = load_registered_model(record.model_name, list(allowed_models) + [record.model_name])
    target = check_target(loaded, target_label)
    image = stored_image(store, record, max_pixels=max_pixels)
    # only a new heatmap is wanted: the record's checks were stored when it was made
    explanation = analyse(loaded, image, target_label=target, method=check_method(method), checks=False).explanation
    return make_view(
        image,
        explanation.heatmap,
        target_label=explanation.target_label,
        method=explanation.method,
        record_id=record.id,
    )
