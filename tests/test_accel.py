"""scripts/accel_study.py: training-only calibration data, the test subset, the drop-in swap, INT8 export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import load_script
from xray.imaging.io import read_image
from xray.inference import accel
from xray.inference.models import load_model_dir
from xray.inference.predict import predict, preprocess


@pytest.fixture(scope="module")
def study():
    return load_script("accel_study")


def test_calibration_images_come_from_training_folders_only(study, shared_data: Path) -> None:
    calib, held = study.calibration_split(shared_data, 300, holdout=50, seed=0)
    assert len(calib) == 300 and len(held) == 50
    assert not set(calib) & set(held)
    assert all("/train/" in p.as_posix() and "/test/" not in p.as_posix() for p in calib + held)
    per_folder = {name: sum(p.parent == shared_data / name for p in calib) for name in study.CALIBRATION_FOLDERS}
    assert set(per_folder.values()) == {60}  # spread evenly over the five training folders
    assert study.calibration_split(shared_data, 300, holdout=50, seed=0) == (calib, held)  # reproducible


def test_test_subset_is_the_official_624_or_a_stratified_part(study, shared_data: Path) -> None:
    paths, labels = study.test_subset(shared_data, 624)
    assert len(paths) == 624 and labels.sum() == 390
    assert all("kermany-224/test/" in p.as_posix() for p in paths)
    some, some_labels = study.test_subset(shared_data, 40)
    assert len(some) == len(set(some)) == 40 and 0 < some_labels.sum() < 40
    assert [p.parent.name == "PNEUMONIA" for p in some] == list(some_labels.astype(bool))


def test_installed_features_replace_the_accelerated_path_and_are_restored(
    study, tiny_model_dir: Path, kermany_fullres: list[Path]
) -> None:
    fast, eager = load_model_dir(tiny_model_dir, accelerated=True), load_model_dir(tiny_model_dir, accelerated=False)
    images = [read_image(p) for p in kermany_fullres[:2]]
    original = accel.forward_features
    with study.installed(eager, eager.model.forward_features):
        assert eager.accelerated and accel.forward_features is not original
        swapped = predict(eager, images)
    assert accel.forward_features is original and not eager.accelerated
    for a, b in zip(swapped, predict(fast, images), strict=True):
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-4
    pixels = preprocess(fast, images)
    p_fast, _ = study.probabilities(fast, study._ort_features(accel.feature_session(fast)), pixels)
    assert np.allclose(p_fast, [r.probabilities["PNEUMONIA"] for r in swapped], atol=1e-4)


def test_openvino_candidate_is_skipped_with_a_message_when_missing(study, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as when the package is not installed
    assert study.openvino_features(tmp_path / "unused.onnx", "f32") is None
    assert f"pip install {study.OPENVINO_PIN}" in capsys.readouterr().err


def test_int8_graph_is_quantised_and_computes_the_same_feature_map_shape(
    study, tiny_model_dir: Path, kermany_fullres: list[Path], tmp_path: Path
) -> None:
    import onnx

    loaded = load_model_dir(tiny_model_dir, accelerated=True)
    pixels = preprocess(loaded, [read_image(p) for p in kermany_fullres[:4]])
    int8 = study.quantize_int8(study.onnx_path(loaded), tmp_path / "int8.onnx", pixels)
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(int8)).graph.node)
    features = study._ort_features(study._ort_session(int8))(pixels)
    reference = accel.forward_features(loaded, pixels)
    assert features.shape == reference.shape and features.dtype == torch.float32
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("pinning", [True, False])
def test_openvino_fp32_candidate_matches_the_current_path(
    study, tiny_model_dir: Path, kermany_fullres, pinning
) -> None:
    pytest.importorskip("openvino", reason="openvino is optional (pip install openvino==2026.4.1)")
    loaded = load_model_dir(tiny_model_dir, accelerated=True)
    pixels = preprocess(loaded, [read_image(p) for p in kermany_fullres[:3]])
    features = study.openvino_features(study.onnx_path(loaded), "f32", pinning=pinning)
    torch.testing.assert_close(features(pixels), accel.forward_features(loaded, pixels), rtol=1e-4, atol=1e-4)


def test_feature_session_sleeps_instead_of_spinning_and_uses_torchs_thread_count(tiny_model_dir: Path) -> None:
    loaded = load_model_dir(tiny_model_dir, accelerated=True)
    options = accel.feature_session(loaded).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == torch.get_num_threads()


def test_onnx_is_looked_up_not_imported(monkeypatch) -> None:
    assert accel.onnx_available()  # both packages are in requirements.txt
    monkeypatch.setitem(sys.modules, "onnx", None)  # as when the package is not installed
    assert not accel.onnx_available()
