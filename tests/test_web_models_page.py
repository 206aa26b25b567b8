"""xray.web.models_page: every registered model side by side, every figure equal to its metrics.json."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pytest

from xray.config import PROJECT_ROOT
from xray.web import models_page

BUNDLED = ["pneumonia", "covid"]


def _metrics(name: str) -> dict:
    return json.loads((PROJECT_ROOT / "models" / name / "metrics.json").read_text(encoding="utf-8"))


def _ci(value: float | None, ci: list[float] | None, pct: bool) -> str:
    """The cell a figure and its interval should give (written independently of `models_page.with_ci`)."""
    if value is None:
        return "n/a"
    text = f"{100 * value:.1f}%" if pct else f"{value:.3f}"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if pct else f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return text


def test_overview_figures_equal_each_bundled_metrics_json():
    from xray.inference.models import config_caveat, read_config

    entries = models_page.read_entries(BUNDLED)
    columns = models_page.OVERVIEW_COLUMNS
    rows = {row[0]: dict(zip(columns, row, strict=True)) for row in models_page.overview_rows(entries)}
    assert list(rows) == BUNDLED
    for name in BUNDLED:
        m, row = _metrics(name), rows[name]
        cal = m["test"]["calibration"]
        assert row["ECE before → after"] == f"{cal['ece_before']:.3f} → {cal['ece_after']:.3f}"
        assert row["Parameters (M)"] == round(m["num_parameters"] / 1e6, 2)
        assert row["Size (MB)"] == round(m["weights_bytes"] / 1e6, 1)
        assert str(row["Test images"]).startswith(f"{m['test']['n']} (children ")
        assert row["Architecture"] == m["architecture"]
        # one image at a time, never the test set's batched time per image
        latency = m["latency"]
        assert row["CPU latency (ms)"] == f"{latency['p50_ms']:.1f} (p50, one image, {latency['threads']} threads)"
        assert row["Classes"] == ", ".join(m["label_names"])
        init = m["training"]["init"]
        assert row["Initialisation"] == "ImageNet weights" if init == "imagenet" else row["Initialisation"].startswith(
            "fine-tuned from "
        )
        assert not any(part in row["Initialisation"] for part in ("/", "local-dir:"))
        assert row["Training data"].startswith(", ".join(Path(s).name for s in m["data"]["sources"]) + "; train ")
        caveat = config_caveat(read_config(PROJECT_ROOT / "models" / name))
        if caveat:  # under the table, not squeezed into a column
            assert html.escape(caveat) in models_page.tables_html(entries)
        # where the latency comes from is said on the page
        assert html.escape(latency["source"]) in models_page.tables_html(entries)


def test_metric_rows_equal_the_test_and_per_source_blocks():
    entries = models_page.read_entries(BUNDLED)
    rows = [dict(zip(models_page.METRIC_COLUMNS, row, strict=True)) for row in models_page.metric_rows(entries)]
    for name in BUNDLED:
        m = _metrics(name)
        labels = m["label_names"]
        binary = len(labels) == 2
        # a binary model is reported at its operating threshold, more classes at the highest probability
        pooled = m["test"].get("at_threshold") if binary else None
        pooled = pooled or m["test"]["at_default"]
        groups = [(models_page.POOLED, m["test"]["n"], m["test"]["counts"], pooled)]
        sources = (m.get("per_source") or {}).get("sources") or {}
        groups += [(source, g["n"], g["counts"], g) for source, g in sources.items()]
        mine = [r for r in rows if r["Model"] == name]
        assert [r["Source"] for r in mine] == [g[0] for g in groups]
        for row, (_source, n, counts, block) in zip(mine, groups, strict=True):
            value, ci = block["value"], block["ci95"]
            assert row["Images"] == f"{n} (" + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ")"
            assert row["AUC (95% CI)"] == _ci(value.get("auc"), ci.get("auc"), pct=False)
            assert row["Accuracy (95% CI)"] == _ci(value.get("accuracy"), ci.get("accuracy"), pct=True)
            if binary:
                assert row["Decision"].startswith("threshold ")
                assert row["Sensitivity (95% CI)"] == _ci(value.get("sensitivity"), ci.get("sensitivity"), pct=True)
                assert row["Specificity (95% CI)"] == _ci(value.get("specificity"), ci.get("specificity"), pct=True)
            else:
                assert row["Decision"] == "highest probability"
                for label in labels:
                    key = f"sensitivity/{label}"
                    if value.get(key) is not None:
                        assert f"{label} {_ci(value[key], ci.get(key), pct=True)}" in row["Sensitivity (95% CI)"]
        assert mine[0]["Decision"] == (f"threshold {pooled['threshold']:.3f}" if binary else "highest probability")
    notes = models_page.missing_notes(entries)
    for name in BUNDLED:
        m = _metrics(name)
        assert any(f"`{name}`" in n and "per-source" in n for n in notes) == (not m.get("per_source"))
        assert any(f"`{name}`" in n and "latency" in n for n in notes) == (not isinstance(m.get("latency"), dict))


def test_per_source_rows_and_single_image_latency_when_recorded(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    group = {"n": 10, "counts": {"NORMAL": 4, "PNEUMONIA": 6},
             "value": {"auc": 0.9, "accuracy": 0.8, "sensitivity": 0.5, "specificity": 1.0},
             "ci95": {"auc": [0.7, 1.0], "accuracy": [0.49, 0.94]}}  # fmt: skip
    one_class = {"n": 3, "counts": {"NORMAL": 3, "PNEUMONIA": 0}, "value": {"auc": None, "accuracy": 1.0,
                 "specificity": 1.0}, "ci95": {"accuracy": [0.44, 1.0]}}  # fmt: skip
    metrics = {
        "architecture": "mobilenetv3_small_100", "label_names": ["NORMAL", "PNEUMONIA"],
        "test": {"n": 13, "counts": {"NORMAL": 7, "PNEUMONIA": 6}, "at_default": group, "calibration": {}},
        "per_source": {"threshold": 0.5, "sources": {"rsna": group, "nih": one_class}},
        "latency": {"p50_ms": 12.5, "p90_ms": 14.0}, "training": {"init": "scratch"},
        "data": {"sources": ["data/adult-cxr"], "sampling": "balanced per source", "label_map": "COVID-19=PNEUMONIA"},
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# My card\n")
    (tmp_path / "broken").mkdir()
    entries = models_page.read_entries([f"local-dir:{folder}", f"local-dir:{tmp_path / 'broken'}"])
    good, broken = entries
    assert good.card == "# My card\n" and good.latency == (12.5, "p50, one image")
    assert good.training_data == "adult-cxr; sampling: balanced per source; label map: COVID-19=PNEUMONIA"
    rows = models_page.metric_rows(entries)
    assert [r[1] for r in rows] == [models_page.POOLED, "rsna", "nih"]
    assert rows[2][4] == "n/a" and rows[2][5] == "100.0% (44.0–100.0)" and rows[1][6] == "50.0%"
    overview = models_page.overview_rows(entries)
    assert overview[0][9] == "12.5 (p50, one image)" and overview[0][3] == "random (from scratch)"
    assert overview[1][1].startswith("unavailable:") and broken.error
    assert models_page.missing_notes(entries) == []


@pytest.mark.parametrize(("value", "ci", "pct", "text"), [
    (0.5, [0.25, 0.75], True, "50.0% (25.0–75.0)"), (0.9, None, False, "0.900"), (None, [0, 1], True, "n/a"),
    (float("nan"), None, False, "n/a"),
])  # fmt: skip
def test_with_ci(value, ci, pct, text):
    assert models_page.with_ci(value, ci, pct=pct) == text


# ------------------------------------------------------------------------------------- populations (issue 21)

POPULATION = {"kermany-224": "children", "covid-chestxray": "adults", "rsna": "adults", "radiography": "adults",
              "nih": "adults", "cxnet": "adults"}  # fmt: skip


def _shared_task(m: dict) -> dict[str, dict[str, list[int]]]:
    """Per population: [abnormal called abnormal, abnormal], [normal called normal, normal] from the confusions."""
    labels = m["label_names"]
    normal = labels.index("NORMAL")
    out: dict[str, dict[str, list[int]]] = {}
    for source, group in m["per_source"]["sources"].items():
        pop = out.setdefault(POPULATION[source], {"abnormal": [0, 0], "normal": [0, 0]})
        for true, row in enumerate(group["confusion"]):
            kind = "normal" if true == normal else "abnormal"
            hit = row[normal] if true == normal else sum(row) - row[normal]
            pop[kind][0] += hit
            pop[kind][1] += sum(row)
    return out


def test_one_row_per_population_with_each_sources_figures():
    """Children and adults apart, per source: the headline is no longer mostly children (624 of 932 images)."""
    from xray.training.metrics import wilson_interval

    entries = models_page.read_entries(BUNDLED)
    rows = [dict(zip(models_page.POPULATION_COLUMNS, r, strict=True)) for r in models_page.population_rows(entries)]
    assert [(r["Model"], r["Population"].split()[0]) for r in rows] == [
        (name, pop) for name in BUNDLED for pop in ("children", "adults")
    ]
    for row in rows:
        m = _metrics(row["Model"])
        pop = row["Population"].split()[0]
        sources = {s: g for s, g in m["per_source"]["sources"].items() if POPULATION[s] == pop}
        assert row["Test images per source"].startswith(" · ".join(f"{s} {g['n']}" for s, g in sources.items()))
        auc_key = "auc" if len(m["label_names"]) == 2 else "auc/NORMAL"  # the same task for both models
        for source, group in sources.items():
            if group["value"].get(auc_key) is not None:
                cell = f"{source} {_ci(group['value'][auc_key], group['ci95'][auc_key], pct=False)}"
                assert cell in row["AUC, abnormal vs normal, per source"]
        for kind, column in (("abnormal", "Sensitivity (abnormal)"), ("normal", "Specificity (normal)")):
            hit, n = _shared_task(m)[pop][kind]
            assert row[column].startswith(f"{_ci(hit / n, list(wilson_interval(hit, n)), pct=True)}, {hit} of {n}")
    adults = {r["Model"]: r for r in rows if r["Population"].startswith("adults")}
    nih = _metrics("pneumonia")["per_source"]["sources"]["nih"]["value"]["auc"]
    assert f"nih {nih:.3f}" in adults["pneumonia"]["AUC, abnormal vs normal, per source"]
    assert "rsna, radiography, cxnet: one class, no AUC" in adults["pneumonia"]["AUC, abnormal vs normal, per source"]


def _entry_with_sources(sources: dict) -> models_page.ModelEntry:
    return models_page.ModelEntry(name="m", label_names=["NORMAL", "PNEUMONIA"], metrics={
        "test": {"n": 1}, "per_source": {"sources": sources}, "latency": {"p50_ms": 20.0}})  # fmt: skip


def _group(confusion: list[list[int]], auc: float | None) -> dict:
    return {"n": sum(map(sum, confusion)), "confusion": confusion, "value": {"auc": auc}, "ci95": {}}


def test_sentence_says_whom_it_was_tested_on_and_where_it_is_weak():
    """Generated from the metrics: change a figure and the sentence follows."""
    strong = _entry_with_sources({"kermany-224": _group([[90, 10], [5, 95]], 0.97),
                                  "nih": _group([[27, 3], [4, 26]], 0.91)})  # fmt: skip
    text = models_page.model_sentence(strong)
    assert "200 children aged 1-5" in text and "60 adults" in text and "(kermany-224)" in text
    assert "in adults it finds 87% of abnormal X-rays and calls 90% of normal ones normal" in text
    assert "No tested source is weak" in text
    weak = _entry_with_sources({"kermany-224": _group([[90, 10], [5, 95]], 0.97),
                                "nih": _group([[26, 4], [23, 8]], 0.63)})  # fmt: skip
    text = models_page.model_sentence(weak)
    assert "Weak" in text and "nih (adults): AUC 0.630, sensitivity 26% (8 of 31)" in text
    assert "kermany-224" not in text.split("Weak")[1]
    for entry in models_page.read_entries(BUNDLED):  # the bundled models: their own nih figures, when weak
        m = _metrics(entry.name)
        nih = m["per_source"]["sources"]["nih"]
        auc = nih["value"]["auc" if len(m["label_names"]) == 2 else "auc/NORMAL"]
        sentence = models_page.model_sentence(entry)
        if auc < models_page.WEAK_AUC:
            assert f"nih (adults): AUC {auc:.3f}" in sentence
        else:
            assert f"nih (adults): AUC {auc:.3f}" not in sentence
    advice = models_page.population_advice(models_page.read_entries(BUNDLED))
    assert advice.startswith("For adults: ") and all(name in advice for name in BUNDLED)


def test_chart_compares_the_same_task_against_single_image_latency():
    """One panel per source; same task for every model; latency axis from 0; AUC axis up to 1; labelled."""
    entries = models_page.read_entries(BUNDLED)
    figure = models_page.auc_latency_figure(entries)
    titles = [a.get_title() for a in figure.axes]
    assert titles[0].startswith("children: kermany-224") and any(t.startswith("adults: nih") for t in titles)
    for axes in figure.axes:
        assert axes.get_xlabel() == models_page.CHART_X and axes.get_xlim()[0] == 0
        low, high = axes.get_xlim()
        latencies = [_metrics(n)["latency"]["p50_ms"] for n in BUNDLED]
        assert high >= 1.4 * max(latencies)  # a 2-ms difference cannot fill the width
        assert axes.get_ylim()[1] == 1.0 and axes.get_ylim()[0] <= 0.5
        assert sorted(t.get_text() for t in axes.texts) == sorted(BUNDLED)
    assert figure.axes[0].get_ylabel() == models_page.CHART_Y
    kermany = figure.axes[0]
    plotted = sorted(round(float(line.get_ydata()[0]), 6) for line in kermany.lines if len(line.get_ydata()) == 1
                     and line.get_marker() == "o")  # fmt: skip
    expected = sorted(round(_metrics(n)["per_source"]["sources"]["kermany-224"]["value"][k], 6)
                      for n, k in (("pneumonia", "auc"), ("covid", "auc/NORMAL")))  # fmt: skip
    assert plotted == expected
    # a model without a single-image latency is left out (and said so), never plotted at a batched time
    no_latency = models_page.ModelEntry(name="x", label_names=["NORMAL", "PNEUMONIA"], metrics={
        "test": {"n": 3}, "test_inference_seconds": 0.1,
        "per_source": {"sources": {"nih": _group([[1, 0], [0, 2]], 1)}}})  # fmt: skip
    empty = models_page.auc_latency_figure([no_latency])
    assert "No model" in empty.axes[0].texts[0].get_text()
    assert any("no single-image latency" in n for n in models_page.missing_notes([no_latency]))


def test_cards_and_page_show_portable_names_only():
    """No development path (`/work/...`, `../shared/...`) and no model named as its own parent."""
    from xray.training.card import read_gate, render_model_card

    for entry in models_page.read_entries(BUNDLED):
        folder = PROJECT_ROOT / "models" / entry.name
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        # the committed card is the one card.py renders now
        rendered = render_model_card(config, _metrics(entry.name), read_gate(folder), name=entry.name)
        assert (folder / "README.md").read_text(encoding="utf-8") == rendered
        shown = " ".join([entry.card, entry.initialisation, entry.training_data])
        for path in ("/work/", "../shared", "local-dir:/", "local-dir:models", "local-dir:runs"):
            assert path not in shown, (entry.name, path)
        assert f"fine-tuned from {entry.name}" not in shown
    pneumonia = models_page.read_entry("pneumonia")
    assert pneumonia.initialisation == "ImageNet weights"
    assert models_page.read_entry("covid").initialisation == "fine-tuned from the training run pneu-adult"


# ------------------------------------------------------------------------------------------ layout (browser)

CHROMIUM = Path("/usr/bin/chromium")
#: Counts the lines of text each cell is laid out on, and each table's width against its box.
LAYOUT_JS = """() => {
  const lines = (el) => {
    const range = document.createRange(); range.selectNodeContents(el);
    return new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top))).size;
  };
  const tables = [...document.querySelectorAll('.xray-table-wrap')].map(wrap => ({
    id: wrap.querySelector('table').id, box: wrap.clientWidth, width: wrap.querySelector('table').scrollWidth}));
  // a cell of one word or one number must sit on one line (no "6 2 4", no "fla gg ed")
  const broken = [...document.querySelectorAll('td, th')].filter(c => !/\\s/.test(c.textContent.trim()) &&
    c.textContent.trim() && lines(c) > 1).map(c => c.textContent.trim());
  return {tables, broken, page: document.documentElement.scrollWidth};
}"""


@pytest.mark.browser
def test_tables_fit_a_1200_px_page_and_never_break_a_number_or_word():
    """The whole Models page HTML (summary, tables, every card) in headless Chromium, 1,200 px wide."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium missing: apt-get install -y chromium chromium-driver (.ci/run does this)")
    from playwright.sync_api import sync_playwright

    entries = models_page.read_entries(BUNDLED)
    body = models_page.summary_html(entries) + models_page.tables_html(entries)
    body += "".join(models_page.card_html(e) for e in entries)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_content(f'<html><body style="margin:0"><div style="width:1200px">{body}</div></body></html>')
            layout = page.evaluate(LAYOUT_JS)
        finally:
            browser.close()
    by_id = {t["id"]: t for t in layout["tables"]}
    for elem_id in ("xray-models-populations", "xray-models-overview", "xray-models-metrics"):
        assert by_id[elem_id]["width"] <= by_id[elem_id]["box"] <= 1200, by_id[elem_id]
    assert layout["page"] <= 1280 and layout["broken"] == []
    assert "624" in body and "flagged" in body  # the gate table's numbers and header are among the cells checked


def test_selector_info_gives_each_populations_auc_never_the_pooled_one():
    for entry in models_page.read_entries(BUNDLED):
        text = models_page.population_auc_text(entry)
        per_source = {s: auc for f in entry.populations() for s, (auc, _) in f.auc.items()}
        children = [a for s, a in per_source.items() if models_page.SOURCE_POPULATION.get(s) == "children"]
        adults = sorted(a for s, a in per_source.items() if models_page.SOURCE_POPULATION.get(s) == "adults")
        assert text == f"children AUC {children[0]:.2f}, adults AUC {adults[0]:.2f}-{adults[-1]:.2f} by source"
    info = models_page.selector_info(BUNDLED)
    assert info.startswith("Test, abnormal vs normal: pneumonia: children AUC") and "; covid: children AUC" in info
    bare = models_page.ModelEntry(name="x", architecture="a", label_names=["NORMAL", "B"], metrics={})
    assert models_page.population_auc_text(bare) == ""
    assert models_page.selector_info([]) == ""


def test_about_card_heads_with_version_and_per_population_auc(tiny_model_dir):
    from xray.inference.models import load_model
    from xray.web import registry

    page = models_page.about_html(registry.describe_model("local-dir:models/pneumonia"))
    loaded = load_model("local-dir:models/pneumonia")
    assert f"version <code>{loaded.version}</code>" in page and "children AUC" in page and "adults AUC" in page
    assert "<table" in page and "<script" not in page  # the card rendered as HTML, its raw HTML escaped
    tiny = models_page.about_html(registry.describe_model(f"local-dir:{tiny_model_dir}"))
    assert "no per-population test metrics" in tiny
