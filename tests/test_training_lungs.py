"""Training the lung segmentation model: patient-disjoint split, anatomy-keeping augmentation, a real short run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xray.training import lungs as training


@pytest.fixture(scope="module")
def pairs(shared_data: Path):
    return training.load_pairs(shared_data / "lung-masks")


def test_split_is_disjoint_by_patient_and_holds_children(pairs) -> None:
    train, val = training.split_patients(pairs, seed=0)
    assert len(train) + len(val) == len(pairs) == 358
    assert not {p.patient for p in train} & {p.patient for p in val}
    children = [p for p in val if p.age_group == training.CHILD]
    assert 4 <= len(children) <= 8 and any(p.age_group == training.CHILD for p in train)
    assert 0.15 < len(val) / len(pairs) < 0.25
    again, _ = training.split_patients(pairs, seed=0)
    assert [p.name for p in again] == [p.name for p in train]  # seeded
    other, _ = training.split_patients(pairs, seed=1)
    assert [p.name for p in other] != [p.name for p in train]


def test_augmentation_moves_image_and_mask_together(pairs) -> None:
    grey, mask = training._base(pairs[0])
    rng = np.random.default_rng(0)
    for _ in range(5):
        # the mask drawn as the image: after the same warp, bright pixels must be the mask's pixels
        image, target = training.augment((mask * 255).astype(np.uint8), mask, 192, rng)
        assert image.shape == target.shape == (192, 192)
        assert training.dice(image > 0.5, target > 0.5) > 0.9
        assert 0.5 < target.mean() / mask.mean() < 1.6  # scale 0.85-1.15: area within about 0.7-1.3


def test_dice_and_hausdorff_by_hand() -> None:
    a = np.zeros((50, 50), bool)
    a[10:20, 10:20] = True
    b = np.zeros_like(a)
    b[10:20, 15:25] = True
    assert training.dice(a, b) == pytest.approx(2 * 50 / 200)
    assert training.dice(a, a) == 1.0 and training.dice(a, ~a) == 0.0
    assert training.hausdorff95(a, a) == 0.0
    assert training.hausdorff95(a, b) == pytest.approx(5.0)
    assert training.hausdorff95(a, np.zeros_like(a)) == float("inf")


def test_short_training_run_saves_a_loadable_model_and_resumes(shared_data: Path, tmp_path: Path, caplog) -> None:
    from xray.inference.segmentation import load_segmenter

    out = tmp_path / "lungs"
    summary = training.train(shared_data / "lung-masks", out, epochs=2, batch_size=4, side=64, limit=8, stop_after=1)
    assert summary["train_pairs"] == 8 and summary["epochs"] == 1 and np.isfinite(summary["final_loss"])
    assert (out / training.CHECKPOINT_NAME).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["input_side"] == 64 and config["training"]["seed"] == 0
    segmenter = load_segmenter(f"local-dir:{out}")
    assert segmenter.logits(np.zeros((100, 80), np.uint8)).shape == (64, 64)
    with caplog.at_level("INFO"):
        training.train(shared_data / "lung-masks", out, epochs=2, batch_size=4, side=64, limit=8, resume=True)
    assert "resumed at epoch 1" in caplog.text and "epoch 2/2" in caplog.text and "epoch 1/2" not in caplog.text
    metrics = training.evaluate_pairs(training.load_pairs(shared_data / "lung-masks")[:2], segmenter)
    [group] = metrics["groups"].values()
    assert group["images"] == 2 and 0 <= group["dice_model"]["median"] <= 1
    assert 0.3 < group["dice_heuristic"]["median"] <= 1  # the heuristic on the same images, measured alongside
