"""Compare variants of the input gate's OOD score on non-test data, then measure the chosen one on the test set.

The protocol (candidates, perturbation suite, selection data and rule) was written down before any test figure
and is printed by `--protocol`; `docs/ood-study.md` keeps it with the results. Steps:

    python scripts/ood_study.py --model pneumonia                 # features (cached) + selection table, no test
    python scripts/ood_study.py --model pneumonia --test A        # then: candidate A on the official test set

Features are cached in `--cache` (default runs/ood-study/<model version>), so the second step reuses them.
Candidates (all: the model's own features of `gate.ood_view` copies, L2-normalised, class-conditional means,
shared Ledoit-Wolf covariance, as `xray.trust.gate.fit_ood`):
    A  penultimate features, fit on training images, threshold: 99% of clean validation distances (shipped before)
    B  A's fit, threshold: 99% of validation distances over clean + 2 perturbed copies per image (seed 1)
    C  fit on training images clean + 1 perturbed copy each (seed 2), threshold as B
    D  average-pooled output of the last block stage (before the head convolution), fit as A, threshold as B
    F  fit on validation images (clean + seed-1 copies; images the model never trained on), threshold: 99% of
       5-fold out-of-fold distances; distances of validation-derived sets are out-of-fold as well
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import eval_gate  # noqa: E402

from xray.trust import gate  # noqa: E402

QUANTILE = 0.99
FOLDS = 5
CANDIDATES = ("A", "B", "C", "D", "F")


def perturb(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw of the acquisition-perturbation suite (exposure, gamma, blur, noise, position, JPEG) on uint8 pixels."""
    img = pixels.astype(np.float32)
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    img = 255.0 * np.clip(img / 255.0, 0, 1) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.5:
        img = img + rng.normal(0, rng.uniform(1, 5), img.shape).astype(np.float32)
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-7, 7), rng.uniform(1.0, 1.12))
    matrix[:, 2] += rng.uniform(-0.04, 0.04, 2) * (w, h)
    img = cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 96))])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def perturbed(images: Sequence[np.ndarray], seed: int) -> list[np.ndarray]:
    """One perturbed copy of each image, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return [perturb(np.asarray(getattr(i, "pixels", i)), rng) for i in images]


def two_level_features(loaded: Any, images: Sequence[Any], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate, last block stage pooled) features of each image's `gate.ood_view` copy."""
    import torch

    from xray.inference.predict import batches

    model = loaded.model.eval()
    stage = getattr(model, "blocks", None)
    if stage is None:
        raise SystemExit(f"{loaded.architecture} has no `blocks`; the stage-feature candidate needs one")
    captured: list[torch.Tensor] = []
    handle = stage.register_forward_hook(lambda _m, _i, out: captured.append(out.mean(dim=(2, 3))))
    size = tuple(loaded.data_config["input_size"][1:])
    views = [gate.ood_view(i, size) for i in images]
    pen = []
    try:
        with torch.inference_mode():
            for batch in batches(loaded, views, batch_size):
                features = model.forward_head(model.forward_features(batch), pre_logits=True)
                pen.append(features.flatten(1).float().numpy())
    finally:
        handle.remove()
    return np.concatenate(pen), torch.cat(captured).float().numpy()


class FeatureCache:
    """Features per named image set, computed once and kept as .npz files."""

    def __init__(self, loaded: Any, folder: Path) -> None:
        self.loaded, self.folder = loaded, folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, images: Callable[[], Sequence[Any]]) -> dict[str, np.ndarray]:
        """The set's features (`pen`, `stage`) and image-check flags (`checks`), from the cache or computed."""
        path = self.folder / f"{name}.npz"
        if path.is_file():
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        started = time.perf_counter()
        items = list(images())
        pen, stage = two_level_features(self.loaded, items)
        checks = np.array([bool(gate.check_image(i)) for i in items])
        np.savez(path, pen=pen, stage=stage, checks=checks)
        print(f"  {name}: {len(items)} images, {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return {"pen": pen, "stage": stage, "checks": checks}


def _fit(train: np.ndarray, labels: np.ndarray, val: np.ndarray) -> gate.OodStats:
    return gate.fit_ood(train, val, labels_train=labels, quantile=QUANTILE)


def _threshold(stats: gate.OodStats, *val_sets: np.ndarray) -> float:
    return float(np.quantile(np.concatenate([gate.ood_score(stats, v) for v in val_sets]), QUANTILE))


def _splits(loaded: Any, data: Path) -> Any:
    from xray.training.data import load_samples, make_splits

    sources, training = eval_gate._training_config(loaded)
    return make_splits([load_samples(s) for s in sources], label_names=loaded.label_names,
                       val_fraction=float(training.get("val_fraction", 0.15)),
                       test_fraction=float(training.get("test_fraction", 0.2)), seed=int(training.get("seed", 0)))


def collect(loaded: Any, data: Path, cache: FeatureCache, with_test: bool) -> dict[str, dict[str, np.ndarray]]:
    """Every set's cached features; the test set only when asked."""
    from xray.training.data import load_pixels

    splits = _splits(loaded, data)
    size = tuple(loaded.data_config["input_size"][1:])
    interpolation = str(loaded.data_config.get("interpolation", "bilinear"))
    pixels: dict[str, list[np.ndarray]] = {}

    def split_pixels(split: str) -> list[np.ndarray]:
        if split not in pixels:
            pixels[split] = load_pixels(getattr(splits, split), size, interpolation)
        return pixels[split]

    photos = eval_gate.photo_files()
    sets = {
        "train": lambda: split_pixels("train"),
        "train_p2": lambda: perturbed(split_pixels("train"), 2),
        "val": lambda: split_pixels("val"),
        "val_p1a": lambda: perturbed(split_pixels("val"), 1),
        "val_p1b": lambda: perturbed(split_pixels("val"), 11),
        "val_p3": lambda: perturbed(split_pixels("val"), 3),
        "val_inverted": lambda: [255 - p for p in split_pixels("val")],
        "fullres": lambda: eval_gate._load_set(sorted((data / "kermany-val-fullres").rglob("*.jpeg"))),
        "photos": lambda: eval_gate._load_set(photos),
        "grey_photos": lambda: eval_gate._load_set(photos, eval_gate._grey_copy),
        "other_medical": lambda: eval_gate._load_set(eval_gate.photo_files(eval_gate.OTHER_MEDICAL)),
        "ct_mr_pixels": lambda: [i for _, i in eval_gate.ct_mr_images(False)],
    }
    if with_test:
        sets["test"] = lambda: eval_gate._load_set(sorted((data / "kermany-224" / "test").rglob("*.jpeg")))
    out = {name: cache.get(name, fn) for name, fn in sets.items()}
    out["train"]["labels"] = splits.targets("train")
    out["val"]["labels"] = splits.targets("val")
    return out


def scores(
    feats: dict[str, dict[str, np.ndarray]], candidate: str, seed: int = 0
) -> tuple[dict[str, np.ndarray], float]:
    """OOD distances of every set under one candidate, and its threshold."""
    level = "stage" if candidate == "D" else "pen"
    train, val = feats["train"], feats["val"]
    y_train, y_val = train["labels"], val["labels"]
    val_sets = [val[level], feats["val_p1a"][level], feats["val_p1b"][level]]
    names = [n for n in feats if n not in ("train", "train_p2")]
    if candidate in ("A", "B", "D"):
        stats = _fit(train[level], y_train, val[level])
        threshold = stats.threshold if candidate == "A" else _threshold(stats, *val_sets)
        return {n: gate.ood_score(stats, feats[n][level]) for n in names}, threshold
    if candidate == "C":
        stats = _fit(np.concatenate([train[level], feats["train_p2"][level]]), np.concatenate([y_train, y_train]),
                     val[level])
        return {n: gate.ood_score(stats, feats[n][level]) for n in names}, _threshold(stats, *val_sets)
    if candidate == "F":
        # cross-fitting: each validation image's distances (clean, perturbed, inverted) come from a fit without it
        rng = np.random.default_rng(seed)
        fold = rng.permutation(len(y_val)) % FOLDS
        val_names = ["val", "val_p1a", "val_p1b", "val_p3", "val_inverted"]
        out = {n: np.zeros(len(y_val)) for n in val_names}
        for k in range(FOLDS):
            fit_rows = fold != k
            x = np.concatenate([s[fit_rows] for s in val_sets[:2]])
            stats = _fit(x, np.concatenate([y_val[fit_rows]] * 2), val[level][~fit_rows])
            for n in val_names:
                out[n][~fit_rows] = gate.ood_score(stats, feats[n][level][~fit_rows])
        threshold = float(np.quantile(np.concatenate([out["val"], out["val_p1a"], out["val_p1b"]]), QUANTILE))
        full = _fit(np.concatenate(val_sets[:2]), np.concatenate([y_val] * 2), val[level])
        out.update({n: gate.ood_score(full, feats[n][level]) for n in names if n not in val_names})
        return out, threshold
    raise ValueError(candidate)


SELECTION_IN = ("val_p3", "fullres")
SELECTION_OUT = ("photos", "grey_photos", "other_medical", "ct_mr_pixels", "val_inverted")


def table(feats: dict[str, dict[str, np.ndarray]], candidates: Sequence[str], sets: Sequence[str]) -> dict[str, Any]:
    """Share flagged (image checks or OOD) per candidate and set."""
    result = {}
    for c in candidates:
        dist, threshold = scores(feats, c)
        row = {"threshold": threshold}
        for s in sets:
            flagged = feats[s]["checks"] | (dist[s] > threshold)
            row[s] = {"n": int(len(flagged)), "flagged": int(flagged.sum()), "share": float(flagged.mean()),
                      "ood_only": int((dist[s] > threshold).sum())}
        result[c] = row
    return result


def choose(result: dict[str, Any]) -> str:
    """The declared rule.

    At least 95% flagged on every out-of-scope set, then the fewest perturbed-validation flags; within 0.5 points,
    fewer full-resolution flags, then the simpler candidate (`CANDIDATES` order).
    """
    eligible = [c for c in CANDIDATES if c in result and all(result[c][s]["share"] >= 0.95 for s in SELECTION_OUT)]
    if not eligible:
        return "none"
    best = min(result[c]["val_p3"]["share"] for c in eligible)
    close = [c for c in eligible if result[c]["val_p3"]["share"] <= best + 0.005]
    fewest = min(result[c]["fullres"]["flagged"] for c in close)
    return next(c for c in close if result[c]["fullres"]["flagged"] == fewest)


def print_result(result: dict[str, Any], sets: Sequence[str]) -> None:
    """Markdown table: one row per candidate, flagged / n per set."""
    print("| candidate | threshold | " + " | ".join(sets) + " |")
    print("|---|---:|" + "---:|" * len(sets))
    for c, row in result.items():
        cells = [f"{row[s]['flagged']}/{row[s]['n']} = {row[s]['share']:.1%}" for s in sets]
        print(f"| {c} | {row['threshold']:.2f} | " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pneumonia")
    p.add_argument("--data", type=Path, default=eval_gate.DEFAULT_DATA)
    p.add_argument("--cache", type=Path, default=None, help="feature cache folder (default runs/ood-study/VERSION)")
    p.add_argument("--test", metavar="CANDIDATE", help="measure this candidate (then the others) on the test set")
    p.add_argument("--json", type=Path, help="write the tables as JSON")
    args = p.parse_args(argv)
    import torch

    from xray.inference.models import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = load_model(args.model)
    cache = FeatureCache(loaded, args.cache or ROOT / "runs" / "ood-study" / loaded.version)
    feats = collect(loaded, args.data, cache, with_test=bool(args.test))
    selection_sets = ("val", *SELECTION_IN, *SELECTION_OUT)
    result = table(feats, CANDIDATES, selection_sets)
    print(f"Selection data (no test images), model {args.model} ({loaded.version}):\n")
    print_result(result, selection_sets)
    chosen = choose(result)
    print(f"\nchosen by the declared rule: {chosen}")
    out: dict[str, Any] = {"model": args.model, "version": loaded.version, "selection": result, "chosen": chosen}
    if args.test:
        order = [args.test, *[c for c in CANDIDATES if c != args.test]]
        test = table(feats, order, ("test",))
        print(f"\nOfficial test set, {args.test} first (the others for information only):\n")
        print_result(test, ("test",))
        out["test"] = test
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
