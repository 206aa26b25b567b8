"""The bundled backbone comparison (models/backbones.json) as the Models page shows it."""

from __future__ import annotations

import html

from xray.web import backbones


def test_bundled_comparison_shows_every_run_and_names_the_bundled_model_its_default():
    table = backbones.read_table()
    assert table is not None, "models/backbones.json is missing: python -m xray backbones --out models/backbones.json"
    page = backbones.backbones_html()
    decision = table["decision"]
    for row in [*table["runs"], table["shipped"]]:
        assert f"<td>{html.escape(row['name'])}" in page or f">{html.escape(row['name'])}" in page
    default = next(row for row in table["runs"] if row["name"] == decision["default"])
    # what the rule chose is what models/pneumonia holds
    assert default["model"] == "local-dir:models/pneumonia" and default["architecture"] == "efficientnet_lite0"
    assert f"{html.escape(default['name'])} (default)" in page
    # every run was scored on the same validation images, and each verdict is said on the page
    n = sum(table["validation_counts"].values())
    assert all(row["validation"]["pooled"]["n"] == n for row in [*table["runs"], table["shipped"]])
    assert page.count("<li>") == len(decision["fails"]) + len(decision["mobilenet"])
    for path in ("/work/", "../shared", "local-dir:/"):
        assert path not in page
    # the card's Markdown carries the same rows
    lines = backbones.markdown_lines(table)
    assert sum(line.startswith("| ") for line in lines) == 1 + len(table["runs"]) + 1
