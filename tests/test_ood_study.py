"""scripts/ood_study.py: the perturbation suite, the candidates' scores, the declared selection rule, the features."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import load_script
from xray.imaging.io import read_image
from xray.inference.models import load_model
from xray.trust import gate

REPO_ROOT = Path(__file__).resolve().parent.parent
NORMAL_JPEG = REPO_ROOT / "examples" / "NORMAL2-IM-1437-0001.jpeg"


@pytest.fixture(scope="module")
def study():
    return load_script("ood_study")


def _xray_224() -> np.ndarray:
    return cv2.resize(read_image(NORMAL_JPEG).pixels[..., 0], (224, 224), interpolation=cv2.INTER_AREA)


def test_perturbation_changes_acquisition_not_content(study) -> None:
    pixels = _xray_224()
    copies = study.perturbed([pixels] * 8, seed=3)
    again = study.perturbed([pixels] * 8, seed=3)
    assert all(c.shape == pixels.shape and c.dtype == np.uint8 for c in copies)
    assert all(np.array_equal(a, b) for a, b in zip(copies, again, strict=True))  # reproducible from the seed
    assert all(np.abs(c.astype(int) - pixels).mean() > 2 for c in copies)  # every copy is changed
    # ... but stays the same radiograph: its grey levels still follow the original's (8 draws: 0.80-0.91)
    corr = [np.corrcoef(c.ravel().astype(float), pixels.ravel().astype(float))[0, 1] for c in copies]
    assert min(corr) > 0.7
    # and no copy is mistaken for another kind of image by the image checks
    assert [gate.check_image(c) for c in copies] == [[]] * 8


def _synthetic(rng: np.random.Generator, d: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """Two Gaussian classes for train/validation (and mildly jittered copies), and a far-away set."""
    means = rng.normal(0, 1, (2, d)) + 3.0

    def draw(n: int, jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return means[y] + rng.normal(0, 1, (n, d)) + jitter * rng.normal(0, 1, (n, d)), y

    train, y_train = draw(400)
    val, y_val = draw(100)
    far = -means[rng.integers(0, 2, 30)] + rng.normal(0, 1, (30, d))
    sets = {"train": train, "train_p2": train + 0.3 * rng.normal(0, 1, train.shape), "val": val,
            "val_p1a": val + 0.3 * rng.normal(0, 1, val.shape), "val_p1b": val + 0.3 * rng.normal(0, 1, val.shape),
            "val_p3": val + 0.3 * rng.normal(0, 1, val.shape), "val_inverted": -val, "photos": far}  # fmt: skip
    feats = {name: {"pen": x, "stage": x[:, : d // 2], "checks": np.zeros(len(x), bool)} for name, x in sets.items()}
    feats["train"]["labels"], feats["val"]["labels"] = y_train, y_val
    return feats


def test_every_candidate_scores_and_flags_far_features(study) -> None:
    feats = _synthetic(np.random.default_rng(0))
    result = study.table(feats, study.CANDIDATES, ("val", "val_p3", "photos"))
    for candidate, row in result.items():
        assert np.isfinite(row["threshold"]) and row["threshold"] > 0, candidate
        assert row["photos"]["share"] == 1.0, candidate
        assert row["val"]["share"] <= 0.03, candidate  # a 99% quantile of these (or noisier) distances
    # B only raises A's threshold (same fit, more validation distances, among them noisier ones)
    assert result["B"]["threshold"] >= result["A"]["threshold"]


def test_held_out_candidate_scores_validation_out_of_fold(study) -> None:
    feats = _synthetic(np.random.default_rng(1), d=32)
    distances, _ = study.scores(feats, "F")
    val = feats["val"]
    in_sample = gate.fit_ood(np.concatenate([val["pen"], feats["val_p1a"]["pen"]]), val["pen"],
                             labels_train=np.concatenate([val["labels"]] * 2))  # fmt: skip
    # a fit that saw the image scores it closer than one that did not: out-of-fold distances are larger
    assert distances["val"].mean() > gate.ood_score(in_sample, val["pen"]).mean() * 1.1


def _row(**shares: float) -> dict:
    base = {s: {"share": 1.0, "flagged": 0} for s in ("photos", "grey_photos", "other_medical", "ct_mr_pixels",
                                                      "val_inverted", "fullres")}  # fmt: skip
    base["val_p3"] = {"share": shares.pop("val_p3"), "flagged": 0}
    for name, share in shares.items():
        base[name] = {"share": share, "flagged": int(round(share * 16)) if name == "fullres" else 0}
    return base


def test_selection_rule_as_declared(study) -> None:
    # an out-of-scope set under 95% rules a candidate out, however few in-scope flags it has
    result = {"A": _row(val_p3=0.03), "B": _row(val_p3=0.007, grey_photos=0.714), "D": _row(val_p3=0.009)}
    assert study.choose(result) == "D"
    # within half a point: fewer full-resolution flags, then the simpler candidate
    result = {"A": _row(val_p3=0.010, fullres=2 / 16), "C": _row(val_p3=0.011), "F": _row(val_p3=0.006, fullres=1 / 16)}
    assert study.choose(result) == "C"
    result["C"] = _row(val_p3=0.012)  # more than half a point above the best: out of the tie
    assert study.choose(result) == "F"
    assert study.choose({"A": _row(val_p3=0.01), "D": _row(val_p3=0.01)}) == "A"
    assert study.choose({"B": _row(val_p3=0.0, photos=0.9)}) == "none"


def test_features_are_the_gates_own(study, tiny_model_dir: Path) -> None:
    loaded = load_model(f"local-dir:{tiny_model_dir}")
    images = [read_image(NORMAL_JPEG), _xray_224()]
    pen, stage = study.two_level_features(loaded, images)
    # the penultimate features are exactly what the app's gate scores (ood_view copy, same forward pass)
    np.testing.assert_allclose(pen, gate.ood_features(loaded, images), rtol=1e-5, atol=1e-5)
    last_stage = loaded.model.blocks[-1]
    channels = [m.out_channels for m in last_stage.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert stage.shape == (2, channels)
