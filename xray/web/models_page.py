"""The Models page for researchers: every registered model side by side, read from its own folder.

Every figure comes from the model folder's metrics.json (written by `train.py` / `python -m xray evaluate`), its
config.json and its README.md card: nothing here is typed by hand, so the page cannot drift from the evaluation.
What a metrics.json lacks (per-source results, a single-image latency) is said to be missing, not filled in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xray.errors import XrayError
from xray.web.registry import strip_front_matter

OVERVIEW_COLUMNS = [
    "Model", "Architecture", "Classes", "Initialisation", "Training data", "Test images", "Test AUC (95% CI)",
    "ECE before → after", "Parameters (M)", "Size (MB)", "CPU latency (ms)", "Caveat",
]  # fmt: skip
METRIC_COLUMNS = ["Model", "Source", "Images", "Decision", "AUC (95% CI)", "Accuracy (95% CI)",
                  "Sensitivity (95% CI)", "Specificity (95% CI)"]  # fmt: skip
#: The row of the whole test set, before the rows of each data source.
POOLED = "test set, all sources"


@dataclass
class MetricRow:
    """One model's figures on one data source (or the whole test set)."""

    source: str
    n: int | None
    counts: dict[str, int]
    decision: str
    value: dict[str, Any]
    ci95: dict[str, Any]


@dataclass
class ModelEntry:
    """What the Models page shows about one registered model."""

    name: str
    error: str | None = None
    architecture: str = ""
    label_names: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    caveat: str | None = None
    card: str = ""

    @property
    def training(self) -> dict[str, Any]:
        """metrics.json `training` (empty when absent)."""
        return self.metrics.get("training") or {}

    @property
    def data(self) -> dict[str, Any]:
        """metrics.json `data` (empty when absent or not a dict)."""
        data = self.metrics.get("data")
        return data if isinstance(data, dict) else {}

    @property
    def test(self) -> dict[str, Any]:
        """metrics.json `test` (empty when absent)."""
        return self.metrics.get("test") or {}

    @property
    def initialisation(self) -> str:
        """`ImageNet weights`, `random (from scratch)` or `fine-tuned from <model>`."""
        init = self.training.get("init")
        if not init:
            return "not recorded"
        if init == "imagenet":
            return "ImageNet weights"
        if init == "scratch":
            return "random (from scratch)"
        return f"fine-tuned from {init}"

    @property
    def sources(self) -> list[str]:
        """The training data sources by folder name (`kermany-224`), or the data set names."""
        raw = self.data.get("sources") or self.training.get("data") or self.training.get("dataset") or []
        return [Path(str(s)).name or str(s) for s in raw]

    @property
    def training_data(self) -> str:
        """`kermany-224, covid-chestxray; train 4471 · val 745 · test 624 images; sampling ...`."""
        parts = [", ".join(self.sources) or "not recorded"]
        counts = self.data.get("split_counts") or {}
        sizes = [
            f"{split} {sum(v for k, v in counts[split].items() if k in self.label_names)}"
            for split in ("train", "val", "test")
            if isinstance(counts.get(split), dict)
        ]
        if sizes:
            parts.append(" · ".join(sizes) + " images")
        if self.data.get("sampling"):
            parts.append(f"sampling: {self.data['sampling']}")
        if self.data.get("label_map"):
            parts.append(f"label map: {self.data['label_map']}")
        return "; ".join(parts)

    @property
    def headline(self) -> tuple[float | None, list[Any] | None]:
        """Test ROC AUC (macro one-vs-rest for more than two classes) and its 95% CI."""
        block = self.test.get("at_default") or {}
        return (block.get("value") or {}).get("auc"), (block.get("ci95") or {}).get("auc")

    @property
    def ece(self) -> tuple[float | None, float | None]:
        """Test expected calibration error before and after temperature scaling."""
        calibration = self.test.get("calibration") or {}
        return calibration.get("ece_before"), calibration.get("ece_after")

    @property
    def latency(self) -> tuple[float | None, str]:
        """CPU latency in ms and what it is.

        metrics.json `latency.p50_ms` (one image at a time, as `xray.training.evaluate.measure_latency` times it)
        when measured; else the test set's inference time per image (`test_inference_seconds / test.n`, batched,
        on the training machine), said so.
        """
        latency = self.metrics.get("latency")
        if isinstance(latency, dict) and _number(latency.get("p50_ms")):
            return float(latency["p50_ms"]), "p50, one image"
        seconds, n = self.metrics.get("test_inference_seconds"), self.test.get("n")
        if _number(seconds) and n:
            device = self.training.get("device", "cpu")
            threads = self.training.get("threads")
            where = f"{device}, {threads} thread{'' if threads == 1 else 's'}" if threads else device
            return 1000 * float(seconds) / int(n), f"test set batched, per image ({where})"
        return None, "not measured"

    def metric_rows(self) -> list[MetricRow]:
        """The whole test set, then each data source from `per_source` (when the evaluation recorded it)."""
        if not self.test:
            return []
        binary = len(self.label_names) == 2
        block = (self.test.get("at_threshold") if binary else None) or self.test.get("at_default") or {}
        rows = [
            MetricRow(
                source=POOLED,
                n=self.test.get("n"),
                counts=dict(self.test.get("counts") or {}),
                decision=_decision(block.get("threshold"), binary),
                value=block.get("value") or {},
                ci95=block.get("ci95") or {},
            )
        ]
        per_source = self.metrics.get("per_source") or {}
        for source, group in (per_source.get("sources") or {}).items():
            rows.append(
                MetricRow(
                    source=str(source),
                    n=group.get("n"),
                    counts=dict(group.get("counts") or {}),
                    decision=_decision(per_source.get("threshold"), binary),
                    value=group.get("value") or {},
                    ci95=group.get("ci95") or {},
                )
            )
        return rows


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _decision(threshold: Any, binary: bool) -> str:
    if binary and _number(threshold):
        return f"threshold {float(threshold):.3f}"
    return "highest probability"


def read_entry(name: str) -> ModelEntry:
    """A registered model's metrics.json, config.json caveat and README.md card (weights are not loaded)."""
    from xray.inference.models import config_caveat
    from xray.web.registry import model_files

    try:
        folder, config, metrics = model_files(name)
        card_path = folder / "README.md"
        card = strip_front_matter(card_path.read_text(encoding="utf-8")) if card_path.is_file() else ""
    except (XrayError, OSError, ValueError) as exc:
        return ModelEntry(name=name, error=str(exc))
    return ModelEntry(
        name=name,
        architecture=str(metrics.get("architecture") or config.get("architecture", "")),
        label_names=list(metrics.get("label_names") or config.get("label_names") or []),
        metrics=metrics if isinstance(metrics, dict) else {},
        caveat=config_caveat(config),
        card=card or "_This model has no model card (README.md)._",
    )


def read_entries(names: list[str]) -> list[ModelEntry]:
    """`read_entry` for every registered model, in the app's order."""
    return [read_entry(name) for name in names]


# ---------------------------------------------------------------------------------------------- cells


def with_ci(value: Any, ci: Any, *, pct: bool) -> str:
    """`93.3% (91.2–95.2)` or `0.972 (0.957–0.985)`; `n/a` without a value."""
    if not _number(value):
        return "n/a"
    scale, unit, digits = (100, "%", 1) if pct else (1, "", 3)
    text = f"{scale * value:.{digits}f}{unit}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and _number(ci[0]) and _number(ci[1]):
        text += f" ({scale * ci[0]:.{digits}f}–{scale * ci[1]:.{digits}f})"
    return text


def _per_class(row: MetricRow, key: str, labels: list[str]) -> str:
    """`NORMAL 74.7% (68.4–79.7); PNEUMONIA ...` for a metric defined per class."""
    cells = [
        f"{label} {with_ci(row.value.get(f'{key}/{label}'), row.ci95.get(f'{key}/{label}'), pct=True)}"
        for label in labels
        if _number(row.value.get(f"{key}/{label}"))
    ]
    return "; ".join(cells) or "n/a"


def overview_rows(entries: list[ModelEntry]) -> list[list[Any]]:
    """One row per model in `OVERVIEW_COLUMNS` order."""
    rows = []
    for e in entries:
        if e.error:
            rows.append([e.name, f"unavailable: {e.error}"] + [""] * (len(OVERVIEW_COLUMNS) - 2))
            continue
        auc, auc_ci = e.headline
        before, after = e.ece
        latency, kind = e.latency
        params = e.metrics.get("num_parameters")
        size = e.metrics.get("weights_bytes")
        rows.append(
            [
                e.name,
                e.architecture,
                ", ".join(e.label_names),
                e.initialisation,
                e.training_data,
                e.test.get("n"),
                with_ci(auc, auc_ci, pct=False),
                f"{before:.3f} → {after:.3f}" if _number(before) and _number(after) else "n/a",
                round(params / 1e6, 2) if _number(params) else None,
                round(size / 1e6, 1) if _number(size) else None,
                f"{latency:.1f} ({kind})" if latency is not None else kind,
                e.caveat or "",
            ]
        )
    return rows


def metric_rows(entries: list[ModelEntry]) -> list[list[Any]]:
    """Per model, the whole test set then each data source, in `METRIC_COLUMNS` order.

    Binary models: at the model's operating threshold, sensitivity and specificity of the positive class.
    More classes: highest probability, macro AUC, and each class's sensitivity and specificity.
    """
    rows = []
    for e in entries:
        binary = len(e.label_names) == 2
        for row in e.metric_rows():
            counts = ", ".join(f"{k} {v}" for k, v in row.counts.items() if v)
            if binary:
                sens = with_ci(row.value.get("sensitivity"), row.ci95.get("sensitivity"), pct=True)
                spec = with_ci(row.value.get("specificity"), row.ci95.get("specificity"), pct=True)
            else:
                sens = _per_class(row, "sensitivity", e.label_names)
                spec = _per_class(row, "specificity", e.label_names)
            rows.append(
                [
                    e.name,
                    row.source,
                    f"{row.n} ({counts})" if counts else row.n,
                    row.decision,
                    with_ci(row.value.get("auc"), row.ci95.get("auc"), pct=False),
                    with_ci(row.value.get("accuracy"), row.ci95.get("accuracy"), pct=True),
                    sens,
                    spec,
                ]
            )
    return rows


def missing_notes(entries: list[ModelEntry]) -> list[str]:
    """What the metrics.json files do not record, model by model (so a blank is never read as a zero)."""
    notes = []
    for e in entries:
        if e.error:
            continue
        if not e.metrics:
            notes.append(f"`{e.name}` has no metrics.json.")
            continue
        if not (e.metrics.get("per_source") or {}).get("sources"):
            notes.append(f"`{e.name}`: no per-source results in its metrics.json (test set pooled only).")
        if e.latency[0] is not None and e.latency[1] != "p50, one image":
            notes.append(f"`{e.name}`: no single-image latency in its metrics.json; the test set's batched time "
                         "per image is shown instead.")  # fmt: skip
    return notes


def auc_latency_figure(entries: list[ModelEntry]) -> Any:
    """A matplotlib Figure: test ROC AUC (95% CI bars) against CPU latency, one labelled point per model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100, layout="tight")
    axes = figure.add_subplot()
    plotted = 0
    for e in entries:
        auc, ci = e.headline
        latency, kind = e.latency
        if e.error or not _number(auc) or latency is None:
            continue
        err = None
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and _number(ci[0]) and _number(ci[1]):
            err = [[auc - ci[0]], [ci[1] - auc]]
        marker = "o" if kind == "p50, one image" else "s"
        axes.errorbar([latency], [auc], yerr=err, fmt=marker, capsize=4, label=f"{e.name} ({kind})")
        axes.annotate(e.name, (latency, auc), textcoords="offset points", xytext=(6, 6))
        plotted += 1
    if not plotted:
        axes.text(0.5, 0.5, "No model has both a test AUC and a latency", ha="center", va="center")
        axes.set_axis_off()
        return figure
    axes.set_xlabel("CPU latency per image (ms)")
    axes.set_ylabel("Test ROC AUC (macro for >2 classes)")
    axes.set_title("Test AUC against CPU latency (from each model's metrics.json)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    axes.margins(x=0.3, y=0.2)
    return figure
