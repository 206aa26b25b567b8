"""Learned view check: a frontal chest X-ray, a lateral view, or not a chest X-ray at all?

The image-statistic checks (`xray.trust.gate.check_image`) and the OOD score let most lateral chest views through
(they are grey, X-ray-like and not far enough from the training features). This check is a small classifier on
the model's OWN penultimate features, the very features the OOD score uses (`xray.trust.gate.ood_features`:
those of the gate's canonical `ood_view` copy, or the prediction's own for a model with an input JPEG step;
`ViewCheck.view` records which), so it costs a 3 x D matrix product and no forward pass.

Method: multinomial logistic regression (scikit-learn, lbfgs) with classes `frontal`, `lateral`, `other`, on
L2-normalised, then standardised features (the scaler is folded into the stored weights), class-balanced
(`class_weight="balanced"`: each class weighs as much as the others, whatever its count). Its inverse
regularisation `C` is chosen from `C_GRID` by grouped cross-validation on the fit data only: the lowest
class-balanced out-of-fold log-loss on the real (not augmented) images, folds grouped by patient so that no
patient or augmented copy is on both sides.

Decision rule (fixed before any held-out image was scored): the most probable class (argmax). `lateral` gives
the finding `lateral_view`, `other` gives `not_chest_xray`; `frontal` gives nothing. Under class-balanced
training this is the rule that treats the three kinds of error alike; no threshold is tuned on held-out or test
images.

Fit data (`scripts/eval_gate.py --fit` / `--fit-view`): frontal = the in-scope training and validation images of
every source (kermany-224/train, covid-chestxray and adult-cxr/train; never a test split), lateral = the lateral
views of about two thirds of the patients in `shared/data/lateral` (`split_lateral`, by patient from the file
names: `lateral_patient_id`; the rest are kept aside to measure the check), other = the out-of-scope images of
`scripts/eval_gate.py` (photographs and their grey copies, other medical images, CT/MR slices) and inverted
copies of in-scope training images. With only about 19 lateral images, each gets `augment` copies (mirror,
small rotation and zoom, exposure, JPEG); a sample of frontal images gets as many copies, so that the
augmentation itself says nothing about the class. The stored file is `view.npz` next to `ood.npz`, registered
under `config.json` key `view_check`; `xray.trust.gate.ood_stats_for` loads it with the OOD statistics.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xray.errors import OodStatsError

logger = logging.getLogger(__name__)

VIEW_FILE = "view.npz"
VIEW_CONFIG_KEY = "view_check"
FRONTAL, LATERAL, OTHER = "frontal", "lateral", "other"
CLASSES = (FRONTAL, LATERAL, OTHER)
#: Finding code per flagged class (`frontal` raises none).
FINDING_CODES = {LATERAL: "lateral_view", OTHER: "not_chest_xray"}
#: Inverse regularisation strengths tried by the grouped cross-validation (`fit_view_check`).
C_GRID = (0.01, 0.1, 1.0)
#: Share of the lateral patients kept aside to measure the check (`split_lateral`).
HELD_OUT_FRACTION = 1 / 3

_DECISION_RULE = "argmax of the class probabilities"
_METHOD = ("multinomial logistic regression on L2-normalised, standardised penultimate features, class-balanced; "
           "C by grouped cross-validation (class-balanced log-loss)")


@dataclass
class ViewCheck:
    """A fitted view classifier on a model's penultimate features.

    Attributes:
        weights: (K, D) weights on the L2-normalised features, with the standardisation folded in.
        bias: (K,) intercepts, likewise.
        classes: class names in row order (`frontal`, `lateral`, `other`).
        l2_normalized: the features are scaled to unit length first.
        view: the features come from `ood_view` copies (as the OOD statistics' `view`), else the images as given.
        c: the inverse regularisation strength chosen.
        info: what it was fitted on and its cross-validation figures (written into config.json).
    """

    weights: np.ndarray
    bias: np.ndarray
    classes: tuple[str, ...] = CLASSES
    l2_normalized: bool = True
    view: bool = True
    c: float = math.nan
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        """Feature dimension D."""
        return int(self.weights.shape[1])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) of feature rows (or one (D,) vector)."""
        x = np.asarray(features, dtype=np.float64)
        x = x[None, :] if x.ndim == 1 else x
        if x.shape[-1] != self.feature_dim:
            raise OodStatsError(
                f"The view check expects {self.feature_dim} features but the model gives {x.shape[-1]}; refit it "
                "for this model (scripts/eval_gate.py --fit-view)."
            )
        if self.l2_normalized:
            x = _unit(x)
        logits = x @ self.weights.T.astype(np.float64) + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def decide(self, features: np.ndarray) -> list[str]:
        """The predicted class of each feature row (the decision rule: argmax)."""
        return [self.classes[i] for i in np.argmax(self.probabilities(features), axis=1)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def finding(check: ViewCheck, probabilities: np.ndarray) -> tuple[str, str, float] | None:
    """(code, doctor-readable reason, probability) for one image's class probabilities, or None when frontal."""
    probs = np.asarray(probabilities, dtype=np.float64).ravel()
    label = check.classes[int(np.argmax(probs))]
    p = float(probs.max())
    if label == LATERAL:
        return ("lateral_view", f"This looks like a lateral view (view check: {p:.0%} lateral); the model reads "
                                "frontal chest X-rays only.", p)
    if label == OTHER:
        return ("not_chest_xray", f"This does not look like a chest X-ray (view check: {p:.0%} not a chest X-ray); "
                                  "the model reads frontal chest X-rays only.", p)
    return None


# ---------------------------------------------------------------- fitting


def _balanced_log_loss(y: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    losses = [-np.log(np.clip(probs[y == k, k], 1e-12, 1.0)).mean() for k in range(n_classes) if (y == k).any()]
    return float(np.mean(losses))


def _fit_lr(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Standardise, fit the class-balanced multinomial regression; weights and bias with the scaler folded in."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, tol=1e-6)
    model.fit(scaler.transform(x), y)
    coef = np.zeros((len(CLASSES), x.shape[1]))
    intercept = np.full(len(CLASSES), -1e9)  # a class absent from the fit data is never predicted
    coef[model.classes_] = model.coef_ if len(model.classes_) > 2 else np.vstack([-model.coef_, model.coef_]) / 2
    intercept[model.classes_] = (model.intercept_ if len(model.classes_) > 2
                                 else np.concatenate([-model.intercept_, model.intercept_]) / 2)
    weights = coef / scaler.scale_
    bias = intercept - weights @ scaler.mean_
    return weights, bias


def _logits(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    z = x @ weights.T + bias
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_view_check(
    features: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    originals: np.ndarray | None = None,
    c_grid: Sequence[float] = C_GRID,
    folds: int = 5,
    seed: int = 0,
    l2_normalize: bool = True,
) -> ViewCheck:
    """Fit the view classifier, choosing C by grouped cross-validation on these rows alone.

    Args:
        features: (N, D) the model's penultimate features, as the gate computes them.
        labels: (N,) `frontal`, `lateral` or `other`.
        groups: (N,) patient (or source image) of each row: augmented copies share their image's group, and no
            group is split across cross-validation folds.
        originals: (N,) True for real images, False for augmented copies (cross-validation scores real images
            only); default all real.
        c_grid: the C values tried; with one value there is no cross-validation.
        folds: cross-validation folds (fewer when a class has fewer groups).
        seed: fold assignment seed.
        l2_normalize: scale feature rows to unit length first (as the OOD score does).

    Raises:
        ValueError: shapes disagree, a label is unknown, or a class has no rows.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    x = np.asarray(features, dtype=np.float64)
    names = np.asarray(labels)
    g = np.asarray(groups)
    if x.ndim != 2 or len(names) != len(x) or len(g) != len(x):
        raise ValueError(f"features must be (N, D) with N labels and groups, got {x.shape}, {len(names)}, {len(g)}")
    unknown = set(names.tolist()) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown view labels {sorted(unknown)}; use {CLASSES}")
    y = np.array([CLASSES.index(n) for n in names])
    missing = [c for k, c in enumerate(CLASSES) if not (y == k).any()]
    if missing:
        raise ValueError(f"no rows of class {missing}")
    real = np.ones(len(x), bool) if originals is None else np.asarray(originals, bool)
    if l2_normalize:
        x = _unit(x)
    cv: dict[str, Any] = {}
    grid = [float(c) for c in c_grid]
    best_c = grid[0]
    n_groups = min(len(set(g[y == k])) for k in range(len(CLASSES)))
    n_splits = min(folds, n_groups)
    if len(grid) > 1 and n_splits >= 2:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        fold_of = np.empty(len(x), int)
        for i, (_, held) in enumerate(splitter.split(x, y, g)):
            fold_of[held] = i
        losses, oof_by_c = {}, {}
        for c in grid:
            oof = np.zeros((len(x), len(CLASSES)))
            for i in range(n_splits):
                train, held = fold_of != i, fold_of == i
                w, b = _fit_lr(x[train], y[train], c)
                oof[held] = _logits(x[held], w, b)
            losses[c] = _balanced_log_loss(y[real], oof[real], len(CLASSES))
            oof_by_c[c] = oof
            logger.info("view check: C=%g, out-of-fold balanced log-loss %.4f", c, losses[c])
        best_c = min(grid, key=lambda c: (losses[c], c))
        predicted = oof_by_c[best_c].argmax(axis=1)
        cv = {
            "folds": n_splits,
            "log_loss": {str(c): round(v, 5) for c, v in losses.items()},
            "out_of_fold_recall": {
                name: {"correct": int((predicted[real & (y == k)] == k).sum()), "n": int((real & (y == k)).sum())}
                for k, name in enumerate(CLASSES)
            },
        }
    weights, bias = _fit_lr(x, y, best_c)
    counts = {name: {"images": int((real & (y == k)).sum()), "rows": int((y == k).sum()),
                     "groups": len(set(g[y == k]))} for k, name in enumerate(CLASSES)}
    return ViewCheck(weights=weights, bias=bias, classes=CLASSES, l2_normalized=l2_normalize, c=best_c,
                     info={"n": counts, "cv": cv})


# ---------------------------------------------------------------- storage


def save_view_check(check: ViewCheck, model_dir: str | Path, **info: Any) -> Path:
    """Write `view.npz` into a model folder and register it under `config.json` key `view_check`.

    Args:
        check: the fitted check.
        model_dir: the model folder (with config.json).
        **info: more facts for the config entry (data, held-out patients, augmentation).

    Returns:
        The path of the written file.
    """
    from xray.inference.models import update_config

    folder = Path(model_dir)
    path = folder / VIEW_FILE
    np.savez(path, weights=check.weights.astype(np.float32), bias=check.bias.astype(np.float64))
    update_config(folder, **{VIEW_CONFIG_KEY: {
        "file": VIEW_FILE,
        "method": _METHOD,
        "rule": _DECISION_RULE,
        "classes": list(check.classes),
        "findings": dict(FINDING_CODES),
        "C": check.c,
        "feature_dim": check.feature_dim,
        "l2_normalized": check.l2_normalized,
        "view": "resized to the model input, JPEG quality 75" if check.view else None,
        **check.info,
        **info,
    }})
    return path


def read_folder_config(folder: Path) -> dict[str, Any]:
    """A model folder's config.json, for the gate's statistics and view check.

    Raises:
        OodStatsError: it is missing or not JSON (the gate then falls back to image checks and says why).
    """
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OodStatsError(f"Cannot read {folder / 'config.json'}: {exc}") from exc


def load_view_check(model_dir: str | Path, config: dict[str, Any] | None = None) -> ViewCheck | None:
    """Read a model folder's view check, or None when it has none (`config.json` without key `view_check`).

    Args:
        model_dir: the model folder.
        config: its config.json contents when already read (else read here).

    Raises:
        OodStatsError: the config names a file that is missing, unreadable or inconsistent.
    """
    folder = Path(model_dir)
    config = read_folder_config(folder) if config is None else config
    entry = config.get(VIEW_CONFIG_KEY)
    if not entry:
        return None
    path = folder / str(entry.get("file", VIEW_FILE))
    try:
        with np.load(path) as data:
            weights = data["weights"].astype(np.float64)
            bias = data["bias"].astype(np.float64)
        classes = tuple(str(c) for c in entry.get("classes", CLASSES))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise OodStatsError(
            f"The view check in {folder} is unreadable ({exc}); refit it (scripts/eval_gate.py --fit-view)."
        ) from exc
    if weights.ndim != 2 or bias.shape != (len(weights),) or len(classes) != len(weights) or FRONTAL not in classes:
        raise OodStatsError(f"The view check in {folder} is inconsistent (weights {weights.shape}, bias {bias.shape}, "
                            f"classes {classes}); refit it (scripts/eval_gate.py --fit-view).")
    info = {k: v for k, v in entry.items() if k in ("n", "cv", "lateral", "data")}
    return ViewCheck(weights=weights, bias=bias, classes=classes, l2_normalized=bool(entry.get("l2_normalized", True)),
                     view=bool(entry.get("view")), c=float(entry.get("C", math.nan)), info=info)


# ---------------------------------------------------------------- fit data


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SIRM = re.compile(r"^(covid-19-caso-\d+)(?:-|$)")
_EURORAD_CASE = re.compile(r"^(\d{4,5})_\d+_\d+$")
_EURORAD_FIGURE = re.compile(r"^\d{6}(?:-|$)")
_VIEW_TOKENS = {"l", "lat", "lateral"}


def lateral_patient_id(name: str | Path) -> str:
    """The patient group of a lateral image of the COVID-19 image data collection, from its file name alone.

    The collection's own metadata is not in `shared/data/lateral`, so files are grouped by what their names
    say, and where a name says nothing, every such file goes into ONE group: then one patient's images can
    never end up on both sides of a fit / held-out split (a merged group only costs granularity).

    - SIRM cases `covid-19-caso-95-2-16` -> `covid-19-caso-95` (case 95; image 2, figure 16);
    - Radiopaedia-style case slugs with a view suffix, e.g. `covid-19-pneumonia-22-day1-l`,
      `covid-19-pneumonia-20-l-on-admission`, `right-upper-lobe-pneumonia-9-L` -> the slug before the `l`
      token, without a trailing `dayN` (`covid-19-pneumonia-22`);
    - Eurorad case files `16663_1_2` -> `eurorad-16663`;
    - names that identify no patient: UUIDs -> `unknown:uuid`, Radiopaedia `..._jumbo` hashes ->
      `unknown:jumbo`, Eurorad figure numbers `000009-5` (reused across cases) -> `unknown:eurorad-figure`.

    Args:
        name: file name or path.

    Returns:
        The group id.
    """
    stem = Path(name).stem.lower()
    match = _SIRM.match(stem)
    if match:
        return match.group(1)
    if _UUID.match(stem):
        return "unknown:uuid"
    if "_jumbo" in stem:
        return "unknown:jumbo"
    match = _EURORAD_CASE.match(stem)
    if match:
        return f"eurorad-{match.group(1)}"
    if _EURORAD_FIGURE.match(stem):
        return "unknown:eurorad-figure"
    tokens = stem.replace("_", "-").split("-")
    cut = next((i for i, t in enumerate(tokens) if t in _VIEW_TOKENS and i > 0), len(tokens))
    tokens = tokens[:cut]
    while len(tokens) > 1 and re.fullmatch(r"day\d+", tokens[-1]):
        tokens.pop()
    return "-".join(tokens)


def split_lateral(paths: Sequence[Path], *, fraction: float = HELD_OUT_FRACTION,
                  seed: int = 0) -> tuple[list[Path], list[Path]]:
    """(fit, held_out) lateral files: `round(fraction * groups)` patient groups held out, fixed by `seed`.

    Groups come from `lateral_patient_id`; they are sorted before the seeded permutation, so the split depends
    only on the file names and the seed.
    """
    ordered = sorted(Path(p) for p in paths)
    groups = sorted({lateral_patient_id(p) for p in ordered})
    if len(groups) < 2:
        return ordered, []
    n_held = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    order = np.random.default_rng(seed).permutation(len(groups))
    held = {groups[i] for i in order[:n_held]}
    return ([p for p in ordered if lateral_patient_id(p) not in held],
            [p for p in ordered if lateral_patient_id(p) in held])


def augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random copy of an image for the fit (HxWx3 uint8 in, same size out).

    Mirror (half the copies), rotation +-8 degrees, zoom 1.0-1.15 with shift +-5% (edges reflected, so no
    black corners that only augmented images would have), exposure x0.85-1.15 and gamma 0.8-1.25, then JPEG
    at quality 50-95.
    """
    import cv2

    img = np.asarray(getattr(pixels, "pixels", pixels))
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-8, 8), rng.uniform(1.0, 1.15))
    matrix[:, 2] += rng.uniform(-0.05, 0.05, 2) * (w, h)
    out = cv2.warpAffine(np.ascontiguousarray(img).astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    out = 255.0 * np.clip(out * rng.uniform(0.85, 1.15) / 255.0, 0, 1) ** rng.uniform(0.8, 1.25)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 96))])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)) if ok else out
