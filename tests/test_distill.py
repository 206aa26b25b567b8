"""Distillation: the loss, and the teacher's logits scored once through the app's code and cached."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from xray.config import PROJECT_ROOT
from xray.training.data import Sample
from xray.training.distill import distillation_loss, teacher_logits

sys.path.insert(0, str(PROJECT_ROOT))
import train  # noqa: E402


def test_the_loss_mixes_labels_and_softened_teacher_targets():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 2, requires_grad=True), torch.randn(6, 2)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    ce = torch.nn.CrossEntropyLoss()
    mixed = distillation_loss(student, y, teacher, hard_loss=ce, alpha=0.0)
    assert mixed.item() == pytest.approx(ce(student, y).item())
    # the teacher's own logits as the student's: nothing left to learn from the teacher
    assert float(distillation_loss(teacher, y, teacher, hard_loss=ce, alpha=1.0)) == pytest.approx(0.0, abs=1e-7)
    # teacher only: a step along the gradient brings the student's softened probabilities towards the teacher's
    loss = distillation_loss(student, y, teacher, hard_loss=ce, alpha=1.0, temperature=3.0)
    loss.backward()
    stepped = (student - 0.5 * student.grad).detach()
    assert distillation_loss(stepped, y, teacher, hard_loss=ce, alpha=1.0, temperature=3.0).item() < loss.item()


def test_teacher_logits_come_from_the_apps_predictions_and_are_cached(tiny_model_dir, shared_data, tmp_path):
    from xray.inference.models import load_model
    from xray.inference.predict import predict
    from xray.training.data import read_pixels

    images = sorted((shared_data / "kermany-224" / "train" / "NORMAL").glob("*.jpeg"))[:5]
    samples = [Sample(p, "NORMAL", p.stem) for p in images]
    name = f"local-dir:{tiny_model_dir}"
    logits = teacher_logits(name, samples, label_names=["NORMAL", "PNEUMONIA"], cache_dir=tmp_path)
    assert logits.shape == (5, 2) and logits.dtype == np.float32
    stored = list((tmp_path / "teacher").glob("*.npy"))
    assert len(stored) == 1 and np.array_equal(np.load(stored[0]), logits)
    # the app's probabilities of the same images are the softmax of these logits (temperature 1)
    loaded = load_model(name)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for sample, row in zip(samples, probs, strict=True):
        result = predict(loaded, [read_pixels(sample)])[0]
        assert result.probabilities["PNEUMONIA"] == pytest.approx(float(row[1]), abs=1e-4)
    stored[0].write_bytes(b"")  # read back from the file, not recomputed: an emptied file would fail to load
    with pytest.raises((ValueError, EOFError, OSError)):
        teacher_logits(name, samples, label_names=["NORMAL", "PNEUMONIA"], cache_dir=tmp_path)
    with pytest.raises(SystemExit, match="same classes"):
        teacher_logits(name, samples, label_names=["NORMAL", "PNEUMONIA", "COVID-19"], cache_dir=tmp_path)


def test_train_py_distils_a_student_from_a_teacher(tiny_model_dir, shared_data, tmp_path):
    out = tmp_path / "student"
    train.main(["--data", str(shared_data / "kermany-224"), "--arch", "test_efficientnet", "--init", "scratch",
                "--teacher", f"local-dir:{tiny_model_dir}", "--distill-alpha", "0.7", "--epochs", "1",
                "--max-per-class", "4", "--batch-size", "4", "--bootstrap", "0", "--threads", "2",
                "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["teacher"] == f"local-dir:{tiny_model_dir}"
    assert metrics["training"]["distill_alpha"] == 0.7 and np.isfinite(metrics["history"][0]["train_loss"])
    assert len(list((tmp_path / "cache" / "teacher").glob("*.npy"))) == 1
