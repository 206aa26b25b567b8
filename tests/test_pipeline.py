"""The one analysis pipeline: one forward pass gives the prediction, heatmap, features, gate and heat check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from xray.analysis import pipeline
from xray.imaging.io import read_image
from xray.inference.models import load_model, update_config
from xray.inference.predict import extract_features, predict
from xray.trust import gate


@pytest.fixture(scope="module")
def xrays(kermany_fullres: list[Path]):
    return [read_image(p) for p in kermany_fullres[:4]]


@pytest.fixture(scope="module")
def model_with_ood(tiny_model_dir: Path, xrays, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model with OOD statistics fitted on its own features of real X-rays, and a caveat."""
    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("pipeline") / "model")
    update_config(folder, input_jpeg_quality=75, caveat="Tested on children only.")
    loaded = load_model(f"local-dir:{folder}")
    features = extract_features(loaded, xrays * 4)
    gate.save_ood(gate.fit_ood(features[:12], features[4:]), folder)
    return load_model(f"local-dir:{folder}")


def _colour_photo() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)


def test_analyse_returns_everything_from_one_forward_pass(model_with_ood, xrays):
    image = xrays[0]
    result = pipeline.analyse(model_with_ood, image)
    expected = predict(model_with_ood, [image])[0]
    assert result.label == expected.label
    for name, p in expected.probabilities.items():
        assert result.probabilities[name] == pytest.approx(p, abs=1e-5)
    # the features the gate scored are the prediction's own (the model's transform makes the JPEG copy)
    np.testing.assert_allclose(result.features, extract_features(model_with_ood, [image])[0], rtol=1e-4, atol=1e-4)
    stats = gate.ood_stats_for(model_with_ood)
    assert result.gate.ood_distance == pytest.approx(float(gate.ood_score(stats, result.features[None])[0]), rel=1e-5)
    assert result.heatmap.shape == image.pixels.shape[:2] and 0 <= result.heatmap.min() <= result.heatmap.max() <= 1
    assert result.explanation.target_label == result.label
    assert result.heatmap_check is not None and 0 <= result.heatmap_check.heat_in_chest <= 1
    assert result.caveat == "Tested on children only."
    assert result.latency_ms > 0 and result.gate_note is None


def test_out_of_scope_image_gets_reasons_and_the_prediction_is_kept(model_with_ood):
    result = pipeline.analyse(model_with_ood, _colour_photo())
    assert not result.in_scope and result.reasons
    assert any("colour" in r.lower() for r in result.reasons)
    assert result.input_check.startswith("OUT OF SCOPE: ")
    assert abs(sum(result.probabilities.values()) - 1) < 1e-5  # shown on request


def test_analyse_without_checks_only_explains(model_with_ood, xrays):
    result = pipeline.analyse(model_with_ood, xrays[1], target_label="NORMAL", method="hirescam", checks=False)
    assert result.gate is None and result.heatmap_check is None and result.in_scope
    assert result.explanation.target_label == "NORMAL" and result.explanation.method == "hirescam"
    assert result.input_check == ""


def test_analyse_many_matches_analyse(model_with_ood, xrays):
    images = [*xrays, _colour_photo()]
    batched = pipeline.analyse_many(model_with_ood, images, batch_size=2)
    singles = [pipeline.analyse(model_with_ood, image) for image in images]
    assert len(batched) == len(images)
    for many, one in zip(batched, singles, strict=True):
        assert many.label == one.label and many.explanation is None
        for name, p in one.probabilities.items():
            assert many.probabilities[name] == pytest.approx(p, abs=1e-5)
        assert many.in_scope == one.in_scope and many.reasons == one.reasons
        assert many.gate.ood_distance == pytest.approx(one.gate.ood_distance, rel=1e-4)
    with_maps = pipeline.analyse_many(model_with_ood, images[:2], heatmaps=True)
    assert all(a.heatmap is not None and a.heatmap_check is not None for a in with_maps)


def test_model_without_ood_statistics_says_the_check_was_partial(tiny_model_dir: Path, xrays):
    loaded = load_model(f"local-dir:{tiny_model_dir}")
    result = pipeline.analyse(loaded, xrays[0])
    assert result.gate_note == pipeline.NO_OOD_NOTE and result.gate.ood_distance is None
    assert result.input_check == f"in scope ({pipeline.NO_OOD_NOTE})"


def test_broken_ood_statistics_fall_back_to_image_checks(model_with_ood, xrays, tmp_path: Path):
    folder = shutil.copytree(model_with_ood.path, tmp_path / "broken")
    (folder / gate.OOD_FILE).write_bytes(b"not an npz file")
    result = pipeline.analyse(load_model(f"local-dir:{folder}"), xrays[0])
    assert result.gate is not None and "out-of-distribution check failed" in result.gate_note
    assert result.gate.ood_distance is None


def test_input_check_text_qualifies_a_partial_check():
    from xray.trust.gate import GateFinding, GateResult

    assert pipeline.input_check_text(None) == ""
    assert pipeline.input_check_text(GateResult(in_scope=True, reasons=[])) == "in scope"
    assert pipeline.input_check_text(GateResult(in_scope=True, reasons=[]), "Only images.") == "in scope (Only images.)"
    out = GateResult(in_scope=False, reasons=["A colour image.", "Too small."], findings=[GateFinding("color", "x")])
    assert pipeline.input_check_text(out) == "OUT OF SCOPE: A colour image. Too small."
