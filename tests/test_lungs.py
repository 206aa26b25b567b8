"""Lung-field estimate on real X-rays and the heatmap-in-lungs score on constructed heatmaps."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from xray.imaging.io import read_image
from xray.trust import lungs


@pytest.fixture(scope="module")
def fullres(kermany_fullres: list[Path]):
    return [read_image(p) for p in kermany_fullres]


@pytest.fixture(scope="module")
def fields(fullres):
    return [lungs.lung_fields(image) for image in fullres]


def _blob(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))).astype(np.float32)


def test_masks_on_real_xrays_are_plausible(fullres, fields) -> None:
    areas = [f.area_fraction for f in fields]
    assert all(f.plausible for f in fields)
    assert 0.12 < np.mean(areas) < 0.35
    for image, f in zip(fullres, fields, strict=True):
        h, w = image.pixels.shape[:2]
        assert f.mask.shape == (h, w) and f.mask.dtype == bool
        # two lung fields, one either side of the midline, none in the outer corners or the bottom 5%
        assert f.mask[:, : w // 2].sum() > 0.03 * h * w and f.mask[:, w // 2 :].sum() > 0.03 * h * w
        assert not f.mask[int(0.95 * h) :].any()
        assert not f.mask[: h // 10, : w // 10].any() and not f.mask[: h // 10, -w // 10 :].any()
        # inside the thorax (the masks' bounding box) the lungs are darker than the rest: aerated lung vs
        # mediastinum, spine and diaphragm
        grey = image.pixels.mean(axis=2)
        rows, cols = np.flatnonzero(f.mask.any(axis=1)), np.flatnonzero(f.mask.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        assert grey[box][f.mask[box]].mean() < grey[box][~f.mask[box]].mean() - 10


def test_heat_in_a_corner_scores_near_zero_and_warns(fullres, fields) -> None:
    image, field = fullres[0], fields[0]
    h, w = field.mask.shape
    heat = _blob((h, w), (0.04 * w, 0.04 * h), 0.05 * w)
    check = lungs.assess_heatmap(heat, image, fields=field)
    assert check.heat_in_lungs < 0.05 and check.heat_in_chest < 0.05
    assert check.warning is not None and "mostly on areas outside it" in check.warning
    assert f"Only {check.heat_in_chest:.0%} of the heatmap lies over the chest" in check.warning


def test_heat_on_the_mediastinum_counts_for_the_chest_not_the_lungs(fullres, fields) -> None:
    image, field = fullres[0], fields[0]
    h, w = field.mask.shape
    rows = np.flatnonzero(field.mask.any(axis=1))
    between = np.flatnonzero(field.chest[(rows[0] + rows[-1]) // 2] & ~field.mask[(rows[0] + rows[-1]) // 2])
    centre = (float(between.mean()), float((rows[0] + rows[-1]) / 2))
    check = lungs.assess_heatmap(_blob((h, w), centre, 0.03 * w), image, fields=field)
    assert check.heat_in_lungs < 0.5 < check.heat_in_chest
    assert check.warning is None
    assert "over the lung fields" in check.summary and "over the chest" in check.summary


def test_heat_on_the_lungs_scores_high_without_warning(fullres, fields) -> None:
    for image, field in zip(fullres[:4], fields[:4], strict=True):
        h, w = field.mask.shape
        heat = np.zeros((h, w), np.float32)
        count, labels, _, centroids = cv2.connectedComponentsWithStats(field.mask.astype(np.uint8))
        for i in range(1, count):
            heat += _blob((h, w), tuple(centroids[i]), 0.05 * w)
        check = lungs.assess_heatmap(heat, image, fields=field)
        assert check.heat_in_lungs > 0.9 and check.heat_in_chest >= check.heat_in_lungs
        assert check.warning is None


def test_low_resolution_heatmap_is_resized(fullres, fields) -> None:
    """Grad-CAM maps may come at the model's 7 x 7 grid; the score resizes them to the image."""
    field = fields[1]
    coarse = np.zeros((7, 7), np.float32)
    coarse[0, 0] = 1.0
    share = lungs.heat_in_lungs(coarse, field.mask)
    assert share < 0.05


def test_heat_in_lungs_hand_computed() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    assert lungs.heat_in_lungs(np.ones((10, 10)), mask) == pytest.approx(0.5)
    heat = np.zeros((10, 10))
    heat[2, 2], heat[2, 7] = 3.0, 1.0
    assert lungs.heat_in_lungs(heat, mask) == pytest.approx(0.75)
    assert lungs.heat_in_lungs(np.zeros((10, 10)), mask) == 0.0
    with pytest.raises(ValueError, match="2-D"):
        lungs.heat_in_lungs(np.ones((10, 10, 3)), mask)


def test_no_lungs_on_a_blank_image_means_no_check() -> None:
    blank = np.full((300, 300, 3), 120, np.uint8)
    field = lungs.lung_fields(blank)
    assert not field.plausible and field.area_fraction == 0.0
    check = lungs.assess_heatmap(np.ones((300, 300), np.float32), blank)
    assert check.heat_in_lungs is None and check.heat_in_chest is None
    assert "could not be outlined" in check.warning and "not checked" in check.summary


def test_accepts_grey_arrays_and_keeps_size(fullres) -> None:
    grey = fullres[2].pixels[..., 0]
    mask = lungs.lung_mask(grey)
    assert mask.shape == grey.shape
    assert np.array_equal(mask, lungs.lung_mask(fullres[2]))


def test_scoring_grid_keeps_the_full_resolution_shares(fullres, fields):
    """The check scores at SCORE_SIDE; shares stay within 0.02 of scoring the full-resolution mask."""
    assert max(fullres[0].pixels.shape[:2]) > lungs.SCORE_SIDE  # real full-size uploads
    for image, field in zip(fullres, fields, strict=True):
        h, w = image.pixels.shape[:2]
        heat = _blob((h, w), (int(0.35 * w), int(0.5 * h)), 0.15 * w) + 0.5 * _blob((h, w), (int(0.9 * w), 20), 0.1 * w)
        full = lungs.assess_heatmap(heat, image, fields=field)  # the full-resolution computation
        fast = lungs.assess_heatmap(heat, image)
        assert (full.heat_in_lungs is None) == (fast.heat_in_lungs is None)
        if full.heat_in_lungs is not None:
            assert abs(full.heat_in_lungs - fast.heat_in_lungs) <= 0.02
            assert abs(full.heat_in_chest - fast.heat_in_chest) <= 0.02
    assert lungs.score_shape(1416, 1776) == (408, 512) and lungs.score_shape(224, 224) == (224, 224)


def _fill_holes_reference(image: np.ndarray) -> np.ndarray:
    """Reconstruction by erosion in float, one convergence check per sweep (the textbook loop)."""
    marker = np.full_like(image, image.max())
    marker[0, :], marker[-1, :], marker[:, 0], marker[:, -1] = image[0, :], image[-1, :], image[:, 0], image[:, -1]
    while True:
        grown = np.maximum(cv2.erode(marker, np.ones((3, 3), np.uint8)), image)
        if np.array_equal(grown, marker):
            return marker
        marker = grown


def test_hole_filling_matches_the_float_reconstruction_on_real_xrays(fullres) -> None:
    for image in fullres[:4]:
        grey, _ = lungs._grey(image, lungs.WORK_SIZE)
        grey = cv2.GaussianBlur(grey, (0, 0), 2)
        lo, hi = np.percentile(grey, [1, 99])
        grey = np.clip((grey - lo) / (hi - lo), 0, 1).astype(np.float32)
        filled, reference = lungs._fill_holes(grey), _fill_holes_reference(grey)
        assert np.abs(filled - reference).max() <= 1e-4  # 16-bit levels: steps of 1.5e-5
        assert float((reference - grey).max()) > 0.1  # real basins were filled, not a flat no-op


def test_shares_from_the_preview_match_shrinking_the_full_image_directly(fullres) -> None:
    """The lung fields start from the upload's 1024-px preview; before, the full image was shrunk to 256 px."""
    for image in fullres:
        h, w = image.pixels.shape[:2]
        shape = lungs.score_shape(h, w)
        direct = cv2.resize(image.pixels, (lungs.WORK_SIZE, lungs.WORK_SIZE), interpolation=cv2.INTER_AREA)
        before = lungs.lung_fields(direct, shape=shape)
        after = lungs.lung_fields(image, shape=shape)
        heat = _blob((h, w), (int(0.35 * w), int(0.5 * h)), 0.15 * w) + 0.5 * _blob((h, w), (int(0.9 * w), 20), 0.1 * w)
        old, new = lungs.assess_heatmap(heat, image, fields=before), lungs.assess_heatmap(heat, image, fields=after)
        assert (old.heat_in_lungs is None) == (new.heat_in_lungs is None)
        if old.heat_in_lungs is not None:
            assert abs(old.heat_in_lungs - new.heat_in_lungs) <= 0.02
            assert abs(old.heat_in_chest - new.heat_in_chest) <= 0.02


def test_chest_is_the_hull_of_every_lung_pixel(fields) -> None:
    for field in fields:
        points = cv2.findNonZero(field.mask.astype(np.uint8))
        expected = np.zeros(field.mask.shape, np.uint8)
        cv2.fillPoly(expected, [cv2.convexHull(points)], 1)
        assert np.array_equal(field.chest, expected.astype(bool))
