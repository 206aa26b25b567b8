"""xray.web.models_page: every registered model side by side, every figure equal to its metrics.json."""

from __future__ import annotations

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
        block = m["test"]["at_default"]
        assert row["Test AUC (95% CI)"] == _ci(block["value"]["auc"], block["ci95"]["auc"], pct=False)
        cal = m["test"]["calibration"]
        assert row["ECE before → after"] == f"{cal['ece_before']:.3f} → {cal['ece_after']:.3f}"
        assert row["Parameters (M)"] == round(m["num_parameters"] / 1e6, 2)
        assert row["Size (MB)"] == round(m["weights_bytes"] / 1e6, 1)
        assert row["Test images"] == m["test"]["n"] and row["Architecture"] == m["architecture"]
        if isinstance(m.get("latency"), dict):
            assert row["CPU latency (ms)"] == f"{m['latency']['p50_ms']:.1f} (p50, one image)"
        else:  # no single-image latency recorded: the test set's batched time per image, said so
            per_image = 1000 * m["test_inference_seconds"] / m["test"]["n"]
            assert row["CPU latency (ms)"].startswith(f"{per_image:.1f} (test set batched")
        assert row["Classes"] == ", ".join(m["label_names"])
        init = m["training"]["init"]
        assert row["Initialisation"] == {"imagenet": "ImageNet weights", "scratch": "random (from scratch)"}.get(
            init, f"fine-tuned from {init}"
        )
        assert row["Training data"].startswith(", ".join(Path(s).name for s in m["data"]["sources"]) + "; train ")
        assert row["Caveat"] == (config_caveat(read_config(PROJECT_ROOT / "models" / name)) or "")


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
    assert overview[0][10] == "12.5 (p50, one image)" and overview[0][3] == "random (from scratch)"
    assert overview[1][1].startswith("unavailable:") and broken.error
    assert models_page.missing_notes(entries) == []


def test_auc_latency_chart_has_one_point_per_measured_model():
    figure = models_page.auc_latency_figure(models_page.read_entries(BUNDLED))
    axes = figure.axes[0]
    assert axes.get_xlabel() == "CPU latency per image (ms)" and "AUC" in axes.get_ylabel()
    assert sorted(t.get_text() for t in axes.texts) == sorted(BUNDLED)
    empty = models_page.auc_latency_figure([models_page.ModelEntry(name="x", error="gone")])
    assert "No model" in empty.axes[0].texts[0].get_text()


@pytest.mark.parametrize(("value", "ci", "pct", "text"), [
    (0.5, [0.25, 0.75], True, "50.0% (25.0–75.0)"), (0.9, None, False, "0.900"), (None, [0, 1], True, "n/a"),
    (float("nan"), None, False, "n/a"),
])  # fmt: skip
def test_with_ci(value, ci, pct, text):
    assert models_page.with_ci(value, ci, pct=pct) == text
