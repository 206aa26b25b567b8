"""Evaluate a classifier on labelled images: metrics with bootstrap CIs, calibration, threshold, plots, metrics.json.

Used at the end of training (validation given: temperature and threshold are fitted on it and written to
config.json) and by `python -m xray evaluate` (the model's stored temperature and threshold are used).
Inference uses the model's own data config and `xray.imaging.transforms.build_transform`, exactly as the app does.
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

from xray.inference.models import LoadedModel, update_config
from xray.training import metrics as M

logger = logging.getLogger(__name__)

PLOTS = ("roc.png", "reliability.png", "confusion.png", "curves.png")


def predict_logits(loaded: LoadedModel, images: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
    """Raw logits (N, C) for images (XrayImage, PIL or uint8 arrays), through `xray.inference.predict`'s code path."""
    from xray.inference.predict import batches
    from xray.inference.predict import predict_logits as forward

    loaded.model.eval()
    out = [forward(loaded, batch).float().numpy() for batch in batches(loaded, images, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(loaded.label_names)), dtype=np.float32)


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


# ---------------------------------------------------------------- per data source


#: How the per-source table's intervals are made (stated in metrics.json, the summary and the cards).
PER_SOURCE_CI = (
    "95% CIs: Wilson score intervals for proportions (accuracy, sensitivity, specificity, FPR, FNR, precision, NPV; "
    "honest for small sets and for 0 or n successes), stratified bootstrap for ROC AUC and F1"
)


def decision_threshold(label_names: Sequence[str], threshold: float | None) -> float | None:
    """The threshold a model decides with: its operating threshold (binary; 0.5 without one), None (argmax)."""
    if len(label_names) != 2:
        return None
    return 0.5 if threshold is None else float(threshold)


def _proportion_counts(matrix: np.ndarray, label_names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(successes, trials) behind every count-based metric of `metrics.classification_metrics`, by its key."""
    total = int(matrix.sum())
    out = {"accuracy": (int(np.trace(matrix)), total)}
    per_class = []
    for k, name in enumerate(label_names):
        tp = int(matrix[k, k])
        fn = int(matrix[k].sum()) - tp
        fp = int(matrix[:, k].sum()) - tp
        tn = total - tp - fn - fp
        counts = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "fpr": (fp, fp + tn),
                  "fnr": (fn, fn + tp), "precision": (tp, tp + fp), "npv": (tn, tn + fn)}  # fmt: skip
        out.update({f"{key}/{name}": value for key, value in counts.items()})
        per_class.append(counts)
    if len(label_names) == 2:
        out.update(per_class[1])  # binary: the positive class's figures are also the top-level ones
    return out


def group_metrics(
    y_true: np.ndarray, probs: np.ndarray, label_names: list[str], threshold: float | None, *, n_boot: int, seed: int
) -> dict[str, Any]:
    """Every metric of one group of images (a data source, or all of them) with 95% CIs (see `PER_SOURCE_CI`).

    A group holding one class only gets what is defined for it (accuracy, that class's sensitivity or the
    specificity, counts); its ROC AUC is NaN (null in JSON).

    Returns:
        `{"n", "counts", "value", "ci95", "confusion"}`.
    """
    y_true = np.asarray(y_true)
    matrix = M.confusion_matrix(y_true, M.predict_labels(probs, threshold), len(label_names))
    value = M.classification_metrics(y_true, probs, label_names, threshold)
    # calibration per group: a model calibrated on pooled validation can be over-confident on one source only
    value["ece"] = M.expected_calibration_error(y_true, probs)
    ci: dict[str, list[float]] = {}
    if n_boot:
        boot = M.bootstrap_ci(
            lambda y, p: M.classification_metrics(y, p, label_names, threshold), y_true, probs, n_boot=n_boot, seed=seed
        )
        ci = {k: v for k, v in boot.items() if k.split("/")[0] in {"auc", "f1"}}
    for key, (successes, trials) in _proportion_counts(matrix, label_names).items():
        ci[key] = list(M.wilson_interval(successes, trials))
    return {
        "n": int(len(y_true)),
        "counts": {name: int((y_true == k).sum()) for k, name in enumerate(label_names)},
        "value": value,
        "ci95": ci,
        "confusion": matrix.tolist(),
    }


def per_source_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    label_names: list[str],
    sources: Sequence[str],
    threshold: float | None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric per data source and pooled, at the model's own decision rule.

    Args:
        y_true: class indices.
        probs: calibrated probabilities (N, C).
        label_names: class order.
        sources: the data source of each image (`Sample.data_source`).
        threshold: the model's operating threshold (binary; None: 0.5), ignored for more classes (argmax).
        n_boot: bootstrap resamples for the AUC/F1 intervals (0: none).
        seed: bootstrap seed.

    Returns:
        `{"threshold", "ci_method", "sources": {source: group}, "pooled": group}` (groups as `group_metrics`),
        sources in order of first appearance.
    """
    y_true = np.asarray(y_true)
    sources = np.asarray([str(s) for s in sources], dtype=object)
    if len(sources) != len(y_true):
        raise ValueError(f"{len(sources)} data sources for {len(y_true)} images")
    decision = decision_threshold(label_names, threshold)
    rows = {}
    for name in dict.fromkeys(sources.tolist()):
        mask = sources == name
        rows[name] = group_metrics(y_true[mask], probs[mask], label_names, decision, n_boot=n_boot, seed=seed)
    pooled = group_metrics(y_true, probs, label_names, decision, n_boot=n_boot, seed=seed)
    return {"threshold": decision, "ci_method": PER_SOURCE_CI, "sources": rows, "pooled": pooled}


def shortcut_probe(per_source: dict[str, Any], label_names: Sequence[str]) -> dict[str, Any]:
    """For each data source and each true class in it: how often the model predicts each class.

    A source's images are often told apart by age, hospital or processing rather than disease: adult NORMALs of
    one hospital called COVID-19 because every COVID-19 training image was an adult is a shortcut, visible here
    as a large share in a wrong column. Read from the per-source confusion matrices.

    Returns:
        `{"threshold", "sources": {source: {true label: {"n", "predicted": {label: count}, "share": {label: p},
        "ci95": {label: [low, high]}}}}}` (Wilson intervals; true classes absent from a source are left out).
    """
    out: dict[str, Any] = {}
    for source, group in per_source["sources"].items():
        rows = {}
        for k, true in enumerate(label_names):
            counts = [int(c) for c in group["confusion"][k]]
            n = sum(counts)
            if not n:
                continue
            rows[true] = {
                "n": n,
                "predicted": dict(zip(label_names, counts, strict=True)),
                "share": {name: c / n for name, c in zip(label_names, counts, strict=True)},
                "ci95": {name: list(M.wilson_interval(c, n)) for name, c in zip(label_names, counts, strict=True)},
            }
        out[source] = rows
    return {"threshold": per_source["threshold"], "sources": out}


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
    sources: Sequence[str] | None = None,
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
        sources: the data source of each test image (`Sample.data_source`); when given, every metric is also
            reported per source (`per_source`) with the shortcut probe (`shortcut_probe`).
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
    if sources is not None:
        result["per_source"] = per_source_metrics(
            np.asarray(y_test), M.softmax(test_logits, temperature), labels, sources, threshold, n_boot=n_boot
        )
        result["shortcut_probe"] = shortcut_probe(result["per_source"], labels)
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
    """One-image latency of `xray.inference.predict.predict` (transform, forward, calibrated softmax), ms p50/p90."""
    from xray.inference.predict import predict

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


def load_evaluation_samples(path: str | Path) -> list[Any]:
    """Samples of one `--data` path, each with the data source and split an evaluation reports.

    Beyond `xray.training.data.load_samples`: a split folder (`test/`, `train/`) is that split as a whole, named
    after its parent (`kermany-224/test` -> `kermany-224`), and a split folder of a tree whose `metadata.csv`
    names each image's source (adult-cxr) takes the sources, patients and splits from that file
    (`adult-cxr/test` -> `rsna`, `nih`, `radiography`).
    """
    import csv
    from dataclasses import replace

    from xray.training.data import SOURCE_METADATA_COLUMNS, TEST, TRAIN, load_samples, load_source_metadata

    path = Path(path).expanduser()
    split_name = path.name.lower()
    if not path.is_dir() or split_name not in {"train", "val", "test"}:
        return load_samples(path)
    metadata = path.parent / "metadata.csv"
    if metadata.is_file():
        with metadata.open(newline="", encoding="utf-8") as handle:
            header = set(next(csv.reader(handle), []))
        if SOURCE_METADATA_COLUMNS <= header:
            inside = path.resolve()
            samples = [s for s in load_source_metadata(path.parent) if Path(s.source).resolve().is_relative_to(inside)]
            if samples:
                return samples
    split = TEST if split_name == TEST else TRAIN
    return [
        replace(
            s, split=s.split or split, data_source=path.parent.name if s.data_source == path.name else s.data_source
        )
        for s in load_samples(path)
    ]


def run_evaluate_command(args: Any) -> int:
    """`python -m xray evaluate --model NAME --data DIR [--data DIR2] [--label-map OLD=NEW] [--split test] [--json]`.

    Every metric is reported pooled and per data source (each sample's `data_source`: per `--data` folder, or per
    image from a `metadata.csv` that names it), with the shortcut probe.
    """
    from xray.errors import DatasetError
    from xray.inference.models import load_model
    from xray.training.data import load_pixels, make_splits, merge_labels, parse_label_map

    loaded = load_model(args.model)
    mapping = parse_label_map(getattr(args, "label_map", None))
    sources = [merge_labels(load_evaluation_samples(d), mapping) for d in args.data]
    unknown = sorted({s.label for source in sources for s in source} - set(loaded.label_names))
    if unknown:
        raise DatasetError(
            f"Labels {unknown} in the data are not among the model's classes {loaded.label_names}; map them with "
            f"--label-map (e.g. --label-map {unknown[0]}={loaded.label_names[-1]})."
        )
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
        sources=[s.data_source or "unknown" for s in samples],
        extra={"data": [str(d) for d in args.data], "split": args.split, "label_map": mapping or None},
    )
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_summary(result))
    return 0


def _number(value: float | None, ci: Sequence[float | None] | None = None, *, pct: bool = True) -> str:
    """`93.3% [91.2, 95.2]`, `0.972 [0.957, 0.985]` or `n/a`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    scale, unit, digits = (100, "%", 1) if pct else (1, "", 3)
    text = f"{scale * value:.{digits}f}{unit}"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"
    return text


def per_source_columns(label_names: Sequence[str]) -> list[tuple[str, str, bool]]:
    """(header, metric key, as percent) of the per-source table: AUC, accuracy, sensitivity and specificity, ECE.

    Binary models: of the positive class. More classes: macro AUC and each class's sensitivity and specificity.
    ECE: top-label expected calibration error of the calibrated probabilities (15 bins).
    """
    columns = [("ROC AUC" if len(label_names) == 2 else "macro AUC", "auc", False), ("accuracy", "accuracy", True)]
    if len(label_names) == 2:
        columns += [("sensitivity", "sensitivity", True), ("specificity", "specificity", True)]
    else:
        for name in label_names:
            columns += [(f"sens. {name}", f"sensitivity/{name}", True), (f"spec. {name}", f"specificity/{name}", True)]
    return columns + [("ECE", "ece", False)]


def format_per_source(result: dict[str, Any]) -> list[str]:
    """Summary lines of the per-source table and the shortcut probe (none without `per_source`)."""
    table = result.get("per_source")
    if not table:
        return []
    labels = result["label_names"]
    thr = table.get("threshold")
    lines = [
        f"  per data source (at {'argmax' if thr is None else f'threshold {thr:.3f}'}):",
        f"    {table['ci_method']}",
    ]
    for name, group in [*table["sources"].items(), ("pooled", table["pooled"])]:
        counts = ", ".join(f"{k} {v}" for k, v in group["counts"].items() if v)
        lines.append(f"    {name} (n={group['n']}: {counts})")
        for header, key, pct in per_source_columns(labels):
            value = group["value"].get(key)
            lines.append(f"      {header:<22} {_number(value, group['ci95'].get(key), pct=pct)}")
    probe = result.get("shortcut_probe") or {}
    if probe.get("sources"):
        lines.append("  shortcut probe (per source and true class: how often each class is predicted):")
        for source, rows in probe["sources"].items():
            for true, row in rows.items():
                calls = ", ".join(f"{name} {row['predicted'][name]} ({_number(row['share'][name])})" for name in labels)
                lines.append(f"    {source} {true} (n={row['n']}) called: {calls}")
    return lines


def format_summary(result: dict[str, Any]) -> str:
    """Human-readable summary of a metrics dict (test metrics with 95% CIs, per data source when measured)."""
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
    lines += format_per_source(result)
    return "\n".join(lines)
