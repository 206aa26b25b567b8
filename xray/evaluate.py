"""Evaluate a classifier on labelled images: metrics with bootstrap CIs, calibration, threshold, plots, metrics.json.

Used at the end of training (validation given: temperature and threshold are fitted on it and written to
config.json) and by `python -m xray evaluate` (the model's stored temperature and threshold are used).
Inference uses the model's own data config and `xray.transforms.build_transform`, exactly as the app does.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xray import metrics as M
from xray.models import LoadedModel, update_config

logger = logging.getLogger(__name__)

PLOTS = ("roc.png", "reliability.png", "confusion.png", "curves.png")


def _batches(loaded: LoadedModel, images: Sequence[Any], batch_size: int):
    # the app's own preprocessing (xray.predict), so evaluation scores exactly what doctors are shown
    from xray.predict import preprocess

    for start in range(0, len(images), batch_size):
        yield preprocess(loaded, images[start : start + batch_size])


def predict_logits(loaded: LoadedModel, images: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
    """Raw logits (N, C) for images (XrayImage, PIL or uint8 arrays), through `xray.predict`'s code path."""
    from xray.predict import predict_logits as forward

    loaded.model.eval()
    out = [forward(loaded, batch).float().numpy() for batch in _batches(loaded, images, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(loaded.label_names)), dtype=np.float32)


@torch.inference_mode()
def extract_features(loaded: LoadedModel, images: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
    """Penultimate features (N, D): `forward_head(forward_features(x), pre_logits=True)`, for OOD detection."""
    loaded.model.eval()
    model = loaded.model
    out = [
        model.forward_head(model.forward_features(batch), pre_logits=True).flatten(1).float().numpy()
        for batch in _batches(loaded, images, batch_size)
    ]
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    return value


def metrics_with_ci(
    y_true: np.ndarray, probs: np.ndarray, label_names: list[str], threshold: float | None, *, n_boot: int, seed: int
) -> dict[str, Any]:
    """Point estimates and 95% bootstrap CIs: `{"value": {...}, "ci95": {...}, "confusion": [[...]]}`."""

    def fn(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return M.classification_metrics(y, p, label_names, threshold)

    value = fn(y_true, probs)
    ci = M.bootstrap_ci(fn, y_true, probs, n_boot=n_boot, seed=seed) if n_boot else {}
    confusion = M.confusion_matrix(y_true, M.predict_labels(probs, threshold), len(label_names))
    return {"threshold": threshold, "value": value, "ci95": ci, "confusion": confusion.tolist()}


def _one_vs_rest_roc(y: np.ndarray, probs: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """ROC points per class against the rest; a class absent from `y` (or the only one) has no curve."""
    empty = {"fpr": [], "tpr": [], "thresholds": []}
    return {
        name: M.roc_points(y == k, probs[:, k]) if 0 < (y == k).sum() < len(y) else empty
        for k, name in enumerate(label_names)
    }


def evaluate_arrays(
    y_true: np.ndarray,
    logits: np.ndarray,
    label_names: list[str],
    *,
    temperature: float,
    threshold: float | None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All test metrics from logits: at 0.5 / argmax and (binary) at the chosen threshold, ECE before and after T."""
    raw = M.softmax(logits, 1.0)
    calibrated = M.softmax(logits, temperature)
    binary = len(label_names) == 2
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "counts": {n: int((y_true == k).sum()) for k, n in enumerate(label_names)},
    }
    # Temperature scaling is monotone, so decisions at 0.5 / argmax are the same before and after it.
    out["at_default"] = metrics_with_ci(
        y_true, calibrated, label_names, 0.5 if binary else None, n_boot=n_boot, seed=seed
    )
    if binary and threshold is not None:
        out["at_threshold"] = metrics_with_ci(y_true, calibrated, label_names, threshold, n_boot=n_boot, seed=seed)
    out["calibration"] = {
        "ece_before": M.expected_calibration_error(y_true, raw),
        "ece_after": M.expected_calibration_error(y_true, calibrated),
        "reliability_before": M.reliability_bins(y_true, raw),
        "reliability_after": M.reliability_bins(y_true, calibrated),
    }
    if binary:
        out["roc"] = M.roc_points(y_true, calibrated[:, 1])
    else:
        out["roc"] = _one_vs_rest_roc(y_true, calibrated, label_names)
    return out


def calibrate_on_validation(
    y_val: np.ndarray, val_logits: np.ndarray, label_names: list[str], *, min_sensitivity: float = 0.95
) -> dict[str, Any]:
    """Fit the temperature and (binary) the operating threshold on validation; never on test."""
    temperature = M.fit_temperature(val_logits, y_val)
    probs = M.softmax(val_logits, temperature)
    out: dict[str, Any] = {
        "n": int(len(y_val)),
        "temperature": temperature,
        "ece_before": M.expected_calibration_error(y_val, M.softmax(val_logits, 1.0)),
        "ece_after": M.expected_calibration_error(y_val, probs),
        "auc": M.roc_auc(y_val, probs)["auc"],
    }
    if len(label_names) == 2:
        out["threshold"] = M.choose_threshold(y_val, probs[:, 1], min_sensitivity=min_sensitivity)
        out["roc"] = M.roc_points(y_val, probs[:, 1])
    else:
        out["roc"] = _one_vs_rest_roc(y_val, probs, label_names)
    return out


def evaluate_model(
    loaded: LoadedModel,
    test_images: Sequence[Any],
    y_test: np.ndarray,
    *,
    val_images: Sequence[Any] | None = None,
    y_val: np.ndarray | None = None,
    out_dir: str | Path | None = None,
    history: list[dict[str, float]] | None = None,
    extra: dict[str, Any] | None = None,
    min_sensitivity: float = 0.95,
    n_boot: int = 1000,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Evaluate `loaded` on test images; with validation images, first fit temperature and threshold on them.

    Args:
        loaded: the model.
        test_images: images (XrayImage, PIL or uint8 arrays) of the test set.
        y_test: their class indices in `loaded.label_names` order.
        val_images: validation images; when given, temperature and threshold are fitted on them and written
            to `out_dir/config.json` (if `out_dir`), else the model's stored values are used.
        y_val: validation class indices.
        out_dir: folder to write metrics.json and the plots into (None: write nothing).
        history: per-epoch training log for curves.png.
        extra: more keys for metrics.json (data description, training settings).
        min_sensitivity: threshold rule target on validation.
        n_boot: bootstrap resamples (0: no CIs).
        batch_size: inference batch size.

    Returns:
        The metrics dict (as written to metrics.json).
    """
    labels = loaded.label_names
    result: dict[str, Any] = {"model": loaded.name, "architecture": loaded.architecture, "label_names": labels}
    result["num_parameters"] = loaded.num_parameters
    temperature, threshold = loaded.temperature, loaded.threshold
    if val_images is not None and y_val is not None and len(val_images):
        validation = calibrate_on_validation(
            y_val, predict_logits(loaded, val_images, batch_size=batch_size), labels, min_sensitivity=min_sensitivity
        )
        temperature = validation["temperature"]
        threshold = validation["threshold"]["threshold"] if "threshold" in validation else None
        result["validation"] = validation
        loaded.temperature, loaded.threshold = temperature, threshold
        if out_dir is not None:
            values = {"temperature": temperature}
            if threshold is not None:
                values.update(threshold=threshold, positive_label=labels[1])
            update_config(out_dir, **values)
    result["temperature"] = temperature
    result["threshold"] = threshold
    result["positive_label"] = labels[1] if len(labels) == 2 else None
    started = time.perf_counter()
    test_logits = predict_logits(loaded, test_images, batch_size=batch_size)
    result["test_inference_seconds"] = time.perf_counter() - started
    result["test"] = evaluate_arrays(
        np.asarray(y_test), test_logits, labels, temperature=temperature, threshold=threshold, n_boot=n_boot
    )
    if history:
        result["history"] = history
    result.update(extra or {})
    result = _clean(result)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_plots(result, out)
        (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def measure_latency(loaded: LoadedModel, image: Any, *, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """One-image latency of `xray.predict.predict` (transform, forward, calibrated softmax) in ms: p50 and p90."""
    from xray.predict import predict

    times = []
    for i in range(warmup + repeats):
        started = time.perf_counter()
        predict(loaded, [image], batch_size=1)
        if i >= warmup:
            times.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p90_ms": float(np.percentile(times, 90)),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- plots


def _figure(width: float = 5.0, height: float = 4.0):
    from matplotlib.figure import Figure

    # Figure objects (not pyplot) keep no global state and need no GUI backend.
    return Figure(figsize=(width, height), dpi=100)


def write_plots(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write roc.png, reliability.png, confusion.png and (with a history) curves.png; returns the paths."""
    written = [_plot_roc(result, out_dir / "roc.png"), _plot_reliability(result, out_dir / "reliability.png")]
    written.append(_plot_confusion(result, out_dir / "confusion.png"))
    if result.get("history"):
        written.append(_plot_curves(result["history"], out_dir / "curves.png"))
    return written


def _plot_roc(result: dict[str, Any], path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    roc = result["test"]["roc"]
    labels = result["label_names"]
    if "fpr" in roc:
        auc = result["test"]["at_default"]["value"]["auc"]
        ax.plot(roc["fpr"], roc["tpr"], label=f"{labels[1]} (AUC {auc:.3f})")
        if result.get("threshold") is not None:
            m = result["test"]["at_threshold"]["value"]
            ax.plot([m["fpr"]], [m["sensitivity"]], "o", label=f"threshold {result['threshold']:.3f}")
    else:
        for name, points in roc.items():
            auc = result["test"]["at_default"]["value"].get(f"auc/{name}")
            ax.plot(points["fpr"], points["tpr"], label=f"{name} vs rest (AUC {auc:.3f})" if auc is not None else name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="sensitivity", title="ROC, test set")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plot_reliability(result: dict[str, Any], path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    cal = result["test"]["calibration"]
    for key, name in (("reliability_before", "T = 1"), ("reliability_after", f"T = {result['temperature']:.2f}")):
        bins = cal[key]
        pts = [(c, a) for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True) if n]
        if pts:
            ece = cal["ece_before"] if key == "reliability_before" else cal["ece_after"]
            ax.plot(*zip(*pts, strict=True), "o-", label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="confidence (top class)", ylabel="accuracy", title="Reliability, test set", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plot_confusion(result: dict[str, Any], path: Path) -> Path:
    key = "at_threshold" if "at_threshold" in result["test"] else "at_default"
    matrix = np.asarray(result["test"][key]["confusion"])
    labels = result["label_names"]
    fig = _figure(4.5, 4.0)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    title = f"threshold {result['threshold']:.3f}" if key == "at_threshold" else "argmax"
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion, test set ({title})")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plot_curves(history: list[dict[str, float]], path: Path) -> Path:
    fig = _figure(8.0, 3.5)
    epochs = [h["epoch"] for h in history]
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend()
    ax2.plot(epochs, [h["val_auc"] for h in history], "o-", label="validation AUC")
    ax2.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation accuracy")
    ax2.set(xlabel="epoch", title="Validation")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---------------------------------------------------------------- command line


def run_evaluate_command(args: Any) -> int:
    """`python -m xray evaluate --model NAME --data DIR [--split test] [--out DIR] [--json]`."""
    from xray.data import load_pixels, load_samples, make_splits
    from xray.models import load_model

    loaded = load_model(args.model)
    sources = [load_samples(d) for d in args.data]
    splits = make_splits(sources, label_names=loaded.label_names, seed=args.seed)
    if args.split == "all":
        samples = splits.train + splits.val + splits.test
        y = np.concatenate([splits.targets("train"), splits.targets("val"), splits.targets("test")])
    else:
        samples, y = getattr(splits, args.split), splits.targets(args.split)
    if not samples:
        print(f"No {args.split} images in {', '.join(args.data)}; use --split all.")
        return 2
    size = tuple(loaded.data_config["input_size"][1:])
    images = load_pixels(samples, size, str(loaded.data_config.get("interpolation", "bilinear")), progress=True)
    result = evaluate_model(
        loaded,
        images,
        y,
        out_dir=args.out,
        n_boot=args.bootstrap,
        extra={"data": [str(d) for d in args.data], "split": args.split},
    )
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_summary(result))
    return 0


def format_summary(result: dict[str, Any]) -> str:
    """Human-readable summary of a metrics dict (test metrics with 95% CIs)."""
    lines = [f"{result['model']} ({result['architecture']}) on {result['test']['n']} images {result['test']['counts']}"]
    for key in ("at_default", "at_threshold"):
        if key not in result["test"]:
            continue
        block = result["test"][key]
        thr = block["threshold"]
        lines.append(f"  at {'argmax' if thr is None else f'threshold {thr:.3f}'}:")
        for name, value in block["value"].items():
            ci = block["ci95"].get(name)
            ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else ""
            lines.append(f"    {name:<24} {value:.3f}{ci_text}" if value is not None else f"    {name:<24} n/a")
    cal = result["test"]["calibration"]
    lines.append(f"  ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f} at T = {result['temperature']:.3f}")
    return "\n".join(lines)
