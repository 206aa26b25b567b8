"""Evaluation on real images through the real model loading path: metrics.json, plots, calibration, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from xray.inference.models import load_model_dir
from xray.inference.predict import extract_features
from xray.training.data import load_pixels, load_samples
from xray.training.evaluate import evaluate_model, predict_logits
from xray.training.metrics import softmax


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


@pytest.fixture(scope="module")
def kermany_images(shared_data):
    samples = load_samples(shared_data / "kermany-val-fullres")
    pixels = load_pixels(samples, (224, 224), "bicubic")
    y = np.array([0 if s.label == "NORMAL" else 1 for s in samples])
    return pixels, y


def test_evaluate_writes_metrics_plots_and_calibration(model_copy, kermany_images):
    pixels, y = kermany_images
    loaded = load_model_dir(model_copy)
    val_idx, test_idx = np.arange(0, 16, 2), np.arange(1, 16, 2)
    result = evaluate_model(
        loaded,
        [pixels[i] for i in test_idx],
        y[test_idx],
        val_images=[pixels[i] for i in val_idx],
        y_val=y[val_idx],
        out_dir=model_copy,
        n_boot=50,
        history=[{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "val_auc": 0.5, "val_accuracy": 0.5}],
    )
    written = json.loads((model_copy / "metrics.json").read_text())
    assert written["test"]["n"] == 8 and written["test"]["counts"] == {"NORMAL": 4, "PNEUMONIA": 4}
    for name in ("roc.png", "reliability.png", "confusion.png", "curves.png"):
        assert (model_copy / name).stat().st_size > 5000, name
    test = written["test"]
    assert set(test) >= {"at_default", "at_threshold", "calibration", "roc"}
    assert test["at_default"]["threshold"] == 0.5
    assert sum(map(sum, test["at_threshold"]["confusion"])) == 8
    for key in ("accuracy", "sensitivity", "specificity", "fpr", "fnr", "precision", "f1", "auc"):
        assert key in test["at_default"]["value"] and key in test["at_default"]["ci95"], key
    assert written["validation"]["roc"]["fpr"][0] == 0.0
    assert set(written["validation"]["threshold"]) == {"threshold", "rule", "sensitivity", "specificity"}
    # temperature and threshold went to config.json and come back through the loader
    reloaded = load_model_dir(model_copy)
    assert reloaded.temperature == pytest.approx(result["temperature"])
    assert reloaded.threshold == pytest.approx(result["validation"]["threshold"]["threshold"])
    assert reloaded.positive_label == "PNEUMONIA"
    assert test["calibration"]["ece_before"] >= 0 and test["calibration"]["ece_after"] >= 0


def test_logits_and_features_match_the_network(tiny_model_dir, kermany_images):
    from xray.imaging.transforms import build_transform

    pixels, _ = kermany_images
    loaded = load_model_dir(tiny_model_dir)
    logits = predict_logits(loaded, pixels[:3], batch_size=2)
    transform = build_transform(loaded.data_config, train=False)
    with torch.inference_mode():
        direct = loaded.model(torch.stack([transform(p) for p in pixels[:3]])).numpy()
    np.testing.assert_allclose(logits, direct, atol=1e-4)
    features = extract_features(loaded, pixels[:3])
    assert features.shape == (3, loaded.model.get_classifier().in_features)
    # the classifier applied to the penultimate features gives the logits back
    with torch.inference_mode():
        again = loaded.model.get_classifier()(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(again, logits, atol=1e-4)


def test_three_class_evaluation_reports_each_class(tiny_model_dir_3class, shared_data):
    loaded = load_model_dir(tiny_model_dir_3class)
    samples = [s for s in load_samples(shared_data / "covid-chestxray")][:40]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 3))
    from xray.training.evaluate import evaluate_arrays

    labels = loaded.label_names
    y = np.array([labels.index(s.label) for s in samples])
    result = evaluate_arrays(y, logits, labels, temperature=1.0, threshold=None, n_boot=20)
    assert "at_threshold" not in result
    assert set(result["roc"]) == set(labels)
    value = result["at_default"]["value"]
    for name in labels:
        if result["counts"][name]:
            assert f"sensitivity/{name}" in value
    assert np.isclose(softmax(logits).sum(axis=1), 1).all()


def test_evaluate_command_prints_json(tiny_model_dir, kermany_fullres, tmp_path, capsys):
    from xray.__main__ import main

    csv_path = tmp_path / "few.csv"
    csv_path.write_text("".join(f"{p},{p.parent.name}\n" for p in kermany_fullres[:3] + kermany_fullres[-3:]))
    code = main(
        [
            "evaluate",
            "--model",
            f"local-dir:{tiny_model_dir}",
            "--data",
            str(csv_path),
            "--split",
            "all",
            "--bootstrap",
            "20",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test"]["n"] == 6 and result["label_names"] == ["NORMAL", "PNEUMONIA"]
    assert "auc" in result["test"]["at_default"]["value"]
    # the stored threshold (0.5 default) is used, nothing is refitted on the evaluated data
    assert result["threshold"] == 0.5 and "validation" not in result
