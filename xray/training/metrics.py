"""Classification metrics with bootstrap confidence intervals, calibration and operating-threshold choice.

Conventions: `y_true` holds class indices; `probs` is an (N, C) array of class probabilities. For two
classes the positive class is index 1 (`label_names[1]`) and the threshold applies to its probability.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def class_metrics_from_confusion(matrix: np.ndarray) -> list[dict[str, float]]:
    """One-vs-rest sensitivity, specificity, FPR, FNR, precision, NPV and F1 for each class."""
    total = matrix.sum()
    out = []
    for k in range(matrix.shape[0]):
        tp = matrix[k, k]
        fn = matrix[k].sum() - tp
        fp = matrix[:, k].sum() - tp
        tn = total - tp - fn - fp
        sensitivity = _safe_div(tp, tp + fn)
        specificity = _safe_div(tn, tn + fp)
        precision = _safe_div(tp, tp + fp)
        out.append(
            {
                "sensitivity": sensitivity,
                "specificity": specificity,
                "fpr": _safe_div(fp, fp + tn),
                "fnr": _safe_div(fn, fn + tp),
                "precision": precision,
                "npv": _safe_div(tn, tn + fn),
                "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
            }
        )
    return out


def predict_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class indices: argmax, or for two classes `p(positive) >= threshold` when a threshold is given."""
    probs = np.asarray(probs)
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1)


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ROC AUC: binary (`auc`), or one-vs-rest per class (`auc_<k>`) and their macro mean (`auc`)."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    if probs.shape[1] == 2:
        if len(np.unique(y_true)) < 2:
            return {"auc": float("nan")}
        return {"auc": float(roc_auc_score(y_true, probs[:, 1]))}
    out = {}
    for k in range(probs.shape[1]):
        positives = y_true == k
        out[f"auc_{k}"] = (
            float(roc_auc_score(positives, probs[:, k])) if 0 < positives.sum() < len(y_true) else float("nan")
        )
    values = [v for v in out.values() if not np.isnan(v)]
    out["auc"] = float(np.mean(values)) if values else float("nan")
    return out


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, label_names: list[str], threshold: float | None = None
) -> dict[str, float]:
    """Flat dict of scalar metrics: accuracy, AUC(s), and per-class `<metric>/<label>`.

    For two classes the top-level sensitivity/specificity/fpr/fnr/precision/npv/f1 are those of the positive class.
    """
    y_true = np.asarray(y_true)
    y_pred = predict_labels(probs, threshold)
    matrix = confusion_matrix(y_true, y_pred, len(label_names))
    flat: dict[str, float] = {"accuracy": _safe_div(np.trace(matrix), matrix.sum())}
    auc = roc_auc(y_true, probs)
    flat["auc"] = auc["auc"]
    per_class = class_metrics_from_confusion(matrix)
    for k, (name, values) in enumerate(zip(label_names, per_class, strict=True)):
        for key, value in values.items():
            flat[f"{key}/{name}"] = value
        if f"auc_{k}" in auc:
            flat[f"auc/{name}"] = auc[f"auc_{k}"]
    if len(label_names) == 2:
        flat.update(per_class[1])
    return flat


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals for every scalar a metric function returns.

    Cases are resampled with replacement, stratified by true class (so every resample has every class and the
    class mix of the data set is kept).

    Returns:
        `{name: [low, high]}` at level `1 - alpha`.
    """
    rng = np.random.default_rng(seed)
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    by_class = [np.flatnonzero(y_true == k) for k in np.unique(y_true)]
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(members, size=len(members), replace=True) for members in by_class])
        for key, value in metric_fn(y_true[idx], probs[idx]).items():
            draws.setdefault(key, []).append(value)
    out = {}
    for key, values in draws.items():
        arr = np.asarray(values, dtype=float)
        arr = arr[~np.isnan(arr)]
        out[key] = (
            [float(np.quantile(arr, alpha / 2)), float(np.quantile(arr, 1 - alpha / 2))]
            if len(arr)
            else [
                float("nan"),
                float("nan"),
            ]
        )
    return out


def wilson_interval(successes: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); sensible for small n and for 0 or n successes.

    Returns:
        `(low, high)`, or `(nan, nan)` when `n` is 0.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Top-label confidence bins: edges, mean confidence, accuracy and count per bin (empty bins have count 0)."""
    probs = np.asarray(probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins (lo, hi]; confidence is never 0 so the first bin's open left edge loses nothing
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    conf, acc, count = [], [], []
    for b in range(n_bins):
        mask = which == b
        count.append(int(mask.sum()))
        conf.append(float(confidence[mask].mean()) if mask.any() else float("nan"))
        acc.append(float(correct[mask].mean()) if mask.any() else float("nan"))
    return {"edges": edges.tolist(), "confidence": conf, "accuracy": acc, "count": count}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: count-weighted mean |accuracy - confidence| over equal-width top-label confidence bins."""
    bins = reliability_bins(y_true, probs, n_bins)
    total = sum(bins["count"])
    ece = 0.0
    for conf, acc, count in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True):
        if count:
            ece += count / total * abs(acc - conf)
    return float(ece)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of `softmax(logits / T)` (Guo et al. 2017).

    A bounded 1-D search on log T (T in [0.05, 20]), which is convex in practice and needs no gradient code.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true)

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(y)), y].mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def roc_points(y_true: np.ndarray, p_positive: np.ndarray) -> dict[str, list[float]]:
    """ROC curve points (fpr, tpr, thresholds) with thresholds clipped to [0, 1] so they are valid JSON."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(np.asarray(y_true), np.asarray(p_positive), drop_intermediate=True)
    return {
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
        "thresholds": [float(min(max(v, 0.0), 1.0)) for v in thresholds],
    }


def choose_threshold(y_true: np.ndarray, p_positive: np.ndarray, *, min_sensitivity: float = 0.95) -> dict[str, Any]:
    """Operating threshold on the positive-class probability, chosen on validation data.

    Rule: among thresholds whose sensitivity is at least `min_sensitivity`, take the one with the highest
    specificity (ties: the highest threshold). When none reaches it, maximise Youden's J instead.

    Returns:
        `{"threshold", "rule", "sensitivity", "specificity"}` measured on the data given.
    """
    y = np.asarray(y_true)
    p = np.asarray(p_positive, dtype=np.float64)
    candidates = np.unique(p)
    positives = max(int((y == 1).sum()), 1)
    negatives = max(int((y == 0).sum()), 1)
    # sensitivity / specificity at threshold t with the rule p >= t, for every distinct score
    sens = np.array([((p >= t) & (y == 1)).sum() / positives for t in candidates])
    spec = np.array([((p < t) & (y == 0)).sum() / negatives for t in candidates])
    ok = sens >= min_sensitivity
    if ok.any():
        best_spec = spec[ok].max()
        index = np.flatnonzero(ok & (spec == best_spec)).max()
        rule = f"highest specificity with validation sensitivity >= {min_sensitivity:.2f}"
    else:
        j = sens + spec - 1
        index = int(np.flatnonzero(j == j.max()).max())
        rule = "Youden's J (no threshold reached the sensitivity target)"
    # halfway to the next lower score: same decisions on validation, less brittle on new data
    threshold = (candidates[index] + candidates[index - 1]) / 2 if index > 0 else candidates[index]
    return {
        "threshold": float(threshold),
        "rule": rule,
        "sensitivity": float(sens[index]),
        "specificity": float(spec[index]),
    }
