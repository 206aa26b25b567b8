"""The Diagnose tab's operating-point panel: expected sensitivity, specificity, PPV and NPV at a chosen threshold.

Recomputed from the model's validation ROC (`xray.trust.operating`) and, for the record on screen, from its stored
probabilities: the saved record always keeps the model's own output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from xray.errors import OperatingPointError
from xray.records import crud
from xray.records.db import Doctor, Record
from xray.web.registry import ModelInfo


@dataclass
class OperatingDefaults:
    """Where the threshold slider and prevalence field start for a model, or why they are not offered."""

    available: bool
    threshold: float = 0.5
    prevalence: float = 0.5
    positive_label: str | None = None
    reason: str | None = None


def operating_defaults(info: ModelInfo | None) -> OperatingDefaults:
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


def operating_markdown(info: ModelInfo | None, threshold: Any, prevalence: Any, record: Record | None = None) -> str:
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
    session: Session, *, doctor: Doctor, info: ModelInfo | None, threshold: Any, prevalence: Any, record_id: Any
) -> str:
    """`operating_markdown` for one of the doctor's records by id (None or another doctor's id: no verdict)."""
    record = crud.get_record(session, doctor=doctor, record_id=int(record_id)) if record_id else None
    return operating_markdown(info, threshold, prevalence, record)
