"""Input gate: is this a frontal chest X-ray like the ones the model was trained on?

Two kinds of checks, each finding with a `code` and a doctor-readable `reason`:

Image statistics and DICOM header (`check_image`; thresholds set on the training images, see below):
- `too_small`: shorter side under `MIN_SIDE` px;
- `color`: a colour image (`xray.imaging.io.color_image`: more than 2% of pixels clearly coloured);
- `blank`: nearly uniform (grey-level spread or standard deviation far below any training image);
- `inverted`: grey levels reversed (bones dark, lungs bright), by correlation with the average layout of a
  frontal chest X-ray (`FRONTAL_LAYOUT`);
- `circular_field`: a round field of view on a uniform background, the look of a reconstructed CT/MR slice;
- `modality`, `view`, `body_part`: the DICOM header says CT/MR/ultrasound/..., a lateral (or oblique,
  decubitus) view, or another body part.

Learned view check (`xray.trust.view`): a class-balanced multinomial logistic regression on the same features
the OOD score uses (no extra forward pass) tells a frontal chest X-ray from a lateral view (`lateral_view`) and
from an image that is not a chest X-ray (`not_chest_xray`), by the most probable class. Stored as `view.npz`
(`config.json` key `view_check`) and loaded with the OOD statistics by `ood_stats_for` (`OodStats.view_check`),
so every caller of `verdict` applies it; fitted and measured by `scripts/eval_gate.py --fit` (see that module).

Out-of-distribution score (`ood_score`): Mahalanobis distance of the model's penultimate features to the
training features (class-conditional means, one shared Ledoit-Wolf shrinkage covariance; Lee et al. 2018),
flagged above the `quantile` (default 99%) of the distances of the validation images. The statistics live
in the model folder (`ood.npz`, and `config.json` key `ood`), written by `fit_model_ood` after training, or
by `scripts/eval_gate.py --fit` on the training and validation images of every in-scope source (`sources`).
Two choices, both measured with scripts/eval_gate.py on a trained EfficientNet-Lite0 (Kermany):
- Features are taken from a canonical copy of the image (`ood_view`: whole image resized to the model input
  size, saved as JPEG quality 75, as the Kermany training copies were). Without it, resolution and
  compression alone made 5 of the 16 full-resolution Kermany validation images "unlike the training data".
  This costs one forward pass per image besides the prediction's, accepted on purpose: measured with
  `scripts/eval_gate.py --model pneumonia --cost IMAGE` on a 1776 x 1416 upload (efficientnet_lite0, 2 CPU
  threads), the whole gate takes 75 ms (36 ms of it this copy's forward pass) next to the prediction's 36 ms.
  A model whose own transform already makes that copy (config.json `input_jpeg_quality`, the covid model) is
  fitted on the prediction's own features instead, and its gate reuses the prediction's forward pass.
  Statistics fitted before this choice (config `ood` without `view`) also work on the prediction's own features.
- Features are L2-normalised before the distance: natural photographs, their grey-scale copies and CT/MR
  slices were then all flagged (8/8, 8/8, 6/6, against 6/8, 5/8, 3/6 without), at 1.4% of official test
  images flagged (0.8% without), with the earlier late-stages-only model. This choice was made looking at
  those sets (never at the test set). The current models' figures are in model_card.md (gate.json).
Four other variants (thresholds from perturbed validation images, fits with perturbed or held-out images,
features of an earlier stage) were compared with this one on non-test data by a rule written down first; none
kept 95% of the out-of-scope sets while flagging fewer X-rays (docs/ood-study.md, scripts/ood_study.py).

An image with any finding is out of scope: the app shows the prediction only on request, under a warning
that lists the reasons.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xray.errors import OodStatsError
from xray.trust import view as viewcheck

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- image statistics

#: Shorter side below which an image is too small: the ribs, vessels and small opacities the model relies on
#: are lost. The training images are 224 px (Kermany) and at least 156 px (covid-chestxray).
MIN_SIDE = 128
#: Long side of the copy the image statistics are computed on (blank, inverted, circular field of view).
STATS_SIDE = 512
#: Nearly blank: grey-level spread (99.5th - 0.5th percentile) or standard deviation below these. The lowest
#: values among the 5216 Kermany / 555 covid-chestxray training images: spread 90 / 69, std 19.9 / 14.8.
MIN_SPREAD = 32.0
MIN_STD = 6.0
#: Inverted: correlation with `FRONTAL_LAYOUT` below this. Kermany training images: 0.08 at the lowest (99.9%
#: above 0.2); an inverted image scores the negative of its original, so -0.1 catches 99.98% of inverted
#: training images while leaving a margin for unusual real ones (1 of 555 covid-chestxray images: -0.24).
INVERTED_BELOW = -0.1
#: Circular field of view: largest deviation of the field edge from the inscribed circle (share of the
#: radius). CT slices with a visible scan circle score under 0.02; no training image scores under 0.18.
CIRCLE_TOLERANCE = 0.08

#: Average grey-level layout of a frontal chest X-ray on a 16 x 16 grid covering the central 80% of the image
#: (left half; the right half mirrors it), z-scored, x10. Mean of the z-scored 5216 Kermany training images,
#: made left-right symmetric; printed by `scripts/eval_gate.py --image-stats DIR`. Dark lungs either side of
#: a bright mediastinum, bright abdomen below.
_LAYOUT_LEFT_HALF = (
    (-15, -9, -5, -2, 0, 2, 5, 8),
    (-14, -6, -1, 1, 0, -1, 5, 9),
    (-14, -4, 1, 0, -4, -5, 4, 10),
    (-15, -3, 2, -3, -8, -7, 4, 12),
    (-15, -2, 0, -6, -10, -6, 5, 13),
    (-14, -2, -2, -8, -9, -3, 7, 14),
    (-13, -2, -5, -10, -8, 0, 9, 16),
    (-12, -3, -8, -11, -7, 3, 11, 17),
    (-12, -5, -10, -10, -4, 5, 12, 18),
    (-11, -7, -11, -9, -2, 6, 13, 19),
    (-12, -9, -12, -8, -1, 6, 13, 19),
    (-12, -11, -12, -7, -1, 5, 12, 19),
    (-13, -12, -11, -5, 1, 5, 12, 19),
    (-14, -11, -7, 0, 5, 8, 13, 19),
    (-13, -6, 0, 7, 11, 12, 16, 20),
    (-10, 0, 7, 12, 15, 16, 17, 21),
)
LAYOUT_GRID = 20  # the image is averaged onto 20 x 20 cells; the central 16 x 16 are compared
_LAYOUT_MARGIN = 2


def _zscore(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.mean()) / (values.std() + 1e-6)


FRONTAL_LAYOUT = _zscore(np.hstack([np.array(_LAYOUT_LEFT_HALF), np.array(_LAYOUT_LEFT_HALF)[:, ::-1]]))

#: DICOM Modality values of projection radiographs (CR, DX, DR, RG) and of captures that may hold one.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", "SC"})
_MODALITY_NAMES = {
    "CT": "a CT slice",
    "MR": "an MR image",
    "US": "an ultrasound image",
    "NM": "a nuclear medicine image",
    "PT": "a PET image",
    "MG": "a mammogram",
    "XA": "an angiography image",
    "RF": "a fluoroscopy image",
    "XC": "an external camera photograph",
    "SEG": "a segmentation, not an image",
}
#: DICOM ViewPosition values of frontal views; anything else that is a known view is flagged.
FRONTAL_VIEWS = frozenset({"PA", "AP"})
_LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"})
_OTHER_VIEWS = {"RLD": "decubitus", "LLD": "decubitus", "RLO": "oblique", "LLO": "oblique", "AX": "axial"}
#: DICOM BodyPartExamined values that clearly name another region (free text, often localised, so only an
#: explicit list is flagged; an absent or unknown value is not).
OTHER_BODY_PARTS = frozenset({
    "HEAD", "BRAIN", "SKULL", "FACE", "NECK", "CSPINE", "LSPINE", "SSPINE", "SPINE", "ABDOMEN", "PELVIS", "HIP",
    "KNEE", "ANKLE", "FOOT", "LEG", "HAND", "WRIST", "ELBOW", "ARM", "EXTREMITY", "BREAST", "HEART", "LIVER",
    "KIDNEY", "BLADDER", "PROSTATE", "UTERUS", "EYE",
})


#: Fewest training and validation images an OOD fit accepts (a covariance needs rows).
MIN_OOD_ROWS = 10


@dataclass(frozen=True)
class GateFinding:
    """One reason why an image looks out of scope.

    Attributes:
        code: short identifier (`too_small`, `color`, `blank`, `inverted`, `circular_field`, `modality`,
            `view`, `body_part`, `lateral_view`, `not_chest_xray`, `out_of_distribution`).
        reason: the sentence shown to the doctor.
        value: the measured statistic behind it, when there is one (for logs and evaluation).
    """

    code: str
    reason: str
    value: float | None = None


@dataclass
class GateResult:
    """The gate's verdict on one image.

    Attributes:
        in_scope: True when no check fired.
        reasons: the findings' doctor-readable reasons, in order.
        findings: the findings themselves.
        ood_distance: Mahalanobis distance of the image's features (None when the model has no OOD statistics).
        ood_threshold: the distance above which an image counts as far from the training data.
        view_probabilities: the view check's class probabilities (None when the model has no view check).
    """

    in_scope: bool
    reasons: list[str]
    findings: list[GateFinding] = field(default_factory=list)
    ood_distance: float | None = None
    ood_threshold: float | None = None
    view_probabilities: dict[str, float] | None = None

    @property
    def codes(self) -> list[str]:
        """The findings' codes."""
        return [f.code for f in self.findings]

    @property
    def warning(self) -> str | None:
        """One paragraph for the doctor, or None when the image is in scope."""
        if self.in_scope:
            return None
        return (
            "This image may be outside what the model was made for (frontal chest X-rays): "
            + " ".join(self.reasons)
            + " Any result for it is unreliable."
        )


def _grey(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    return arr[..., :3].mean(axis=2) if arr.ndim == 3 else arr.astype(np.float64)


def layout_correlation(grey: np.ndarray) -> float:
    """Correlation of an image's coarse grey-level layout with `FRONTAL_LAYOUT` (-1..1; about -0.8 when inverted)."""
    cells = cv2.resize(grey.astype(np.float32), (LAYOUT_GRID, LAYOUT_GRID), interpolation=cv2.INTER_AREA)
    inner = cells[_LAYOUT_MARGIN:-_LAYOUT_MARGIN, _LAYOUT_MARGIN:-_LAYOUT_MARGIN]
    return float((_zscore(inner) * FRONTAL_LAYOUT).mean())


def circle_deviation(grey: np.ndarray) -> float:
    """How far a uniform-background field edge is from the inscribed circle, as a share of its radius.

    Rays from the centre at 20 angles (25-65 degrees in each quadrant) find where the image stops matching
    the corners' value; for a CT/MR slice with a round field of view that radius is the inscribed circle's.
    Returns `inf` when the corners are not a uniform background at all.
    """
    size = 128
    small = cv2.resize(grey.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(small, [0.5, 99.5])
    norm = np.clip((small - lo) / max(hi - lo, 1e-6), 0, 1)
    corners = np.concatenate([norm[:4, :4].ravel(), norm[:4, -4:].ravel(), norm[-4:, :4].ravel(),
                              norm[-4:, -4:].ravel()])
    if corners.std() > 0.03:
        return math.inf
    background = float(np.median(corners))
    centre, radius = (size - 1) / 2, size / 2
    radii = np.arange(0.5 * radius, 1.41 * radius, 0.5)
    worst = 0.0
    for quadrant in range(4):
        for degrees in (25, 35, 45, 55, 65):
            theta = np.deg2rad(degrees + 90 * quadrant)
            xs = np.clip(np.round(centre + radii * np.cos(theta)).astype(int), 0, size - 1)
            ys = np.clip(np.round(centre + radii * np.sin(theta)).astype(int), 0, size - 1)
            content = np.flatnonzero(np.abs(norm[ys, xs] - background) > 0.06)
            edge = radii[content[-1]] / radius if len(content) else 0.0
            worst = max(worst, abs(edge - 1.0))
    return worst


def _metadata_findings(metadata: dict[str, str]) -> list[GateFinding]:
    found = []
    modality = (metadata.get("Modality") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        what = _MODALITY_NAMES.get(modality, f"a '{modality}' image")
        found.append(GateFinding("modality", f"The DICOM header says this is {what} (Modality {modality}), not a "
                                             "chest radiograph."))
    view = (metadata.get("ViewPosition") or "").strip().upper()
    if view in _LATERAL_VIEWS:
        found.append(GateFinding("view", f"The DICOM header says this is a lateral view ({view}); the model was "
                                         "trained on frontal (PA/AP) views only."))
    elif view in _OTHER_VIEWS:
        found.append(GateFinding("view", f"The DICOM header says this is a {_OTHER_VIEWS[view]} view ({view}); the "
                                         "model was trained on frontal (PA/AP) views only."))
    part = (metadata.get("BodyPartExamined") or "").strip().upper().replace(" ", "")
    if part in OTHER_BODY_PARTS:
        found.append(GateFinding("body_part", f"The DICOM header says the body part is {part}, not the chest."))
    return found


def check_image(image: Any) -> list[GateFinding]:
    """Image-statistics and DICOM-header checks (no model needed).

    Args:
        image: an `XrayImage` (pixels, metadata, is_color) or an HxWx3 / HxW uint8 array.

    Returns:
        The findings, empty when nothing looks out of scope.
    """
    from xray.imaging.io import XrayImage, color_image, fit_size, preview

    pixels = np.asarray(getattr(image, "pixels", image))
    metadata = dict(getattr(image, "metadata", None) or {})
    findings = _metadata_findings(metadata)
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_SIDE:
        findings.append(GateFinding(
            "too_small", f"The image is only {width} x {height} pixels; at least {MIN_SIDE} px on the shorter side "
                         "is needed to show the lungs in enough detail.", float(min(height, width))))
    # An XrayImage whose channels are identical is grey by construction; anything else is looked at.
    single = image.grey() if isinstance(image, XrayImage) else None
    colour = bool(getattr(image, "is_color", False)) or (
        single is None and pixels.ndim == 3 and color_image(pixels[..., :3])
    )
    if colour:
        findings.append(GateFinding("color", "This is a colour image (a photograph or screenshot?), not a grey-scale "
                                             "X-ray."))
    # Statistics of a copy of at most STATS_SIDE px are the same and much cheaper. An XrayImage's preview (reduced
    # once per upload and shared with the display and the lung fields) is the starting point, so a large upload
    # is never shrunk or converted to float here.
    small = preview(image if isinstance(image, XrayImage) else pixels)
    if max(small.shape[:2]) > STATS_SIDE:
        size = fit_size(small.shape[1], small.shape[0], STATS_SIDE)
        small = cv2.resize(small if small.dtype == np.uint8 else small.astype(np.float32), size,
                           interpolation=cv2.INTER_AREA)
    grey = _grey(small)
    lo, hi = np.percentile(grey, [0.5, 99.5])
    std = float(grey.std())
    if hi - lo < MIN_SPREAD or std < MIN_STD:
        findings.append(GateFinding("blank", "The image is nearly blank (almost no contrast).", float(hi - lo)))
        return findings  # layout statistics are meaningless on a flat image
    if not colour:
        correlation = layout_correlation(grey)
        if correlation < INVERTED_BELOW:
            findings.append(GateFinding(
                "inverted", "The grey levels look inverted (bones dark, lungs bright), or this is not a frontal "
                            "chest X-ray.", correlation))
    deviation = circle_deviation(grey)
    if deviation < CIRCLE_TOLERANCE:
        findings.append(GateFinding(
            "circular_field", "The image has a round field of view on a uniform background, like a CT or MR "
                              "slice, not a chest radiograph.", deviation))
    return findings


# ---------------------------------------------------------------- out-of-distribution score

OOD_FILE = "ood.npz"
OOD_CONFIG_KEY = "ood"
#: JPEG quality of the canonical copy the OOD features come from: that of the Kermany training copies.
OOD_JPEG_QUALITY = 75


@dataclass
class OodStats:
    """Mahalanobis statistics of a model's penultimate features.

    Attributes:
        means: (K, D) feature means, one per class (K = 1: class-agnostic).
        precision: (D, D) inverse of the shared shrinkage covariance.
        threshold: distance above which an image is flagged (the `quantile` of the validation distances).
        quantile: the validation quantile the threshold was set at.
        shrinkage: the Ledoit-Wolf shrinkage coefficient.
        n_train: training images the means and covariance came from.
        n_val: validation images the threshold came from.
        l2_normalized: features are scaled to unit length before the distance (set at fit time).
        view: the features come from `ood_view` copies of the images (else from the images as given).
        in_scope_flagged: how many in-scope test images this score flagged when measured
            (`{"set": ..., "flagged": ..., "n": ...}`, written by `record_in_scope_flagged`), quoted with each flag
            so that the doctor can weigh it; None when not measured since the last fit.
        sources: names of the data folders the statistics were fitted on (empty when not recorded).
        view_check: the model's learned view check, which scores the same features (`xray.trust.view`); attached
            by `ood_stats_for`, None when the model has none.
    """

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    shrinkage: float
    n_train: int
    n_val: int
    l2_normalized: bool = False
    view: bool = False
    in_scope_flagged: dict[str, Any] | None = None
    sources: tuple[str, ...] = ()
    view_check: viewcheck.ViewCheck | None = None

    @property
    def feature_dim(self) -> int:
        """Feature dimension D."""
        return int(self.means.shape[1])


def mahalanobis(means: np.ndarray, precision: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Distance of each feature row to the nearest mean under the shared precision: (N,)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    best = np.full(len(x), np.inf)
    for mean in np.asarray(means, dtype=np.float64):
        diff = x - mean
        best = np.minimum(best, np.einsum("nd,de,ne->n", diff, precision, diff, optimize=True))
    return np.sqrt(np.maximum(best, 0.0))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def fit_ood(
    features_train: np.ndarray,
    features_val: np.ndarray,
    *,
    labels_train: np.ndarray | None = None,
    quantile: float = 0.99,
    l2_normalize: bool = True,
) -> OodStats:
    """Fit Mahalanobis OOD statistics on training features; set the threshold on validation features.

    Args:
        features_train: (N, D) penultimate features of the training images.
        features_val: (M, D) features of validation images the model was not trained on.
        labels_train: (N,) class indices: class-conditional means with a shared covariance (else one mean).
        quantile: share of validation images that must stay under the threshold.
        l2_normalize: scale feature rows to unit length first (see the module docstring).

    Raises:
        ValueError: shapes disagree or there are too few images.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features_train, dtype=np.float64)
    v = np.asarray(features_val, dtype=np.float64)
    if x.ndim != 2 or v.ndim != 2 or x.shape[1] != v.shape[1]:
        raise ValueError(f"features must be (N, D) arrays with the same D, got {x.shape} and {v.shape}")
    if len(x) < MIN_OOD_ROWS or len(v) < MIN_OOD_ROWS:
        raise ValueError(
            f"need at least {MIN_OOD_ROWS} training and {MIN_OOD_ROWS} validation feature rows, "
            f"got {len(x)} and {len(v)}"
        )
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    if l2_normalize:
        x, v = _unit(x), _unit(v)
    if labels_train is None:
        means = x.mean(axis=0, keepdims=True)
        centred = x - means
    else:
        y = np.asarray(labels_train)
        if y.shape != (len(x),):
            raise ValueError(f"labels_train must have one entry per training row, got {y.shape}")
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(axis=0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    precision = np.linalg.inv(lw.covariance_)
    precision = (precision + precision.T) / 2
    distances = mahalanobis(means, precision, v)
    threshold = float(np.quantile(distances, quantile))
    logger.info("OOD: D=%d, shrinkage %.3f, validation distance median %.1f, %.0f%% quantile %.1f",
                x.shape[1], lw.shrinkage_, float(np.median(distances)), 100 * quantile, threshold)
    return OodStats(means=means, precision=precision, threshold=threshold, quantile=float(quantile),
                    shrinkage=float(lw.shrinkage_), n_train=len(x), n_val=len(v), l2_normalized=l2_normalize)


def ood_score(stats: OodStats, features: np.ndarray) -> np.ndarray:
    """Mahalanobis distances (N,) of feature rows (or one (D,) vector) to the training distribution."""
    x = np.asarray(features)
    if x.shape[-1] != stats.feature_dim:
        raise OodStatsError(
            f"The OOD statistics expect {stats.feature_dim} features but the model gives {x.shape[-1]}; "
            "refit them for this model (scripts/eval_gate.py --fit)."
        )
    if stats.l2_normalized:
        x = _unit(np.asarray(x, dtype=np.float64))
    return mahalanobis(stats.means, stats.precision, x)


def save_ood(stats: OodStats, model_dir: str | Path, *, half: bool = False, sources: Sequence[str] = ()) -> Path:
    """Write `ood.npz` into a model folder and record it under `config.json` key `ood`.

    Args:
        stats: fitted statistics.
        model_dir: the model folder (with config.json).
        half: store the D x D precision in float16, scaled by its largest entry (halves the file; check the
            distances it gives against float32 before shipping it: tiny entries lose precision).
        sources: names of the data folders the statistics were fitted on (default: those of `stats`).

    Returns:
        The path of the written file.
    """
    from xray.inference.models import update_config

    folder = Path(model_dir)
    path = folder / OOD_FILE
    # float16 tops out at 65504, so the precision is stored divided by its largest entry.
    scale = float(np.abs(stats.precision).max()) or 1.0
    precision = (stats.precision / scale).astype(np.float16 if half else np.float32)
    np.savez(path, means=stats.means.astype(np.float32), precision=precision, precision_scale=np.float64(scale))
    update_config(folder, **{OOD_CONFIG_KEY: {
        "file": OOD_FILE,
        "method": "mahalanobis, class-conditional means, shared Ledoit-Wolf covariance" if len(stats.means) > 1
        else "mahalanobis, one mean, Ledoit-Wolf covariance",
        "threshold": stats.threshold,
        "quantile": stats.quantile,
        "shrinkage": stats.shrinkage,
        "feature_dim": stats.feature_dim,
        "n_train": stats.n_train,
        "n_val": stats.n_val,
        "l2_normalized": stats.l2_normalized,
        "view": f"resized to the model input, JPEG quality {OOD_JPEG_QUALITY}" if stats.view else None,
        "sources": list(sources or stats.sources),
    }})
    return path


def load_ood(model_dir: str | Path) -> OodStats | None:
    """Read a model folder's OOD statistics, or None when it has none (`config.json` without key `ood`).

    Raises:
        OodStatsError: the config names a file that is missing, unreadable or inconsistent.
    """
    folder = Path(model_dir)
    config = viewcheck.read_folder_config(folder)
    entry = config.get(OOD_CONFIG_KEY)
    if not entry:
        return None
    path = folder / str(entry.get("file", OOD_FILE))
    try:
        with np.load(path) as data:
            means = data["means"].astype(np.float64)
            scale = float(data["precision_scale"]) if "precision_scale" in data.files else 1.0
            precision = data["precision"].astype(np.float64) * scale
        threshold = float(entry["threshold"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise OodStatsError(
            f"The OOD statistics in {folder} are unreadable ({exc}); refit them (scripts/eval_gate.py --fit)."
        ) from exc
    if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]) or not math.isfinite(threshold):
        raise OodStatsError(f"The OOD statistics in {folder} are inconsistent (means {means.shape}, precision "
                            f"{precision.shape}); refit them (scripts/eval_gate.py --fit).")
    return OodStats(means=means, precision=precision, threshold=threshold,
                    quantile=float(entry.get("quantile", math.nan)), shrinkage=float(entry.get("shrinkage", math.nan)),
                    n_train=int(entry.get("n_train", 0)), n_val=int(entry.get("n_val", 0)),
                    l2_normalized=bool(entry.get("l2_normalized", False)), view=bool(entry.get("view")),
                    in_scope_flagged=_flag_count(entry.get("in_scope_flagged")),
                    sources=tuple(str(s) for s in entry.get("sources") or ()))


def _flag_count(value: Any) -> dict[str, Any] | None:
    """A well-formed `in_scope_flagged` entry, or None (absent or malformed: then it is simply not quoted)."""
    try:
        flagged, n, name = int(value["flagged"]), int(value["n"]), str(value["set"])
    except (TypeError, KeyError, ValueError):
        return None
    return {"set": name, "flagged": flagged, "n": n} if 0 <= flagged <= n and n > 0 else None


def record_in_scope_flagged(model_dir: str | Path, *, set_name: str, flagged: int, n: int) -> None:
    """Store, next to the OOD statistics, how many in-scope test images their score flagged.

    Written by `scripts/eval_gate.py --save`. Refitting the statistics (`save_ood`) drops it, so a stale figure is
    never quoted.

    Raises:
        OodStatsError: the model folder has no OOD statistics.
    """
    from xray.inference.models import read_config, update_config

    entry = read_config(Path(model_dir)).get(OOD_CONFIG_KEY)
    if not entry:
        raise OodStatsError(f"{model_dir} has no OOD statistics to attach a measurement to; fit them first.")
    update_config(Path(model_dir), **{OOD_CONFIG_KEY: {**entry, "in_scope_flagged": {"set": set_name,
                                                                                      "flagged": int(flagged),
                                                                                      "n": int(n)}}})


_CACHE: dict[tuple[str, float, str, float, float], OodStats | None] = {}
_CACHE_LOCK = threading.Lock()


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.is_file() else -1.0


def ood_stats_for(loaded: Any) -> OodStats | None:
    """The OOD statistics of a loaded model with its view check attached, read once per folder.

    Read again when ood.npz, view.npz or config.json change.

    Raises:
        OodStatsError: either file is unreadable, or the view check was fitted on other features than the OOD
            statistics (then both must be refitted).
    """
    path = Path(loaded.path)
    entry = (loaded.config or {}).get(OOD_CONFIG_KEY) or {}
    key = (str(path), _mtime(path / str(entry.get("file", OOD_FILE))), json.dumps(entry, sort_keys=True),
           _mtime(path / viewcheck.VIEW_FILE), _mtime(path / "config.json"))
    with _CACHE_LOCK:
        if key not in _CACHE:
            stats = load_ood(path)
            if stats is not None:
                stats.view_check = _matching_view_check(path, stats)
            _CACHE[key] = stats
        return _CACHE[key]


def _matching_view_check(path: Path, stats: OodStats) -> viewcheck.ViewCheck | None:
    check = viewcheck.load_view_check(path)
    if check is not None and (check.view != stats.view or check.feature_dim != stats.feature_dim):
        raise OodStatsError(
            f"The view check in {path} was fitted on other features than its OOD statistics (view copy "
            f"{check.view} / {stats.view}, D {check.feature_dim} / {stats.feature_dim}); refit both "
            "(scripts/eval_gate.py --fit)."
        )
    return check


def view_check_for(loaded: Any) -> viewcheck.ViewCheck | None:
    """The loaded model's view check (None without one, or without OOD statistics: it scores their features)."""
    stats = ood_stats_for(loaded)
    return stats.view_check if stats is not None else None


def penultimate_features(loaded: Any, images: Sequence[Any]) -> np.ndarray:
    """(N, D) penultimate features of images through the model's own evaluation transform."""
    from xray.inference.predict import extract_features

    return extract_features(loaded, list(images))


def ood_view(image: Any, size: tuple[int, int]) -> np.ndarray:
    """The canonical copy the OOD features are taken from (HxWx3 uint8).

    The whole image resized to `size` (height, width) and passed through JPEG at quality `OOD_JPEG_QUALITY`,
    so that resolution and compression do not count as novelty (see the module docstring).
    """
    from PIL import Image

    from xray.imaging.transforms import jpeg_round_trip

    pixels = np.asarray(getattr(image, "pixels", image))
    picture = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
    picture = picture.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(jpeg_round_trip(picture, quality=OOD_JPEG_QUALITY).convert("RGB"))


def feature_view(loaded: Any) -> bool:
    """Whether a fit for this model takes features from `ood_view` copies (else from the images as given).

    False for a model whose own transform already makes that copy (config.json `input_jpeg_quality`): its gate
    then scores the prediction's own features.
    """
    from xray.inference.models import INPUT_JPEG_KEY

    return not (loaded.config or {}).get(INPUT_JPEG_KEY)


def check_features(loaded: Any, images: Sequence[Any], view: bool) -> np.ndarray:
    """(N, D) the features the gate's OOD score and view check read: of `ood_view` copies when `view`."""
    if not view:
        return penultimate_features(loaded, images)
    size = tuple(loaded.data_config["input_size"][1:])
    return penultimate_features(loaded, [ood_view(image, size) for image in images])


def ood_features(loaded: Any, images: Sequence[Any], stats: OodStats | None = None) -> np.ndarray:
    """(N, D) features for the OOD score: penultimate features of each image's `ood_view`.

    With `stats` fitted on the images as given (`stats.view` False), the images' own features instead.
    """
    return check_features(loaded, images, view=stats is None or stats.view)


def fit_model_ood(
    loaded: Any,
    train_images: Sequence[Any],
    val_images: Sequence[Any],
    out_dir: str | Path | None = None,
    *,
    train_targets: np.ndarray | None = None,
    quantile: float = 0.99,
    half: bool = False,
) -> OodStats:
    """Extract features of the training and validation images, fit the OOD statistics, save them to `out_dir`.

    This is the after-training step (`train.py`): `train_images` are the images the model was trained on,
    `val_images` the validation split carved from the training data (never the test set). Features come from
    each image's `ood_view`, as at inference, unless the model's own transform already makes such a copy
    (config.json `input_jpeg_quality`): then the prediction's own features are used, and the app scores the
    features of the prediction's forward pass instead of running a second one. `half` stores the precision in
    float16 (see `save_ood`; on the EfficientNet-Lite0 statistics it changed distances by at most 0.02% and
    halved ood.npz to 3.3 MB).
    """
    view = feature_view(loaded)
    features_train = check_features(loaded, train_images, view)
    features_val = check_features(loaded, val_images, view)
    stats = fit_ood(features_train, features_val, labels_train=train_targets, quantile=quantile)
    stats.view = view
    if out_dir is not None:
        save_ood(stats, out_dir, half=half)
    return stats


def fit_model_view_check(
    loaded: Any,
    images: Sequence[Any],
    labels: Sequence[str],
    groups: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    originals: np.ndarray | None = None,
    c_grid: Sequence[float] = viewcheck.C_GRID,
    **info: Any,
) -> viewcheck.ViewCheck:
    """Extract the gate's features of labelled images, fit the view check (`xray.trust.view`), save it to `out_dir`.

    Args:
        loaded: the model whose features the check reads.
        images: frontal chest X-rays, lateral views and other images (never a test split).
        labels: `frontal`, `lateral` or `other` per image.
        groups: patient (or source image) per image; augmented copies share their image's group.
        out_dir: the model folder to write `view.npz` into (None: do not save).
        originals: False for augmented copies (see `xray.trust.view.fit_view_check`).
        c_grid: C values for the grouped cross-validation.
        **info: more facts for the config entry.
    """
    view = feature_view(loaded)
    features = check_features(loaded, images, view)
    check = viewcheck.fit_view_check(features, labels, groups, originals=originals, c_grid=c_grid)
    check.view = view
    if out_dir is not None:
        viewcheck.save_view_check(check, out_dir, **info)
    return check


# ---------------------------------------------------------------- both


def assess(loaded: Any, image: Any, features: np.ndarray | None = None) -> GateResult:
    """Run every check on one image: image statistics, DICOM header and (when the model has them) view check and OOD.

    Args:
        loaded: the `LoadedModel` that will classify the image.
        image: an `XrayImage` (or HxWx3 uint8 array).
        features: the image's penultimate features from the prediction's forward pass. They are used only by
            statistics fitted on images as given (models with an input JPEG step); statistics fitted on
            `ood_view` copies need the copy's own features, and one forward pass computes them here.

    Returns:
        `GateResult` with `in_scope` and the doctor-readable `reasons`.
    """
    stats = ood_stats_for(loaded)
    if stats is not None and (features is None or stats.view):
        features = ood_features(loaded, [image], stats)[0]
    return verdict(image, stats, features if stats is not None else None)


def verdict(image: Any, stats: OodStats | None, features: np.ndarray | None) -> GateResult:
    """Combine the image checks with the view check and OOD score of already computed features (batch evaluation).

    Args:
        image: an `XrayImage` (or HxWx3 uint8 array).
        stats: the model's OOD statistics (with `view_check` attached by `ood_stats_for`), or None for image
            checks only.
        features: the image's (D,) OOD features (`ood_features(loaded, [image], stats)[0]`); ignored without stats.
    """
    findings = check_image(image)
    distance = threshold = probabilities = None
    if stats is not None and features is not None and stats.view_check is not None:
        check = stats.view_check
        probs = check.probabilities(np.asarray(features).reshape(1, -1))[0]
        probabilities = {name: float(p) for name, p in zip(check.classes, probs, strict=True)}
        found = viewcheck.finding(check, probs)
        if found is not None:
            findings.append(GateFinding(*found))
    if stats is not None and features is not None:
        distance = float(ood_score(stats, np.asarray(features).reshape(1, -1))[0])
        threshold = stats.threshold
        if distance > threshold:
            reason = (f"The model finds this image unlike its training X-rays (feature distance {distance:.0f}; "
                      f"{stats.quantile:.0%} of validation X-rays are under {threshold:.0f}).")
            measured = stats.in_scope_flagged
            if measured:
                # how often this check fires on X-rays that are in scope, so that a doctor can weigh it
                reason += (f" For scale, it also flags {measured['flagged']} of the {measured['n']} {measured['set']} "
                           f"({measured['flagged'] / measured['n']:.1%}), all of them in scope.")
            findings.append(GateFinding("out_of_distribution", reason, distance))
    return GateResult(in_scope=not findings, reasons=[f.reason for f in findings], findings=findings,
                      ood_distance=distance, ood_threshold=threshold, view_probabilities=probabilities)
