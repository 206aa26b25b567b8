"""Lung fields of frontal chest X-rays, and how much of a Grad-CAM heatmap lies inside them.

Lung fields (`lung_fields`): a small lung segmentation model (a MONAI U-Net, `models/lungs`, trained on hand-drawn
lung masks; `xray.inference.segmentation`, `xray.training.lungs`, its card for the measured Dice). The grey image is
squeezed to the model's input side (192 px) from the upload's preview, the logits are resized to the grid asked for
and thresholded, components under 10% of the largest are dropped and each outline is filled. The model is found by
`XRAY_LUNG_MODEL` (default the bundled `lungs`; `local-dir:` and `hf-hub:` names work as for the classifiers), loaded
on first use and kept (nothing at import). When it cannot be found, the intensity heuristic below stands in, the log
says so once, and every check carries `FALLBACK_NOTE`, so the doctor sees that the shares are rougher.

Fallback heuristic (`heuristic_lung_fields`; intensity-based, no model, Dice median 0.70 on adults against the
hand-drawn masks where the model reaches the figures in its card):
1. Grey image resized to 256 x 256, lightly blurred and contrast-stretched (1st-99th percentile).
2. Grey-level hole filling (morphological reconstruction by erosion from the image border) gives, for every
   pixel, how far it lies below the brightest "rim" it would have to cross to reach the border. The aerated
   lungs are dark basins enclosed by the chest wall, mediastinum and diaphragm, so they stand out; air outside
   the body is connected to the border and does not.
3. That depth map is smoothed (so ribs do not split the lungs) and thresholded at 20% of its 99th percentile.
4. On each side of the midline, the large basins in the thorax band are kept and replaced by their convex hull
   (which also takes back denser, opacified parts inside the lung outline).
5. When one side is much smaller than the other (a white lung, or a failure), the larger side is mirrored
   about the spine onto it; the result says so.

Heatmap check: the share of Grad-CAM heat over the lung fields is reported, and so is the share over the
chest (the convex hull of both lung fields, which adds the mediastinum and heart between them). The warning
fires when less than half of the heat lies over the chest, i.e. the model looked mostly at corners, labels,
markers, shoulders, neck or abdomen. Why the chest and not the lungs alone: with a trained EfficientNet-Lite0
(Kermany), the median heat over the lung fields was 0.41-0.48 and a lungs-only rule would have warned on 61%
of official test images, mostly for heat on the hila, heart borders and mediastinum, which are legitimate
places to look; the chest rule warned on 8% of them (19% of the 16 full-resolution validation images, 30% of
adult covid-chestxray images). Measured with scripts/eval_gate.py --lungs on the heuristic's lung fields, before
the model; how the model moved the shares and warnings is in the README (Performance, lung fields).

Cost: the heatmap check works at `SCORE_SIDE` (512 px on the long side, the aspect ratio kept), not at the
upload's resolution: the lung fields come from a 192-px model input (256 px for the heuristic) and Grad-CAM from a
7 x 7 grid, so a full-size mask adds nothing but time (a 1776 x 1416 upload spent about 0.2 s dilating its
full-size mask). On real X-rays the shares change by at most 0.02 (tests/test_lungs.py). Both start from the
upload's 1024-px preview (`xray.imaging.io.XrayImage.preview`, shared with the input gate and the display); the
heuristic's hole filling runs on 16-bit levels; against shrinking the full image and filling in float, shares moved
by at most 0.0095 on 232 real images x model pairs (tests/test_lungs.py allows 0.02). The model's cost per upload
is the "lung fields" stage of `python -m xray.bench_request`.

Limits: both assume an upright frontal (PA/AP) view; on lateral views, CT slices or photographs the mask is
meaningless, which is why the input gate runs first. The heuristic was checked by eye on the 16 full-resolution
Kermany validation images and a sample of covid-chestxray images (see scripts/eval_gate.py --lungs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from xray.inference.segmentation import LungSegmenter

logger = logging.getLogger(__name__)

WORK_SIZE = 256
#: Hole filling checks for convergence after this many sweeps (see `_fill_holes`).
_SWEEPS_PER_CHECK = 8
#: Long side of the grid the heatmap check scores on (see "Cost" above).
SCORE_SIDE = 512
#: Depth threshold as a share of the depth map's 99th percentile (step 3).
DEPTH_FRACTION = 0.2
#: Heatmap check: warn when less than this share of the heat lies over the chest (lung fields and the space
#: between them). The chest covers about 45% of a typical image, so below one half the map prefers the rest of
#: the image at least as much as a map with no preference at all.
MIN_HEAT_IN_CHEST = 0.5
#: Margin added around the lung fields when scoring a heatmap, as a share of the image side: Grad-CAM maps
#: come from a 7 x 7 (or similar) grid, so heat centred in a lung spills a little over its outline.
HEAT_MARGIN = 0.03
#: A mask covering less or more than this share of the image is not trusted for the heatmap check.
PLAUSIBLE_AREA = (0.05, 0.6)

HEURISTIC_METHOD = "intensity-based lung-field estimate (grey-level hole filling + convex hull per lung)"
MODEL_METHOD = "lung segmentation model (U-Net trained on hand-drawn lung masks)"
#: Said with every check made by the heuristic: the doctor should know the shares are rougher.
FALLBACK_NOTE = (
    "Lung fields estimated from image intensities (the lung segmentation model is not installed): the shares are "
    "approximate."
)
#: A model component smaller than this share of the largest one is a speck, not a lung.
MIN_COMPONENT_SHARE = 0.1


@dataclass
class LungFields:
    """The estimated lung fields of one image.

    Attributes:
        mask: HxW bool at the image's own resolution (True inside the lung fields).
        area_fraction: share of the image the mask covers.
        mirrored: True when one lung was filled in by mirroring the other (step 5).
        plausible: False when the mask is too small or too large to be trusted.
        method: how the fields were found (`MODEL_METHOD` or `HEURISTIC_METHOD`).
    """

    mask: np.ndarray
    area_fraction: float
    mirrored: bool
    plausible: bool
    method: str = MODEL_METHOD

    @property
    def note(self) -> str | None:
        """What a doctor should know about how the fields were found: set when the heuristic stood in."""
        return FALLBACK_NOTE if self.method == HEURISTIC_METHOD else None

    @property
    def chest(self) -> np.ndarray:
        """The chest: convex hull of both lung fields (adds the mediastinum and heart between them), HxW bool."""
        # The hull of the outlines is the hull of every mask pixel, from far fewer points.
        contours, _ = cv2.findContours(self.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = np.zeros(self.mask.shape, np.uint8)
        if contours:
            cv2.fillPoly(hull, [cv2.convexHull(np.concatenate(contours))], 1)
        return hull.astype(bool)


@dataclass
class HeatmapCheck:
    """Where a heatmap's heat lies relative to the lung fields.

    Attributes:
        heat_in_lungs: share of the heat mass over the lung fields (with a small margin), 0..1; None when the
            lung fields could not be estimated.
        heat_in_chest: share over the chest (lung fields, the space between them, and the margin), 0..1, or None.
        lung_area_fraction: share of the image the lung fields cover (what an evenly spread map would score).
        warning: doctor-readable text when the model looked mostly outside the chest (or the check could not be
            made), else None.
        method: how the lung fields were found.
        note: set when the intensity heuristic stood in for the missing segmentation model (`FALLBACK_NOTE`).
    """

    heat_in_lungs: float | None
    heat_in_chest: float | None
    lung_area_fraction: float
    warning: str | None
    method: str = MODEL_METHOD
    note: str | None = None

    @property
    def summary(self) -> str:
        """One line for the app: the two shares, or why they are missing (and the fallback note when it applies)."""
        if self.heat_in_lungs is None or self.heat_in_chest is None:
            text = "Heat location not checked (lung fields not found)."
        else:
            text = (f"{self.heat_in_lungs:.0%} of the heatmap lies over the lung fields, {self.heat_in_chest:.0%} "
                    f"over the chest (lung fields cover {self.lung_area_fraction:.0%} of the image).")
        return f"{text} {self.note}" if self.note else text


def _grey(image: Any, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey float32 pixels of an XrayImage, HxWx3 / HxW array or PIL image, and the image's own (height, width).

    With `size`, the pixels are first shrunk (area interpolation) to `size` x `size`, so a large upload is never
    converted to grey at full resolution. The shrinking starts from the image's preview (`xray.imaging.io.preview`),
    which the other checks of the same upload share.
    """
    from xray.imaging.io import XrayImage, preview

    arr = np.asarray(getattr(image, "pixels", image))
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 2:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {arr.shape}")
    shape = (int(arr.shape[0]), int(arr.shape[1]))
    if size is not None:
        arr = preview(image if isinstance(image, XrayImage) else arr)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[..., :3])
    if size is not None:
        arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA)
    arr = arr.astype(np.float32)
    return (arr.mean(axis=2) if arr.ndim == 3 else arr), shape


def _fill_holes(image: np.ndarray) -> np.ndarray:
    """Grey-level hole filling: reconstruction by erosion seeded from the image border.

    `image` is float in [0, 1]. The sweeps run on 16-bit levels (steps of 1/65535, far below anything the depth
    threshold can see), where an erosion costs about half of a float one, and convergence is checked every few
    sweeps: a sweep past convergence changes nothing, so the result is the same as checking after each one.
    """
    levels = np.rint(np.clip(image, 0.0, 1.0) * 65535).astype(np.uint16)
    marker = np.full_like(levels, levels.max())
    marker[0, :], marker[-1, :], marker[:, 0], marker[:, -1] = levels[0, :], levels[-1, :], levels[:, 0], levels[:, -1]
    kernel = np.ones((3, 3), np.uint8)
    eroded = np.empty_like(marker)
    # Converges in at most a few hundred sweeps at 256 px; the cap only guards against pathological inputs.
    for _ in range(0, 4 * WORK_SIZE, _SWEEPS_PER_CHECK):
        before = marker.copy()
        for _ in range(_SWEEPS_PER_CHECK):
            cv2.erode(marker, kernel, dst=eroded)
            np.maximum(eroded, levels, out=marker)
        if np.array_equal(before, marker):
            break
    return marker.astype(np.float32) / 65535


def _spine_column(grey: np.ndarray, rows: slice) -> int:
    """Column of the spine / mediastinum: the brightest column of the central band over the given rows."""
    profile = cv2.GaussianBlur(grey[rows].mean(axis=0, keepdims=True), (0, 0), 4).ravel()
    lo, hi = int(0.35 * WORK_SIZE), int(0.65 * WORK_SIZE)
    return lo + int(np.argmax(profile[lo:hi]))


def heuristic_lung_fields(image: Any, *, shape: tuple[int, int] | None = None) -> LungFields:
    """Estimate the lung fields with the intensity heuristic (the fallback; see the module docstring).

    Args:
        image: an `XrayImage`, an HxWx3 RGB or HxW grey array.
        shape: (height, width) of the returned mask; default the image's own resolution.

    Returns:
        The mask, with its area share and whether it is plausible.
    """
    size = WORK_SIZE
    grey, (height, width) = _grey(image, size)
    if shape is not None:
        height, width = shape
    grey = cv2.GaussianBlur(grey, (0, 0), 2)
    lo, hi = np.percentile(grey, [1, 99])
    work = np.zeros((size, size), np.uint8)
    mirrored = False
    # A (nearly) flat image has no lungs to find; stretching its rounding noise would invent some.
    contrast = hi - lo >= 2.0
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    depth = cv2.GaussianBlur(_fill_holes(grey) - grey, (0, 0), 5) if contrast else np.zeros_like(grey)
    reference = float(np.percentile(depth, 99))
    if reference > 1e-3:
        candidates = (depth > DEPTH_FRACTION * reference).astype(np.uint8)
        count, labels, stats, centroids = cv2.connectedComponentsWithStats(candidates, connectivity=8)
        sides: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
        for i in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[i])
            cx, cy = centroids[i] / size
            if area < 0.005 * size * size or not (0.08 < cx < 0.92 and 0.08 < cy < 0.85):
                continue
            # Basins reaching the side or bottom edge are air outside the body behind a bright frame or arm.
            if x <= 0.01 * size or x + w >= 0.99 * size or y + h >= 0.99 * size:
                continue
            sides[int(cx > 0.5)].append((area, i))
        hulls: dict[int, np.ndarray] = {}
        for side, members in sides.items():
            if not members:
                continue
            largest = max(members)[0]
            # Fragments (upper lobe split off by a rib or the clavicle) join the largest basin of that side.
            keep = [i for area, i in members if area >= 0.15 * largest]
            contours, _ = cv2.findContours(np.isin(labels, keep).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            hull_mask = np.zeros((size, size), np.uint8)
            cv2.fillPoly(hull_mask, [cv2.convexHull(np.concatenate(contours))], 1)
            hulls[side] = hull_mask
        areas = {side: int(m.sum()) for side, m in hulls.items()}
        if hulls:
            big = max(areas, key=areas.get)
            small_area = areas.get(1 - big, 0)
            if small_area < 0.35 * areas[big]:
                rows = np.flatnonzero(hulls[big].any(axis=1))
                axis = _spine_column(grey, slice(rows[0], rows[-1] + 1))
                columns = np.clip(2 * axis - np.arange(size), 0, size - 1)
                hulls[1 - big] = np.maximum(hulls.get(1 - big, np.zeros_like(hulls[big])), hulls[big][:, columns])
                # The reflection must land on the other side of the spine, not overlap the original lung.
                hulls[1 - big][hulls[big] > 0] = 0
                mirrored = True
            for hull_mask in hulls.values():
                work |= hull_mask
    mask = cv2.resize(work, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    fraction = float(mask.mean())
    plausible = PLAUSIBLE_AREA[0] <= fraction <= PLAUSIBLE_AREA[1]
    if not plausible:
        logger.debug("implausible lung-field estimate: %.3f of the image", fraction)
    return LungFields(mask=mask, area_fraction=fraction, mirrored=mirrored, plausible=plausible,
                      method=HEURISTIC_METHOD)


def model_lung_fields(image: Any, segmenter: LungSegmenter, *, shape: tuple[int, int] | None = None) -> LungFields:
    """The lung fields from the segmentation model: probability > threshold, specks dropped, holes filled.

    Args:
        image: an `XrayImage`, an HxWx3 RGB or HxW grey array.
        segmenter: the loaded model (`xray.inference.segmentation.load_segmenter`).
        shape: (height, width) of the returned mask; default the image's own resolution.
    """
    grey, (height, width) = _grey(image, segmenter.input_side)
    if shape is not None:
        height, width = shape
    lo, hi = np.percentile(grey, [1, 99])
    if hi - lo < 2.0:
        # A (nearly) flat image has no lungs; the network would answer its bias (as the heuristic, step 1).
        mask = np.zeros((height, width), bool)
        return LungFields(mask=mask, area_fraction=0.0, mirrored=False, plausible=False, method=MODEL_METHOD)
    with segmenter.lock:  # one module shared by request threads: one at a time (oversubscribed pools are slower)
        probability = segmenter.probability_at(grey, (height, width))
    raw = (probability > segmenter.threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(raw, connectivity=8)
    work = np.zeros_like(raw)
    if count > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = 1 + np.flatnonzero(areas >= MIN_COMPONENT_SHARE * areas.max())
        # The outline of each kept lung, filled: a lung has no holes, an opacity inside it is still lung.
        contours, _ = cv2.findContours(np.isin(labels, keep).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)  # fmt: skip
        cv2.drawContours(work, contours, -1, 1, thickness=cv2.FILLED)
    mask = work.astype(bool)
    fraction = float(mask.mean())
    plausible = PLAUSIBLE_AREA[0] <= fraction <= PLAUSIBLE_AREA[1]
    return LungFields(mask=mask, area_fraction=fraction, mirrored=False, plausible=plausible, method=MODEL_METHOD)


@lru_cache(maxsize=4)
def _segmenter_or_none(name: str) -> LungSegmenter | None:
    from xray.errors import ModelNotFoundError
    from xray.inference.segmentation import load_segmenter

    try:
        return load_segmenter(name)
    except ModelNotFoundError as exc:
        logger.warning("lung segmentation model '%s' not found, using the intensity heuristic: %s", name, exc)
        return None


def default_segmenter() -> LungSegmenter | None:
    """The lung segmentation model named by `XRAY_LUNG_MODEL` (default: the bundled `lungs` folder), loaded once.

    None when it cannot be found (the heuristic stands in; a warning is logged once per name). A folder that is
    there but unusable raises `ModelConfigError`, since that is a broken install rather than a missing one.
    """
    from xray.config import get_settings

    return _segmenter_or_none(get_settings().lung_model)


def lung_fields(image: Any, *, shape: tuple[int, int] | None = None) -> LungFields:
    """The lung fields of a frontal chest X-ray: from the segmentation model, else from the intensity heuristic.

    Args:
        image: an `XrayImage`, an HxWx3 RGB or HxW grey array.
        shape: (height, width) of the returned mask; default the image's own resolution.

    Returns:
        The mask, with its area share, whether it is plausible and how it was found (`LungFields.note` says when
        the heuristic stood in).
    """
    segmenter = default_segmenter()
    if segmenter is None:
        return heuristic_lung_fields(image, shape=shape)
    return model_lung_fields(image, segmenter, shape=shape)


def lung_mask(image: Any) -> np.ndarray:
    """The estimated lung fields as an HxW bool mask at the image's resolution (see `lung_fields`)."""
    return lung_fields(image).mask


def heat_in_lungs(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's mass that lies inside the mask (0..1).

    Args:
        heatmap: HxW non-negative map (e.g. Grad-CAM in [0, 1]); resized to the mask when the sizes differ.
        mask: HxW bool mask.

    Returns:
        sum(heat inside) / sum(heat); 0.0 for an all-zero heatmap (no heat anywhere, so none in the lungs).
    """
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0, None)
    mask = np.asarray(mask, dtype=bool)
    if heat.ndim != 2 or mask.ndim != 2:
        raise ValueError(f"heatmap and mask must be 2-D, got {heat.shape} and {mask.shape}")
    if heat.shape != mask.shape:
        heat = cv2.resize(heat, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    total = float(heat.sum())
    if total <= 0:
        return 0.0
    return float(heat[mask].sum() / total)


def _with_margin(mask: np.ndarray, margin: float) -> np.ndarray:
    radius = max(1, int(round(margin * max(mask.shape))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def score_shape(height: int, width: int, side: int = SCORE_SIDE) -> tuple[int, int]:
    """(height, width) of the grid a heatmap is scored on: the long side at most `side`, the aspect ratio kept."""
    from xray.imaging.io import fit_size

    grid_width, grid_height = fit_size(width, height, side)
    return grid_height, grid_width


def assess_heatmap(heatmap: np.ndarray, image: Any, *, fields: LungFields | None = None) -> HeatmapCheck:
    """Check where a heatmap's heat lies: over the lung fields, over the chest, or elsewhere.

    Args:
        heatmap: HxW Grad-CAM (any size; resized to the scoring grid).
        image: the image it explains (`XrayImage` or array).
        fields: a lung-field estimate already computed for this image, at any resolution (else one is computed
            at `score_shape` of the image, which is all the check needs).

    Returns:
        The shares of heat over the lung fields and over the chest (each with a margin of `HEAT_MARGIN` of the
        image side for the coarse Grad-CAM grid), and a warning when the chest share is below
        `MIN_HEAT_IN_CHEST` (see the module docstring for why the chest and not the lungs alone).
    """
    if fields is None:
        pixels = np.asarray(getattr(image, "pixels", image))
        fields = lung_fields(image, shape=score_shape(*pixels.shape[:2]))
    if not fields.plausible:
        return HeatmapCheck(
            heat_in_lungs=None,
            heat_in_chest=None,
            lung_area_fraction=fields.area_fraction,
            warning="The lung fields could not be outlined on this image, so where the model looked was not checked.",
            method=fields.method,
            note=fields.note,
        )
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != fields.mask.shape:  # once here rather than once per share
        heat = cv2.resize(heat, (fields.mask.shape[1], fields.mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    in_lungs = heat_in_lungs(heat, _with_margin(fields.mask, HEAT_MARGIN))
    in_chest = heat_in_lungs(heat, _with_margin(fields.chest, HEAT_MARGIN))
    return HeatmapCheck(heat_in_lungs=in_lungs, heat_in_chest=in_chest, lung_area_fraction=fields.area_fraction,
                        warning=heat_warning(in_lungs, in_chest), method=fields.method, note=fields.note)


def heat_warning(in_lungs: float, in_chest: float) -> str | None:
    """The doctor-readable warning when less than `MIN_HEAT_IN_CHEST` of the heat lies over the chest, else None.

    Shared by `assess_heatmap` and by the app's stored records, so the rule and its wording live in one place.
    """
    if in_chest >= MIN_HEAT_IN_CHEST:
        return None
    return (
        f"Only {in_chest:.0%} of the heatmap lies over the chest ({in_lungs:.0%} over the lung fields): the model "
        "based this result mostly on areas outside it (e.g. corners, labels, markers, shoulders, neck or "
        "abdomen). Treat it with caution."
    )


def run_lungs_command(args: Any) -> int:
    """`python -m xray lungs IMAGE... --out DIR [--overlay] [--model NAME]`: one mask PNG (and overlay) per image.

    Returns:
        0 when every image was written, 1 when some could not be read.
    """
    from pathlib import Path

    from xray.errors import ImageReadError
    from xray.imaging.io import read_image
    from xray.inference.segmentation import load_segmenter

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = load_segmenter(args.model) if args.model else default_segmenter()
    if segmenter is None:
        logger.warning(FALLBACK_NOTE)
    failed = 0
    for name in args.images:
        path = Path(name)
        try:
            image = read_image(path)
        except (ImageReadError, OSError) as exc:
            logger.error("%s: %s", path, exc)
            failed += 1
            continue
        fields = heuristic_lung_fields(image) if segmenter is None else model_lung_fields(image, segmenter)
        mask = fields.mask.astype(np.uint8) * 255
        cv2.imwrite(str(out / f"{path.stem}.png"), mask)
        if args.overlay:
            picture = cv2.cvtColor(np.ascontiguousarray(image.pixels), cv2.COLOR_RGB2BGR)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            thickness = max(2, round(max(mask.shape) / 300))
            cv2.drawContours(picture, contours, -1, (0, 200, 255), thickness)
            cv2.imwrite(str(out / f"{path.stem}_overlay.png"), picture)
        logger.info("%s: lung fields %.0f%% of the image (%s)", path.name, 100 * fields.area_fraction, fields.method)
    return 1 if failed else 0
