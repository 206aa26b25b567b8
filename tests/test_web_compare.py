"""xray.web.compare: every model on one image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.web_cases import MB, PNEUMONIA_JPEG
from xray.analysis import pipeline
from xray.errors import InvalidInputError
from xray.web import compare


def test_compare_runs_every_model_and_reports_broken_ones(tiny_model_dir, tiny_model_dir_3class, tmp_path):
    import shutil

    from xray.inference.models import update_config

    three_class = shutil.copytree(tiny_model_dir_3class, tmp_path / "three")
    update_config(three_class, caveat="Its COVID-19 output follows age and image source.")
    (tmp_path / "broken").mkdir()
    names = [f"local-dir:{tiny_model_dir}", f"local-dir:{three_class}", f"local-dir:{tmp_path / 'broken'}"]
    results = compare.compare_models(
        PNEUMONIA_JPEG, filename=None, model_names=names, max_upload_bytes=5 * MB, max_pixels=10**8
    )
    assert [r.info.name for r in results] == names
    two, three, broken = results
    assert set(two.probabilities) == {"NORMAL", "PNEUMONIA"} and two.latency_ms > 0 and two.view is not None
    assert set(three.probabilities) == {"NORMAL", "PNEUMONIA", "COVID-19"}
    assert three.info.architecture == "resnet18"
    assert broken.error and broken.view is None
    rows = compare.comparison_rows(results)
    assert rows[1][0] == names[1] and rows[2][3].startswith("error:")
    columns = dict(zip(compare.COMPARE_COLUMNS, rows[1], strict=True))
    assert columns["Caveat"] == "Its COVID-19 output follows age and image source."
    assert columns["Input check"] == pipeline.input_check_text(three.gate, three.gate_note) and three.gate is not None
    assert pipeline.NO_OOD_NOTE in columns["Input check"]  # no ood.npz in the test model: "in scope" is qualified
    assert dict(zip(compare.COMPARE_COLUMNS, rows[0], strict=True))["Caveat"] == "" and broken.gate is None
    # each model's own gate: a colour photograph is out of scope for every model that answers
    y, x = np.mgrid[0:300, 0:300]
    photo = tmp_path / "holiday.png"
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(photo)
    on_photo = compare.compare_models(photo, filename=None, model_names=names[:2], max_upload_bytes=5 * MB,
                                      max_pixels=10**8)  # fmt: skip
    assert all(not c.gate.in_scope and "colour image" in " ".join(c.gate.reasons) for c in on_photo)
    assert all(row[7].startswith("OUT OF SCOPE") for row in compare.comparison_rows(on_photo))
    with pytest.raises(InvalidInputError, match="No model"):
        compare.compare_models(PNEUMONIA_JPEG, filename=None, model_names=[], max_upload_bytes=MB, max_pixels=10**8)


@pytest.mark.browser
def test_side_by_side_view_shows_every_column_and_name_in_1200_px(tiny_model_dir, tiny_model_dir_3class, tmp_path):
    """Model names under the heatmaps, input check and caveat inside the page, "Latency" on one line."""
    import shutil
    from pathlib import Path

    from xray.inference.models import update_config

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium missing: apt-get install -y chromium chromium-driver (.ci/run does this)")
    from playwright.sync_api import sync_playwright

    three_class = shutil.copytree(tiny_model_dir_3class, tmp_path / "three")
    caveat = "Research demonstration, not a COVID-19 test: " + "its output follows where an image comes from. " * 6
    update_config(three_class, caveat=caveat)
    (tmp_path / "broken").mkdir()
    names = [f"local-dir:{tiny_model_dir}", f"local-dir:{three_class}", f"local-dir:{tmp_path / 'broken'}"]
    results = compare.compare_models(PNEUMONIA_JPEG, filename=None, model_names=names, max_upload_bytes=5 * MB,
                                     max_pixels=10**8)  # fmt: skip
    view = compare.comparison_html(results)
    assert view.count("<figcaption>") == 2 and view.count("data:image/jpeg;base64,") == 2
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2000})
            page.set_content(f'<body style="margin:0"><div style="width:1200px">{view}</div></body>')
            layout = page.evaluate("""() => {
              const lines = (el) => { const r = document.createRange(); r.selectNodeContents(el);
                return new Set([...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top))).size; };
              const table = document.getElementById('xray-compare-table');
              const rows = Object.fromEntries([...table.querySelectorAll('tbody tr')].map(tr =>
                [tr.querySelector('th').textContent, [...tr.querySelectorAll('td')].map(td => {
                  const b = td.getBoundingClientRect(); return {right: b.right, width: b.width}; })]));
              const header = [...table.querySelectorAll('th')].find(th => th.textContent === 'Latency (ms)');
              const captions = [...table.querySelectorAll('figcaption')].map(f => {
                const b = f.getBoundingClientRect();
                return {text: f.textContent, visible: b.width > 0 && b.height > 0 && b.right <= 1200}; });
              const clipped = [...table.querySelectorAll('th, td')].filter(c => c.scrollWidth > c.clientWidth + 1)
                .map(c => c.textContent);
              return {width: table.scrollWidth, rows, latencyLines: lines(header), captions, clipped};
            }""")
        finally:
            browser.close()
    assert layout["width"] <= 1200 and layout["latencyLines"] == 1 and layout["clipped"] == []
    for row in ("Input check", "Caveat", "Latency (ms)"):
        assert all(cell["right"] <= 1200 and cell["width"] > 100 for cell in layout["rows"][row]), row
    assert [c["text"].split(":")[0] + ":" + c["text"].split(":")[1] for c in layout["captions"]] == names[:2]
    assert all(c["visible"] for c in layout["captions"])


def test_compare_form_checks_come_before_any_model_runs():
    from xray.errors import InvalidInputError
    from xray.web import compare

    with pytest.raises(InvalidInputError, match="(?i)upload"):
        compare.check_compare_form(None, ["m"], "gradcam")
    with pytest.raises(InvalidInputError, match="No model is installed"):
        compare.check_compare_form("x.png", [], "gradcam")
    with pytest.raises(InvalidInputError, match="(?i)heatmap method"):
        compare.check_compare_form("x.png", ["m"], "shap")
    assert compare.check_compare_form("x.png", ["m"], "gradcam") is None


def test_compare_gives_test_auc_per_population_not_the_pooled_headline(tiny_model_dir):
    from xray.web import compare, models_page, registry

    bundled = registry.describe_model("pneumonia")
    text = compare.tested_figures(bundled)
    assert text == models_page.population_auc_text(models_page.read_entry("pneumonia"))
    assert text.startswith("children AUC ") and "adults AUC " in text
    tiny = registry.describe_model(f"local-dir:{tiny_model_dir}")  # no per-source figures: the registry's line
    assert compare.tested_figures(tiny) == (registry.format_headline(tiny.headline) or "none")


def test_compare_says_which_population_threshold_decided(tiny_model_dir, tmp_path):
    import shutil

    from xray.inference.models import update_config

    folder = shutil.copytree(tiny_model_dir, tmp_path / "split-model")
    update_config(folder, thresholds={"children": 0.0, "adults": 1.0, "rule": "test", "chosen_on": "test"})
    names = [f"local-dir:{folder}", f"local-dir:{tiny_model_dir}"]
    split, plain = compare.compare_models(PNEUMONIA_JPEG, filename=None, model_names=names, max_upload_bytes=5 * MB,
                                          max_pixels=10**8)  # fmt: skip
    assert split.label == "NORMAL" and split.threshold == (
        "threshold 1.000 for adults (no age given: most patients are adults)"
    )
    assert plain.threshold == "" and split.probabilities == plain.probabilities
    rows = compare.comparison_rows([split, plain])
    assert rows[0][3] == f"NORMAL ({split.threshold})" and rows[1][3] == plain.label
