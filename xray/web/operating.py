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

#: Where the prevalence box starts: 10%, an assumed share of patients with the condition among those X-rayed
#: because it is suspected. It is an assumption, not a measurement, and deliberately modest. The validation
#: set's share (74% pneumonia for the bundled model) is how the public data sets were collected, not how common
#: pneumonia is among a doctor's patients: started there, PPV looked about 99% (issue 21). Each doctor should
#: enter their own share; the text under the box says so.
DEFAULT_PREVALENCE = 0.10
#: The prevalence box's help text (`info=` of its gr.Number).
PREVALENCE_INFO = (
    f"Share of your patients who have the condition. Starts at {DEFAULT_PREVALENCE:.0%}, an assumption for patients "
    "X-rayed because it is suspected: enter your own."
)


@dataclass
class OperatingDefaults:
    """Where the threshold slider and prevalence field start for a model, or why they are not offered."""

    available: bool
    threshold: float = 0.5
    prevalence: float = DEFAULT_PREVALENCE
    positive_label: str | None = None
    reason: str | None = None
    validation_prevalence: float | None = None


def operating_defaults(info: ModelInfo | None) -> OperatingDefaults:
    """Where the panel starts: the model's threshold as shown (`shown_threshold`) and `DEFAULT_PREVALENCE`.

    Unavailable for non-binary models or without an ROC. The validation set's share is kept to say why it is not
    the default.
    """
    from xray.trust.operating import roc_from_metrics, shown_threshold, validation_prevalence

    if info is None or info.error or info.threshold is None or not info.positive_label:
        return OperatingDefaults(False, reason="The operating point applies to two-class models only.")
    try:
        roc_from_metrics(info.metrics)
    except OperatingPointError as exc:
        return OperatingDefaults(
            False, threshold=shown_threshold(info.threshold), positive_label=info.positive_label, reason=str(exc)
        )
    return OperatingDefaults(
        True,
        threshold=shown_threshold(info.threshold),
        positive_label=info.positive_label,
        validation_prevalence=validation_prevalence(info.metrics, info.positive_label),
    )


def prevalence_note(defaults: OperatingDefaults) -> str:
    """Why the prevalence box starts where it does, and what the validation set's share was."""
    text = (f"PPV and NPV depend on the prevalence you enter. The box starts at {DEFAULT_PREVALENCE:.0%}, an "
            "assumption for patients X-rayed because the condition is suspected")  # fmt: skip
    if defaults.validation_prevalence is not None:
        text += (f", not the validation set's {defaults.validation_prevalence:.0%}, which is how the data sets were "
                 "collected, not how common the condition is among patients")  # fmt: skip
    return f"_{text}. Enter your own patients' share._"


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
    from xray.trust.operating import (
        describe,
        describe_threshold,
        format_threshold,
        operating_point,
        roc_from_metrics,
        roc_population,
    )

    defaults = operating_defaults(info)
    if not defaults.available or info is None:
        return f"_{defaults.reason}_"
    mine = record is not None and record.model_name == info.name
    # the slider starts at the shown 0.541 (or the record's 0.772): that is the exact threshold that decided it
    # (0.5405...), so verdicts agree
    exact = [t for t in (record.threshold if mine and record else None, info.threshold) if t is not None]
    if isinstance(threshold, (int, float)):
        threshold = next((t for t in exact if format_threshold(threshold) == format_threshold(t)), threshold)
    # a record of one population is judged on that population's validation ROC (children and adults differ)
    population, n = roc_population(info.metrics, record.population if mine and record else None)
    point = operating_point(roc_from_metrics(info.metrics, population=population), threshold, prevalence)
    lines = [describe(point, defaults.positive_label or "the condition", population, n), "", prevalence_note(defaults)]
    if record is not None and record.model_name == info.name:
        label = verdict(record, point.threshold)
        if label is not None:
            p = record.probabilities.get(defaults.positive_label or "", math.nan)
            # a record decided with its population's threshold names it once the slider is moved off it
            own = (f"its {describe_threshold(record.threshold, record.population)}" if record.population
                   and record.threshold is not None else "the model's own threshold")  # fmt: skip
            changed = "" if label == record.predicted_label else f" ({own} gave {record.predicted_label})"
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


def start_for_record(
    session: Session, *, doctor: Doctor, info: ModelInfo | None, prevalence: Any, record_id: Any
) -> tuple[float, str]:
    """Where the panel starts for a new result: the threshold that decided the record, and the text there.

    A child's record decided at the children's 0.772 starts the slider at 0.772, not at the pooled threshold; no
    record on screen (hidden, or another model's) starts at the model's own threshold.
    """
    from xray.trust.operating import shown_threshold

    record = crud.get_record(session, doctor=doctor, record_id=int(record_id)) if record_id else None
    threshold = operating_defaults(info).threshold
    if record is not None and info is not None and record.model_name == info.name and record.threshold is not None:
        threshold = shown_threshold(record.threshold)
    return threshold, operating_markdown(info, threshold, prevalence, record)
