"""The Models page for researchers: every registered model side by side, read from its own folder.

Every figure comes from the model folder's metrics.json (written by `train.py` / `python -m xray evaluate`), its
config.json and its README.md card: nothing here is typed by hand, so the page cannot drift from the evaluation.
What a metrics.json lacks (per-source results, a single-image latency) is said to be missing, not filled in.

Figures are grouped by population (children, adults), per data source, because the pooled test set is mostly
children while the app's patients are mostly adults. Models with different classes are compared on the one task
they share, abnormal (pneumonia, COVID-19 included) against normal: a binary model's ROC AUC, and a multi-class
model's one-vs-rest AUC of NORMAL, which is the same ranking. The page is HTML (`page_html`, `card_html`) so that
its tables wrap text inside a 1,200-px page instead of scrolling or breaking numbers apart.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xray.errors import XrayError
from xray.web.registry import strip_front_matter

OVERVIEW_COLUMNS = [
    "Model", "Architecture", "Classes", "Initialisation", "Training data", "Test images", "ECE before → after",
    "Parameters (M)", "Size (MB)", "CPU latency (ms)",
]  # fmt: skip
POPULATION_COLUMNS = ["Model", "Population", "Test images per source", "AUC, abnormal vs normal, per source",
                      "Sensitivity (abnormal)", "Specificity (normal)"]  # fmt: skip
#: Who each data source's patients are (a fact about the data set, not a figure); unknown sources are "other".
SOURCE_POPULATION = {
    "kermany-224": "children", "kermany": "children", "covid-chestxray": "adults", "adult-cxr": "adults",
    "rsna": "adults", "radiography": "adults", "nih": "adults", "cxnet": "adults",
}  # fmt: skip
POPULATION_TEXT = {
    "children": "children aged 1-5 from one hospital in Guangzhou",
    "adults": "adults from several hospitals and publications",
    "other": "patients of other sources",
}
#: The class every model has that means "no finding": the shared task is this class against all others.
NORMAL = "NORMAL"
#: A source is called weak where its figure for the shared task is under these.
WEAK_AUC, WEAK_SHARE = 0.80, 0.80
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
class PopulationFigures:
    """One model's test figures for one population (children, adults) on the shared abnormal-vs-normal task."""

    population: str
    sources: list[tuple[str, int]] = field(default_factory=list)
    #: source -> (AUC, 95% CI) where the source has both classes
    auc: dict[str, tuple[float, Any]] = field(default_factory=dict)
    #: "abnormal" / "normal" -> source -> (correct, n): abnormal called abnormal, normal called NORMAL
    correct: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)

    def add(self, source: str, kind: str, correct: int, n: int) -> None:
        """Add `correct` of `n` images of `kind` from `source`."""
        if n:
            old = self.correct.setdefault(kind, {}).get(source, (0, 0))
            self.correct[kind][source] = (old[0] + correct, old[1] + n)

    @property
    def n(self) -> int:
        """Test images of this population."""
        return sum(n for _, n in self.sources)

    def pooled(self, kind: str) -> tuple[int, int]:
        """(correct, n) of `kind` over the population's sources."""
        pairs = self.correct.get(kind, {}).values()
        return sum(c for c, _ in pairs), sum(n for _, n in pairs)


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
        """`ImageNet weights`, `random (from scratch)` or `fine-tuned from <model>` (a portable name, no path)."""
        from xray.training.card import portable_init

        return portable_init(self.training.get("init"), self.name) if self.training.get("init") else "not recorded"

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
        """Single-image CPU latency in ms and what it is, or (None, why not).

        metrics.json `latency.p50_ms`: one image at a time through `xray.inference.predict.predict`, as
        `xray.training.evaluate.measure_latency` times it. The test set's batched time per image is not a
        single-image latency (batching hides the per-call cost), so it is never shown in its place.
        """
        latency = self.metrics.get("latency")
        if isinstance(latency, dict) and _number(latency.get("p50_ms")):
            threads = latency.get("threads")
            return float(latency["p50_ms"]), "p50, one image" + (f", {threads} threads" if threads else "")
        return None, "not measured (one image)"

    def source_groups(self) -> dict[str, dict[str, Any]]:
        """metrics.json `per_source.sources` (empty when the evaluation did not record it)."""
        return dict((self.metrics.get("per_source") or {}).get("sources") or {})

    def shared_auc(self, group: dict[str, Any]) -> tuple[float | None, list[Any] | None]:
        """ROC AUC of abnormal against NORMAL in a test block: binary `auc`, else one-vs-rest `auc/NORMAL`."""
        key = "auc" if len(self.label_names) == 2 else f"auc/{NORMAL}"
        value = (group.get("value") or {}).get(key)
        return (float(value) if _number(value) else None), (group.get("ci95") or {}).get(key)

    def populations(self) -> list[PopulationFigures]:
        """The test figures of the shared task per population, each with its sources (from `per_source`)."""
        found: dict[str, PopulationFigures] = {}
        normal = self.label_names.index(NORMAL) if NORMAL in self.label_names else None
        for source, group in self.source_groups().items():
            population = SOURCE_POPULATION.get(str(source), "other")
            figures = found.setdefault(population, PopulationFigures(population))
            figures.sources.append((str(source), int(group.get("n") or 0)))
            auc, ci = self.shared_auc(group)
            if auc is not None:
                figures.auc[str(source)] = (auc, ci)
            confusion = group.get("confusion")
            if normal is None or not isinstance(confusion, list):
                continue
            # rows are the true class, columns the predicted one: abnormal = any class but NORMAL
            for true, row in enumerate(confusion):
                called_normal, total = int(row[normal]), int(sum(row))
                if true == normal:
                    figures.add(str(source), "normal", called_normal, total)
                else:
                    figures.add(str(source), "abnormal", total - called_normal, total)
        order = list(POPULATION_TEXT)
        return sorted(found.values(), key=lambda f: order.index(f.population))

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
        from xray.trust.operating import format_threshold

        return f"threshold {format_threshold(threshold)}"
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


def population_auc_text(entry: ModelEntry) -> str:
    """`children AUC 0.98, adults AUC 0.63-0.64 by source` (abnormal vs normal, test set); empty when not recorded.

    Per population, never pooled: a pooled headline is mostly children while the app's patients are mostly adults.
    """
    if entry.error:
        return ""
    parts = []
    for figures in entry.populations():
        aucs = sorted(auc for auc, _ in figures.auc.values())
        if len(aucs) == 1:
            parts.append(f"{figures.population} AUC {aucs[0]:.2f}")
        elif aucs:
            parts.append(f"{figures.population} AUC {aucs[0]:.2f}-{aucs[-1]:.2f} by source")
    return ", ".join(parts)


def selector_info(names: list[str]) -> str:
    """The help line under a model selector: each model's test AUC per population, or that none is recorded."""
    lines = []
    for name in names:
        text = population_auc_text(read_entry(name))
        lines.append(f"{name}: {text or 'no per-population test figures recorded'}")
    return "Test, abnormal vs normal: " + "; ".join(lines) + " (Models page: every figure)." if lines else ""


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


def share_text(correct: int, n: int, *, counts: bool = True) -> str:
    """`86.1% (81.6–89.6), 241 of 280` with its Wilson 95% interval; `n/a` without images."""
    from xray.training.metrics import wilson_interval

    if not n:
        return "n/a"
    text = with_ci(correct / n, list(wilson_interval(correct, n)), pct=True)
    return text + (f", {correct} of {n}" if counts else "")


def _per_source_shares(figures: PopulationFigures, kind: str) -> str:
    pairs = figures.correct.get(kind, {})
    if len(pairs) < 2:
        return ""
    return "; ".join(f"{source} {c / n:.0%} ({c} of {n})" for source, (c, n) in pairs.items())


def population_rows(entries: list[ModelEntry]) -> list[list[Any]]:
    """One row per model and population in `POPULATION_COLUMNS` order: the shared task, per source and pooled.

    AUC is per source (an AUC cannot be pooled from per-source tables); sensitivity and specificity are pooled over
    the population's sources from their confusion matrices, with each source's share after it.
    """
    rows = []
    for e in entries:
        if e.error:
            continue
        for f in e.populations():
            sources = " · ".join(f"{source} {n}" for source, n in f.sources)
            one_class = [source for source, _ in f.sources if source not in f.auc]
            auc = [f"{source} {with_ci(value, ci, pct=False)}" for source, (value, ci) in f.auc.items()]
            if one_class:
                auc.append(f"{', '.join(one_class)}: one class, no AUC")
            cells = []
            for kind in ("abnormal", "normal"):
                text = share_text(*f.pooled(kind))
                detail = _per_source_shares(f, kind)
                cells.append(text + (f" (per source: {detail})" if detail else ""))
            rows.append([
                e.name, POPULATION_TEXT[f.population],
                sources + (f" ({f.n})" if len(f.sources) > 1 else ""), "; ".join(auc) or "n/a", *cells,
            ])  # fmt: skip
    return rows


def _weak_points(e: ModelEntry) -> list[str]:
    """`nih: AUC 0.632, sensitivity 26% (8 of 31)` for each source under `WEAK_AUC` / `WEAK_SHARE`."""
    points = []
    for f in e.populations():
        for source, _ in f.sources:
            parts = []
            if source in f.auc and f.auc[source][0] < WEAK_AUC:
                parts.append(f"AUC {f.auc[source][0]:.3f}")
            for kind, word in (("abnormal", "sensitivity"), ("normal", "specificity")):
                c, n = f.correct.get(kind, {}).get(source, (0, 0))
                if n and c / n < WEAK_SHARE:
                    parts.append(f"{word} {c / n:.0%} ({c} of {n})")
            if parts:
                points.append(f"{source} ({f.population}): {', '.join(parts)}")
    return points


def model_sentence(e: ModelEntry) -> str:
    """A plain sentence on whom the model was validated and where it is weak, generated from its metrics.json."""
    if e.error:
        return f"{e.name} cannot be read: {e.error}"
    populations = e.populations()
    if not populations:
        return f"{e.name}: its metrics.json has no per-source test results, so whom it works for is not known."
    validated = " and ".join(
        f"{f.n} {POPULATION_TEXT[f.population]} ("
        + (", ".join(f"{s} {n}" for s, n in f.sources) if len(f.sources) > 1 else f.sources[0][0])
        + ")"
        for f in populations
    )
    figures = []
    for f in populations:
        sens, spec = f.pooled("abnormal"), f.pooled("normal")
        part = []
        if sens[1]:
            part.append(f"finds {sens[0] / sens[1]:.0%} of abnormal X-rays")
        if spec[1]:
            part.append(f"calls {spec[0] / spec[1]:.0%} of normal ones normal")
        if part:
            figures.append(f"in {f.population} it {' and '.join(part)}")
    weak = _weak_points(e)
    text = f"{e.name} was tested on {validated}"
    text += f"; {'; '.join(figures)}." if figures else "."
    rule = f"AUC under {WEAK_AUC:.2f}, or sensitivity or specificity under {WEAK_SHARE:.0%}"
    if weak:
        text += f" Weak ({rule}) on {'; '.join(weak)}: do not rely on it for patients like these."
    else:
        text += f" No tested source is weak ({rule})."
    return text


def population_advice(entries: list[ModelEntry], population: str = "adults") -> str:
    """Which model measured best for `population` (mean of pooled sensitivity and specificity), said plainly."""
    scored = []
    for e in entries:
        for f in e.populations() if not e.error else []:
            sens, spec = f.pooled("abnormal"), f.pooled("normal")
            if f.population == population and sens[1] and spec[1]:
                scored.append(((sens[0] / sens[1] + spec[0] / spec[1]) / 2, e.name, sens, spec))
    if not scored:
        return f"No model here was tested on {population} with both normal and abnormal X-rays."
    from xray.training.metrics import wilson_interval

    scored.sort(reverse=True)
    figures = "; ".join(
        f"{name}: sensitivity {s[0] / s[1]:.0%}, specificity {p[0] / p[1]:.0%}" for _, name, s, p in scored
    )

    def apart(a: tuple[int, int], b: tuple[int, int]) -> bool:
        (low_a, high_a), (low_b, high_b) = wilson_interval(*a), wilson_interval(*b)
        return high_a < low_b or high_b < low_a

    best = scored[0]
    if len(scored) > 1 and not any(apart(best[2], other[2]) or apart(best[3], other[3]) for other in scored[1:]):
        verdict = (f"no model is measurably better than another ({figures}; pooled over their {population} test "
                   "sources, 95% intervals overlap)")  # fmt: skip
    elif len(scored) > 1:
        verdict = f"{best[1]} measured best ({figures}; pooled over their {population} test sources)"
    else:
        verdict = f"only {best[1]} was tested ({figures})"
    return f"For {population}: {verdict}. Whichever you use, read its weak sources below before trusting a result."


def overview_rows(entries: list[ModelEntry]) -> list[list[Any]]:
    """One row per model in `OVERVIEW_COLUMNS` order."""
    rows = []
    for e in entries:
        if e.error:
            rows.append([e.name, f"unavailable: {e.error}"] + [""] * (len(OVERVIEW_COLUMNS) - 2))
            continue
        before, after = e.ece
        latency, kind = e.latency
        params = e.metrics.get("num_parameters")
        size = e.metrics.get("weights_bytes")
        counts = e.populations()
        test_n = e.test.get("n")
        if counts and test_n:
            test_n = f"{test_n} (" + ", ".join(f"{f.population} {f.n}" for f in counts) + ")"
        rows.append(
            [
                e.name,
                e.architecture,
                ", ".join(e.label_names),
                e.initialisation,
                e.training_data,
                test_n,
                f"{before:.3f} → {after:.3f}" if _number(before) and _number(after) else "n/a",
                round(params / 1e6, 2) if _number(params) else None,
                round(size / 1e6, 1) if _number(size) else None,
                f"{latency:.1f} ({kind})" if latency is not None else kind,
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
        if not e.source_groups():
            notes.append(f"`{e.name}`: no per-source results in its metrics.json (test set pooled only).")
        if e.latency[0] is None:
            notes.append(f"`{e.name}`: no single-image latency in its metrics.json, so it is not in the chart.")
    return notes


CHART_TITLE = "ROC AUC, abnormal vs normal (test set), against single-image CPU latency"
CHART_X = "CPU latency, one image, p50 (ms)"
CHART_Y = "ROC AUC, abnormal vs normal"


def auc_latency_figure(entries: list[ModelEntry]) -> Any:
    """A matplotlib Figure, one panel per test source with an AUC: the shared task's AUC (95% CI) against latency.

    Like with like: every point is the same task (abnormal vs normal) on the same source's test images, against
    the one-image latency; the latency axis starts at 0 and the AUC axis spans chance (0.5) to 1, so that a
    2-ms or 0.01 difference looks as small as it is.
    """
    from matplotlib.figure import Figure

    measured = [e for e in entries if not e.error and e.latency[0] is not None]
    panels: dict[str, list[tuple[ModelEntry, float, Any, int]]] = {}
    populations: dict[str, str] = {}
    for e in measured:
        for f in e.populations():
            for source, n in f.sources:
                if source in f.auc:
                    panels.setdefault(source, []).append((e, *f.auc[source], n))
                    populations[source] = f.population
    if not panels:
        figure = Figure(figsize=(7, 2.5), dpi=100, layout="tight")
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "No model has both a per-source test AUC and a single-image latency", ha="center",
                  va="center")  # fmt: skip
        axes.set_axis_off()
        return figure
    names = [e.name for e in measured]
    figure = Figure(figsize=(min(12, 3.6 * len(panels) + 0.6), 3.8), dpi=100, layout="constrained")
    x_max = 1.5 * max(e.latency[0] for e in measured)
    dodge = 0.015 * x_max  # equal latencies side by side, not on top of each other
    low = min([0.5] + [ci[0] for pts in panels.values() for _, _, ci, _ in pts if _ci_ok(ci)])
    axes_list = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for axes, (source, points) in zip(axes_list, panels.items(), strict=True):
        for e, auc, ci, _n in points:
            index = names.index(e.name)
            x = e.latency[0] + dodge * (index - (len(names) - 1) / 2)
            err = [[auc - ci[0]], [ci[1] - auc]] if _ci_ok(ci) else None
            axes.errorbar([x], [auc], yerr=err, fmt="o", color=f"C{index}", capsize=4, label=e.name)
            axes.annotate(e.name, (x, auc), textcoords="offset points", color=f"C{index}",
                          xytext=(8, -4 - 12 * index), fontsize="small")  # fmt: skip
        counts = sorted({n for *_, n in points})
        n_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        axes.set_title(f"{populations[source]}: {source} (n={n_text})", fontsize="medium")
        axes.set_xlim(0, x_max)
        axes.set_ylim(math.floor(low * 10) / 10, 1.0)
        axes.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        axes.set_xlabel(CHART_X)
        axes.grid(True, alpha=0.3)
    axes_list[0].set_ylabel(CHART_Y)
    figure.suptitle(CHART_TITLE + " (bars: 95% CI; dotted: chance)", fontsize="medium")
    return figure


def _ci_ok(ci: Any) -> bool:
    return isinstance(ci, (list, tuple)) and len(ci) == 2 and _number(ci[0]) and _number(ci[1])


# ---------------------------------------------------------------------------------------------- HTML

#: The page's own styles (inside its HTML, so every page that shows it gets them). Tables take the page width
#: and wrap text at spaces only: a number or a word never breaks across lines ("6 2 4", "fla gg ed"), and a
#: table wider than the page scrolls inside its own box instead of widening the page.
PAGE_CSS = """
.xray-models-page {max-width: 100%; overflow-wrap: normal;}
.xray-models-page .xray-table-wrap {max-width: 100%; overflow-x: auto; margin: 0 0 1em 0;}
.xray-models-page table {width: 100%; border-collapse: collapse; table-layout: auto; font-size: 0.85em;
  margin: 0; display: table;}
.xray-models-page th, .xray-models-page td {border: 1px solid #d4d4d8; padding: 4px 6px; vertical-align: top;
  text-align: left; word-break: normal !important; overflow-wrap: normal !important; hyphens: none !important;
  white-space: normal; min-width: 0;}
.xray-models-page th {background: #f4f4f5;}
.xray-models-page td.num, .xray-models-page th.num {white-space: nowrap !important; text-align: right;}
.xray-models-page td.one {white-space: nowrap !important;}
.xray-models-page code {word-break: normal !important; overflow-wrap: anywhere !important; white-space: normal;}
.xray-models-page li {margin-bottom: 0.4em;}
"""
_NUMERIC = re.compile(r"^[\s\d.,%()–\-/:<>=]*\d[\s\d.,%()–\-/:<>=]*$")


def _cell_class(text: str) -> str:
    """`num` (a number: one line, right-aligned), `one` (a single word such as `covid-chestxray`: one line) or ""."""
    if _NUMERIC.match(text):
        return "num"
    return "one" if text.strip() and not re.search(r"\s", text.strip()) else ""


def _cell(value: Any, tag: str = "td") -> str:
    text = "" if value is None else str(value)
    kind = _cell_class(text)
    attrs = f' class="{kind}"' if kind else ""
    return f"<{tag}{attrs}>{html.escape(text)}</{tag}>"


def table_html(
    columns: list[str], rows: list[list[Any]], *, elem_id: str, cell: Callable[[Any], str] | None = None
) -> str:
    """An HTML table in a box of its own (it scrolls sideways rather than widening the page).

    `cell` renders one body cell (default `_cell`), e.g. to put a confidence interval on a line of its own.
    """
    render = cell or _cell
    head = "".join(_cell(c, "th") for c in columns)
    body = "".join("<tr>" + "".join(render(v) for v in row) + "</tr>" for row in rows)
    return (f'<div class="xray-table-wrap"><table id="{elem_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")  # fmt: skip


def _page(body: str) -> str:
    return f'<div class="xray-models-page"><style>{PAGE_CSS}</style>{body}</div>'


def summary_html(entries: list[ModelEntry]) -> str:
    """Whom each model was tested on and where it is weak, then the per-population table."""
    sentences = "".join(f"<li>{html.escape(model_sentence(e))}</li>" for e in entries)
    advice = html.escape(population_advice(entries, "adults"))
    return _page(
        "<h3>Whom each model was tested on</h3>"
        f"<p><strong>{advice}</strong></p><ul>{sentences}</ul>"
        "<p>Shared task for every model: abnormal (pneumonia, COVID-19 included) against normal. AUC per data "
        "source (95% CI); sensitivity and specificity pooled over the population's sources (Wilson 95% CI), each "
        "source's share after it.</p>"
        + table_html(POPULATION_COLUMNS, population_rows(entries), elem_id="xray-models-populations")
    )


def latency_sources(entries: list[ModelEntry]) -> list[str]:
    """Where each shown latency comes from (metrics.json `latency.source`), models with the same source together."""
    by_source: dict[str, list[str]] = {}
    for e in entries:
        latency = e.metrics.get("latency") if not e.error else None
        if isinstance(latency, dict) and latency.get("source") and e.latency[0] is not None:
            by_source.setdefault(str(latency["source"]), []).append(e.name)
    return [f"CPU latency of {', '.join(names)}: {source}." for source, names in by_source.items()]


def tables_html(entries: list[ModelEntry]) -> str:
    """The overview table, every test figure per data source, and what the metrics.json files lack."""
    notes = missing_notes(entries)
    notes_html = ("<p>Not recorded:</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
                  if notes else "")  # fmt: skip
    caveats = "".join(
        f"<li><strong>{html.escape(e.name)}</strong>: {html.escape(e.caveat)}</li>" for e in entries if e.caveat
    )
    return _page(
        "<h3>Models</h3>"
        + table_html(OVERVIEW_COLUMNS, overview_rows(entries), elem_id="xray-models-overview")
        + (f"<p>Caveats, shown with every prediction of the model:</p><ul>{caveats}</ul>" if caveats else "")
        + "".join(f"<p>{html.escape(note)}</p>" for note in latency_sources(entries))
        + "<h3>Test metrics, pooled and per data source</h3>"
        + table_html(METRIC_COLUMNS, metric_rows(entries), elem_id="xray-models-metrics")
        + notes_html
    )


def card_html(entry: ModelEntry) -> str:
    """The model card as HTML (raw HTML in the card is escaped), its tables laid out like the page's."""
    from markdown_it import MarkdownIt

    if entry.error:
        return _page(f"<p><strong>{html.escape(entry.name)}</strong> cannot be read: {html.escape(entry.error)}</p>")
    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(entry.card)
    rendered = rendered.replace("<table>", '<div class="xray-table-wrap"><table>').replace("</table>", "</table></div>")
    def cell(match: re.Match[str]) -> str:
        kind = _cell_class(html.unescape(match[1]))
        return f'<td class="{kind}">{match[1]}</td>' if kind else match[0]

    rendered = re.sub(r"<td>([^<]*)</td>", cell, rendered)
    return _page(rendered)


def about_html(info: Any) -> str:
    """The About tab for one registered model: name, architecture, version and AUC per population, then its card.

    Args:
        info: the model's `xray.web.registry.ModelInfo`.
    """
    if info.error:
        return _page(f"<p><strong>{html.escape(info.name)}</strong> cannot be loaded: {html.escape(info.error)}</p>")
    from xray.inference.models import load_model

    loaded = load_model(info.name)
    entry = read_entry(info.name)
    figures = population_auc_text(entry)
    test = f"test: {html.escape(figures)}" if figures else "no per-population test metrics (see the Models page)"
    heading = (
        f"<p><strong>{html.escape(info.name)}</strong> · {html.escape(loaded.architecture)} · version "
        f"<code>{html.escape(loaded.version)}</code> · {test}</p><hr>"
    )
    return heading + card_html(entry)
