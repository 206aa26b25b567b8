"""Expected sensitivity, specificity, PPV and NPV at any threshold, from the model's validation ROC.

The ROC comes from metrics.json (`metrics["validation"]["roc"]`, written by `xray.training.evaluate` from the validation
split carved out of the training data, never the test set): lists `fpr`, `tpr` and `thresholds`, with
thresholds in decreasing order as scikit-learn's `roc_curve` returns them (rule: positive when
p >= threshold). Intermediate points are dropped when it is stored, so between two stored points the rates
are interpolated linearly in the threshold.

PPV and NPV depend on how common the condition is where the model is used, not on the model alone; they are
computed by Bayes' rule for a prevalence the doctor sets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xray.errors import OperatingPointError


@dataclass(frozen=True)
class OperatingPoint:
    """Expected performance at one threshold.

    Attributes:
        threshold: the threshold on the positive-class probability (positive when p >= threshold).
        prevalence: the prevalence PPV and NPV were computed for (0..1).
        sensitivity: true positive rate on validation at this threshold.
        specificity: true negative rate on validation at this threshold.
        ppv: positive predictive value at `prevalence` (NaN when nothing is called positive).
        npv: negative predictive value at `prevalence` (NaN when nothing is called negative).
    """

    threshold: float
    prevalence: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float


def _clean_roc(roc: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds ascending with their (fpr, tpr), one point per threshold, anchored at 'nobody positive'."""
    try:
        fpr = np.asarray(roc["fpr"], dtype=np.float64)
        tpr = np.asarray(roc["tpr"], dtype=np.float64)
        raw = roc["thresholds"]
    except (KeyError, TypeError) as exc:
        raise OperatingPointError(
            "The ROC must be a mapping with lists 'fpr', 'tpr' and 'thresholds' (as in metrics.json 'validation')."
        ) from exc
    # JSON has no infinity: the first scikit-learn threshold may be stored as null, a huge number or > 1.
    thresholds = np.asarray([np.inf if t is None else float(t) for t in raw], dtype=np.float64)
    if not (len(fpr) == len(tpr) == len(thresholds)) or len(fpr) < 2:
        raise OperatingPointError(
            f"The ROC needs at least two points with equally long fpr/tpr/thresholds lists "
            f"(got {len(fpr)}, {len(tpr)}, {len(thresholds)})."
        )
    if np.isnan(fpr).any() or np.isnan(tpr).any() or np.isnan(thresholds).any():
        raise OperatingPointError("The ROC contains missing (NaN) values.")
    thresholds = np.minimum(thresholds, 1.0 + 1e-9)
    order = np.argsort(thresholds, kind="stable")
    thresholds, fpr, tpr = thresholds[order], fpr[order], tpr[order]
    # Equal thresholds (a score of exactly 1.0 next to the clipped 'infinity'): at t itself, every score >= t is
    # positive, so the point with the most positives is the true one.
    unique, start = np.unique(thresholds, return_index=True)
    ends = np.append(start[1:], len(thresholds))
    fpr = np.array([fpr[a:b].max() for a, b in zip(start, ends, strict=True)])
    tpr = np.array([tpr[a:b].max() for a, b in zip(start, ends, strict=True)])
    if fpr[-1] > 0 or tpr[-1] > 0:
        # Above the highest stored threshold nobody is called positive.
        unique, fpr, tpr = np.append(unique, unique[-1] + 1e-9), np.append(fpr, 0.0), np.append(tpr, 0.0)
    return unique, fpr, tpr


def _unit_interval(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise OperatingPointError(f"The {name} must be a number between 0 and 1, got {value!r}.")
    return number


def operating_point(roc: Mapping[str, Any], threshold: float, prevalence: float) -> OperatingPoint:
    """Sensitivity, specificity, PPV and NPV at `threshold`, for a population with `prevalence`.

    Args:
        roc: `{"fpr": [...], "tpr": [...], "thresholds": [...]}` (e.g. `roc_from_metrics(loaded.metrics)`).
        threshold: threshold on the positive-class probability, 0..1.
        prevalence: share of patients with the condition in the population the doctor has in mind, 0..1.

    Raises:
        OperatingPointError: the ROC is malformed, or threshold / prevalence lie outside 0..1.
    """
    threshold = _unit_interval(threshold, "threshold")
    prevalence = _unit_interval(prevalence, "prevalence")
    thresholds, fpr, tpr = _clean_roc(roc)
    sensitivity = float(np.interp(threshold, thresholds, tpr))
    specificity = 1.0 - float(np.interp(threshold, thresholds, fpr))
    true_pos = sensitivity * prevalence
    false_pos = (1.0 - specificity) * (1.0 - prevalence)
    true_neg = specificity * (1.0 - prevalence)
    false_neg = (1.0 - sensitivity) * prevalence
    ppv = true_pos / (true_pos + false_pos) if true_pos + false_pos > 0 else math.nan
    npv = true_neg / (true_neg + false_neg) if true_neg + false_neg > 0 else math.nan
    return OperatingPoint(threshold, prevalence, sensitivity, specificity, ppv, npv)


def roc_from_metrics(
    metrics: Mapping[str, Any], label: str | None = None, population: str | None = None
) -> dict[str, list[float]]:
    """The validation ROC stored in a model's metrics.json.

    Args:
        metrics: the parsed metrics.json (`LoadedModel.metrics`).
        label: for models with more than two classes, the class whose one-vs-rest ROC is wanted.
        population: `children` / `adults`: that population's own validation ROC when the model stores one
            (`python -m xray thresholds --write`), else the pooled ROC.

    Raises:
        OperatingPointError: the model has no validation ROC (or none for `label`); the message says why.
    """
    if population and isinstance(metrics, Mapping):
        own = (((metrics.get("population_thresholds") or {}).get("populations") or {}).get(population) or {})
        if own.get("roc") and "fpr" in own["roc"]:
            return dict(own["roc"])
    roc = (metrics.get("validation") or {}).get("roc") if isinstance(metrics, Mapping) else None
    if not roc:
        raise OperatingPointError(
            "This model's metrics.json has no validation ROC, so expected sensitivity and specificity cannot be "
            "shown. Models trained with train.py store it under 'validation' > 'roc'."
        )
    if "fpr" in roc:
        return dict(roc)
    if label is None or label not in roc:
        raise OperatingPointError(
            f"This model stores one ROC per class ({', '.join(roc)}); choose one of them."
        )
    return dict(roc[label])


def roc_population(metrics: Mapping[str, Any], population: str | None) -> tuple[str | None, int | None]:
    """(population, validation images) whose ROC `roc_from_metrics(metrics, population=...)` returns; pooled: None."""
    if not population or not isinstance(metrics, Mapping):
        return None, None
    own = (((metrics.get("population_thresholds") or {}).get("populations") or {}).get(population) or {})
    return (population, own.get("n")) if own.get("roc") else (None, None)


def validation_prevalence(metrics: Mapping[str, Any], label: str) -> float | None:
    """Share of `label` in the validation split (a starting value for the prevalence), when metrics.json says."""
    counts = (((metrics.get("data") or {}).get("split_counts") or {}).get("val") or {})
    total = sum(v for k, v in counts.items() if k != "groups" and isinstance(v, (int, float)))
    if label not in counts or total <= 0:
        return None
    return float(counts[label]) / total


#: Decimals of every threshold a person reads (app, cards, Models page): one threshold, one way (0.541).
THRESHOLD_DECIMALS = 3


def format_threshold(value: float) -> str:
    """A decision threshold as people read it everywhere: `0.541` (never 0.54, 0.5405 or 0.540506)."""
    return f"{float(value):.{THRESHOLD_DECIMALS}f}"


def shown_threshold(value: float) -> float:
    """The threshold a control starts at: the shown value, so the slider and the text agree (0.541)."""
    return round(float(value), THRESHOLD_DECIMALS)


def describe(
    point: OperatingPoint, positive_label: str = "positive", population: str | None = None, n: int | None = None
) -> str:
    """One doctor-readable sentence about an operating point (on one population's validation images when given)."""

    def pct(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.1%}"

    return (
        f"At threshold {format_threshold(point.threshold)}, on "
        + (f"the validation images of {population}" + (f" ({n})" if n else "") if population else "validation data")
        + f": sensitivity {pct(point.sensitivity)}, "
        f"specificity {pct(point.specificity)}. If {point.prevalence:.0%} of patients have {positive_label}: "
        f"a positive result is right {pct(point.ppv)} of the time (PPV), a negative one {pct(point.npv)} (NPV)."
    )


def describe_threshold(threshold: float | None, population: str | None = None, why: str | None = None) -> str:
    """The threshold a result was decided with, as every view says it.

    `threshold 0.612 for adults (chosen by the doctor)`; `threshold 0.541` for a model's pooled threshold; '' for an
    argmax model.
    """
    if threshold is None:
        return ""
    text = f"threshold {format_threshold(threshold)}"
    if population:
        text += f" for {population}" + (f" ({why})" if why else "")
    return text
