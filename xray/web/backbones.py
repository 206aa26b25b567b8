"""The Models page's backbone comparison, read from models/backbones.json (`python -m xray backbones --out`).

One set of cells (`row_cells`) for both places that show it: the page's HTML table (`backbones_html`) and
model_card.md's Markdown (`markdown_lines`, used by scripts/model_card/make_model_card.py). Nothing is typed by
hand: without the file the page says how to make it.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xray.config import PROJECT_ROOT
from xray.web.models_page import _cell, _page, table_html

#: Where `python -m xray backbones --out` writes the comparison that ships with the app.
BACKBONES_FILE = PROJECT_ROOT / "models" / "backbones.json"


def read_table(path: str | Path = BACKBONES_FILE) -> dict[str, Any] | None:
    """The comparison, or None when the file does not exist or cannot be read as one."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return table if isinstance(table, dict) and table.get("runs") else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _auc(group: dict[str, Any] | None) -> str:
    if not group or group.get("auc") is None:
        return "n/a"
    ci = group.get("auc_ci")
    return f"{group['auc']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _rate(group: dict[str, Any] | None, key: str) -> str:
    if not group or group.get(key) is None:
        return "n/a"
    ci = group.get(f"{key}_ci")
    return _pct(group[key]) + (f" ({_pct(ci[0])}-{_pct(ci[1])})" if ci else "")


def comparison_sources(table: dict[str, Any]) -> list[str]:
    """Data sources whose test split holds both classes (they have an AUC), in the runs' order."""
    first = table["runs"][0]["test"]["sources"] if table["runs"] else {}
    return [s for s, g in first.items() if g.get("auc") is not None]


def row_cells(row: dict[str, Any], sources: Sequence[str], val_sources: Sequence[str]) -> list[str]:
    """One row's cells, as the card and the page show them (headers: `columns`).

    `sources`: test sources with an AUC column; `val_sources`: the validation sources the rule averages.
    """
    aucs = [row["validation"]["sources"][s]["auc"] for s in val_sources if row["validation"]["sources"].get(s)]
    test = row["test"]
    pooled = test.get("pooled") or {}
    latency = (row.get("latency") or {}).get("p50_ms")
    minutes = row["train_seconds"] / 60 if row.get("train_seconds") else None
    eces = [g.get("ece") for g in test["sources"].values() if g.get("ece") is not None]
    ece = "n/a" if pooled.get("ece") is None else f"{pooled['ece']:.3f}"
    # a number never parts from its unit when a cell wraps (non-breaking spaces)
    epochs = "n/a" if row.get("epochs") is None else f"{row['epochs']}\u00a0epochs"
    speed = "" if row.get("images_per_second") is None else f", {row['images_per_second']:.1f}\u00a0img/s" + (
        f" ({row['precision']})" if row.get("precision") else ""
    )
    return [
        row["name"],
        row["init"],
        f"{sum(aucs) / len(aucs):.3f}" if aucs and len(aucs) == len(val_sources) else "n/a",
        *[_auc(test["sources"].get(s)) for s in sources],
        _rate(pooled, "sensitivity"),
        _rate(pooled, "specificity"),
        f"{ece} / {max(eces):.3f}" if eces else ece,
        ("n/a" if latency is None else f"{latency:.0f}\u00a0ms")
        + ("" if row.get("weights_bytes") is None else f", {row['weights_bytes'] / 1e6:.1f}\u00a0MB"),
        epochs + ("" if minutes is None else f", {minutes:.0f}\u00a0min") + speed,
    ]


def columns(sources: Sequence[str]) -> list[str]:
    """Headers matching `row_cells`."""
    return ["model", "init", "val AUC (mean per source)", *[f"test AUC {s}" for s in sources],
            "sensitivity @thr (pooled)", "specificity @thr (pooled)", "ECE pooled / worst source",
            "CPU p50, size", "training: epochs, wall time, img/s"]  # fmt: skip


def verdicts(decision: dict[str, Any]) -> list[str]:
    """One sentence per run: passes or fails the rule (and why), and what the rule as first written said."""
    out = []
    for name, fails in decision["fails"].items():
        text = f"{name}: " + ("passes the rule" if not fails else "fails: " + "; ".join(fails))
        written = (decision.get("fails_as_written") or {}).get(name)
        if written is not None:
            text += " (rule as first written: " + ("passes" if not written else "fails: " + "; ".join(written)) + ")"
        out.append(text + ".")
    for m in decision["mobilenet"]:
        gaps = ", ".join(f"{s} {gap:+.3f}" for s, gap in m["auc_gap"].items())
        within = "within" if m["within_margin"] else "not within"
        out.append(f"{m['name']} against the best ({decision['best']}): validation AUC short by {gaps} ({within} "
                   f"{decision['margin']:.2f} on every source).")  # fmt: skip
    return out


def markdown_lines(table: dict[str, Any], *, level: int = 3) -> list[str]:
    """model_card.md's backbone comparison: every run and the shipped model, and what the rule chose."""
    sources = comparison_sources(table)
    rows = [*table["runs"], table["shipped"]]
    lines = [
        "#" * level + " Backbone comparison (same data, sampling and training-image budget)",
        "",
        f"Chosen on validation ({sum(table['validation_counts'].values())} images: "
        + ", ".join(f"{k} {v}" for k, v in table["validation_counts"].items())
        + f"); rule (docs/adult-models.md, amended on validation figures as it records): {table['decision']['rule']}. "
        "Test figures (95% CIs) were read after the choice. "
        "ECE: top-label expected calibration error after temperature scaling; latency: one image through the "
        f"app's code path on 2 CPU threads ({table.get('latency_image') or 'no image'}).",
        "",
        "| " + " | ".join(columns(sources)) + " |",
        "|" + "---|" * len(columns(sources)),
    ]
    val_sources = table["decision"]["sources_with_both_classes"]
    for row in rows:
        cells = row_cells(row, sources, val_sources)
        if row.get("shipped"):
            cells[0] += " (shipped before)"
        if row["name"] == table["decision"]["default"]:
            cells[0] = f"**{cells[0]} (default)**"
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""] + [f"- {text}" for text in verdicts(table["decision"])] + [""]


_WITH_CI = re.compile(r"^([\d.%]+) (\([\d.%]+-[\d.%]+\))$")


def _cell_with_ci(text: str) -> str:
    """A `value (CI)` cell on two lines, so that fifteen figures fit the page; any other cell as the page has it."""
    match = _WITH_CI.match(text)
    if not match:
        return _cell(text)
    return (f'<td class="num">{html.escape(match[1])}<br><span style="font-size:0.9em">'
            f"{html.escape(match[2])}</span></td>")  # fmt: skip


def backbones_html(path: str | Path = BACKBONES_FILE) -> str:
    """The comparison table with what the selection rule decided, as the page's HTML."""
    table = read_table(path)
    if table is None:
        return _page(
            "<h3>Backbone comparison</h3><p>No comparison is bundled: <code>python -m xray backbones --out "
            "models/backbones.json</code> writes one from trained runs.</p>"
        )
    sources = comparison_sources(table)
    decision = table["decision"]
    rows = []
    for row in [*table["runs"], table["shipped"]]:
        cells = row_cells(row, sources, decision["sources_with_both_classes"])
        if row.get("shipped"):
            cells[0] += " (shipped before)"
        if row["name"] == decision["default"]:
            cells[0] += " (default)"
        rows.append(cells)
    counts = ", ".join(f"{k} {v}" for k, v in table["validation_counts"].items())
    items = "".join(f"<li>{html.escape(text)}</li>" for text in verdicts(decision))
    return _page(
        "<h3>Backbone comparison</h3>"
        f"<p>The same data, sampling and number of training images for every backbone; chosen on validation "
        f"({html.escape(counts)}), before any test figure was read, by the rule of docs/adult-models.md "
        f"(amended on validation figures, as that file records): {html.escape(decision['rule'])}. Test AUCs (95% CI) "
        "per data source holding both classes, read after the choice.</p>"
        + table_html(columns(sources), rows, elem_id="xray-models-backbones", cell=_cell_with_ci)
        + f"<ul>{items}</ul>"
    )
