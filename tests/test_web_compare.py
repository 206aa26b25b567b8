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
