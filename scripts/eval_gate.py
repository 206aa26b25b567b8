"""Measure the input gate (xray.trust.gate) and lung-field estimate (xray.trust.lungs); fit its feature checks.

Examples (from the repository root):
    python scripts/eval_gate.py --model pneumonia --fit          # fit ood.npz and view.npz on all in-scope sources
    python scripts/eval_gate.py --model pneumonia --fit-view     # fit only the view check (view.npz)
    python scripts/eval_gate.py --model pneumonia                 # the table for the model card
    python scripts/eval_gate.py --model pneumonia --lungs         # plus lung-field and heatmap-in-lungs figures
    python scripts/eval_gate.py --image-stats ../shared/data/kermany-224/train   # the image-statistic margins
    python scripts/eval_gate.py --model pneumonia --cost IMAGE    # what the gate adds to one upload (ms)

Fitting (`--fit`): the OOD statistics (xray.trust.gate.fit_ood, unchanged rule: threshold at the `--quantile` of
the validation distances) and the learned view check (xray.trust.view) are fitted on the features of the
training and validation images of every in-scope source (`--train-data`, default kermany-224, covid-chestxray
and adult-cxr under `--data`; each source split by patient as the model's training split it, with its
val_fraction, test_fraction and seed; test splits are never read), one forward pass per image for both.
The view check's lateral class is the lateral views of about two thirds of the patients in `--lateral`
(`xray.trust.view.split_lateral`, seed `--view-seed`), each with `LATERAL_COPIES` augmented copies; its
`other` class is the photographs, grey copies, other medical images and CT/MR slices below (`OTHER_COPIES`
augmented copies each) and inverted copies of `INVERTED_FOR_FIT` in-scope training images. The held-out lateral
patients are written into config.json and measured here.

In-scope sets: the official Kermany test images (share wrongly flagged; goal under 2%), the full-resolution
Kermany validation images, covid-chestxray's held-out patients and adult-cxr's test split per source when the
model or its gate statistics were fitted on that source (else those adult images are reported without a goal).
Out-of-scope sets,
all real files that ship with installed packages (nothing generated is counted as a photo or a slice):
natural photographs (scikit-learn, matplotlib, gradio and scikit-image sample images), grey-scale copies of the
same photographs, other medical images (scikit-image's fundus, histology and microscopy samples), CT and MR
slices (pydicom's bundled test files, one per distinct image, and matplotlib's MR sample), and every Kermany
test image with inverted grey levels, and the lateral chest views of the patients the view check was not fitted on
(all 28 images when the model has no view check). The view check was fitted on the photographs, other medical
images and CT/MR slices: their rows are then not an independent check (said in each row's note).
Thresholds are never tuned here: the OOD threshold comes from validation features, the view check decides by its
most probable class, image-statistic thresholds come from the training images (`--image-stats`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xray.imaging.io import XrayImage, read_image  # noqa: E402
from xray.trust import gate  # noqa: E402
from xray.trust import view as viewcheck  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
#: Sources whose training and validation images `--fit` reads by default (folders under `--data`).
IN_SCOPE_SOURCES = ("kermany-224", "covid-chestxray", "adult-cxr")
#: Augmented copies (xray.trust.view.augment) per lateral image and per other out-of-scope image in the view fit.
LATERAL_COPIES = 10
OTHER_COPIES = 2
#: In-scope training images whose inverted copies join the view check's `other` class.
INVERTED_FOR_FIT = 200
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
#: Note on the out-of-scope rows whose images the view check was fitted on.
FITTED_ON = "the view check was fitted on these images: not an independent check"

#: Natural photographs bundled with installed packages: (package, path inside it). Clip-art, logos, renders
#: and duplicates in the same folders are left out.
PHOTOS = [
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("gradio", "media_assets/images/cheetah.jpg"),
    ("gradio", "media_assets/images/cheetah1.jpg"),
    ("gradio", "media_assets/images/lion.jpg"),
    ("gradio", "media_assets/images/tower.jpg"),
    ("gradio", "test_data/cheetah2.jpg"),
    # scikit-image's bundled photographs (requirements-dev.txt); camera, coins, moon and the textures are grey
    *[("skimage", f"data/{name}") for name in (
        "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "moon.png", "rocket.jpg",
        "hubble_deep_field.jpg", "motorcycle_left.png", "brick.png", "grass.png", "gravel.png", "clock_motion.png",
    )],
]
#: Other medical images that are not chest radiographs (scikit-image's bundled samples): fundus photographs,
#: histology and fluorescence microscopy.
OTHER_MEDICAL = [("skimage", f"data/{name}") for name in ("retina.jpg", "microaneurysms.png", "ihc.png", "cell.png")]
#: pydicom's bundled CT / MR test files, one per distinct image (MR_small_* re-encode MR_small.dcm).
CT_MR_DICOM = ["CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "MR_small.dcm", "examples_overlay.dcm"]


def _package_dir(name: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def photo_files(entries: Sequence[tuple[str, str]] = PHOTOS) -> list[Path]:
    """The bundled files (default: the photographs) that exist in this environment."""
    out = []
    for package, rel in entries:
        folder = _package_dir(package)
        if folder and (folder / rel).is_file():
            out.append(folder / rel)
    return out


def _without_header(image: XrayImage) -> XrayImage:
    return XrayImage(pixels=image.pixels, source_format="PNG", metadata={}, is_color=image.is_color)


def _grey_copy(image: XrayImage) -> XrayImage:
    grey = np.round(image.pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    return XrayImage(pixels=np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)), source_format="PNG")


def _inverted(image: XrayImage) -> XrayImage:
    return XrayImage(pixels=np.ascontiguousarray(255 - image.pixels), source_format=image.source_format)


def ct_mr_images(with_header: bool) -> list[tuple[str, XrayImage]]:
    """The CT/MR slices of pydicom's test files read like an upload (with or without header), and matplotlib's MR."""
    import pydicom.data
    from PIL import Image

    out = []
    for name in CT_MR_DICOM:
        try:
            image = read_image(pydicom.data.get_testdata_file(name))
        except Exception as exc:  # noqa: BLE001 - a missing decoder is reported, not fatal
            print(f"  (skipped {name}: {exc})")
            continue
        out.append((name, image if with_header else _without_header(image)))
    mpl = _package_dir("matplotlib")
    raw_path = mpl / "mpl-data/sample_data/s1045.ima.gz" if mpl else None
    if raw_path and raw_path.is_file():
        # 256 x 256 little-endian 16-bit MR slice (matplotlib's mri_with_eeg example); stretched to 8 bits.
        raw = np.frombuffer(gzip.decompress(raw_path.read_bytes()), dtype="<u2").reshape(256, 256).astype(np.float32)
        grey = np.round(255 * (raw - raw.min()) / max(float(raw.max() - raw.min()), 1.0)).astype(np.uint8)
        png = Image.fromarray(grey)
        out.append(("s1045.ima (MR)", XrayImage(pixels=np.asarray(png.convert("RGB")), source_format="RAW")))
    return out


# ---------------------------------------------------------------- evaluation


def _assess_all(loaded: Any, images: Sequence[XrayImage], batch: int = 32) -> list[gate.GateResult]:
    """Gate results; features in batches (one forward per batch) when the model has OOD statistics."""
    results = []
    stats = gate.ood_stats_for(loaded) if loaded is not None else None
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        features = gate.ood_features(loaded, chunk, stats) if stats is not None else [None] * len(chunk)
        results += [gate.verdict(image, stats, feats) for image, feats in zip(chunk, features, strict=True)]
    return results


#: Goals for in-scope sets (issue 20): Kermany's children flagged under 2%, adults at most 5%.
CHILD_GOAL, ADULT_GOAL = "flag < 2%", "flag <= 5%"


def _row(name: str, expect_flag: bool | None, results: list[gate.GateResult], note: str = "",
         goal: str | None = None) -> dict[str, Any]:
    """One table row; `expect_flag` None: no goal (a set the model was not trained for, reported as is)."""
    flagged = sum(not r.in_scope for r in results)
    reasons = Counter(code for r in results for code in set(r.codes))
    n = len(results)
    if goal is None or expect_flag is None:
        goal = "none (report only)" if expect_flag is None else "flag > 95%" if expect_flag else CHILD_GOAL
    return {"set": name, "n": n, "flagged": flagged, "share_flagged": flagged / n if n else None,
            "goal": goal, "expect_flag": expect_flag, "by_reason": dict(reasons), "note": note}


def _training_config(loaded: Any) -> tuple[list[str], dict[str, Any]]:
    """The data sources a model was trained on and its training arguments (from its metrics.json)."""
    metrics = (loaded.metrics if loaded is not None else None) or {}
    training = metrics.get("training") or {}
    return list((metrics.get("data") or {}).get("sources") or training.get("data") or []), training


def _gate_sources(loaded: Any) -> set[str]:
    """Names of the data folders the gate's statistics were fitted on (recorded by `--fit`)."""
    stats = gate.ood_stats_for(loaded) if loaded is not None else None
    return {Path(s).name for s in (stats.sources if stats is not None else ())}


def covid_row(loaded: Any, data: Path, limit: int | None) -> dict[str, Any]:
    """covid-chestxray frontal views: in scope when the model or its gate statistics were fitted on them.

    Then only the held-out test patients are scored (the model's own split of the source, which `--fit` also keeps
    out of the gate's fit): training patients would be in distribution by construction. Otherwise (a Kermany-only
    model whose gate never saw adults) how many of these adult images it flags is reported with no goal.
    """
    folder = data / "covid-chestxray"
    sources, _ = _training_config(loaded)
    trained = any(Path(s).name == folder.name for s in sources)
    if trained or folder.name in _gate_sources(loaded):
        splits = in_scope_splits(loaded, [folder])
        paths = [Path(s.source) for s in splits.test][:limit]
        note = ("other hospitals; the model trained on the other patients" if trained else
                "adults, other hospitals; the gate was fitted on the other patients, the model never saw adults")
        return _row("covid-chestxray frontal, held-out test patients (in scope)", False,
                    _assess_all(loaded, _load_set(paths)), note, goal=ADULT_GOAL)
    paths = sorted((folder / "images").glob("*"))[:limit]
    return _row("covid-chestxray frontal (adults, other hospitals)", None, _assess_all(loaded, _load_set(paths)),
                "outside this model's training population of children aged 1-5")


def adult_rows(loaded: Any, data: Path, limit: int | None) -> list[dict[str, Any]]:
    """adult-cxr's test split, one row per source: in scope when the model or its gate was fitted on adult-cxr."""
    from xray.training.data import load_samples

    folder = data / "adult-cxr"
    if not (folder / "metadata.csv").is_file():
        return []
    sources, _ = _training_config(loaded)
    fitted = folder.name in _gate_sources(loaded) or any(Path(s).name == folder.name for s in sources)
    test = [s for s in load_samples(folder) if s.split == "test"]
    rows = []
    for source in sorted({s.data_source for s in test}):
        chosen = [s for s in test if s.data_source == source][:limit]
        labels = "/".join(sorted({s.label for s in chosen}))
        rows.append(_row(f"adult-cxr test, {source} ({labels}; in scope)" if fitted
                         else f"adult-cxr test, {source} ({labels}; adults)", False if fitted else None,
                         _assess_all(loaded, _load_set([Path(s.source) for s in chosen])),
                         "" if fitted else "neither the model nor its gate was fitted on adult-cxr", goal=ADULT_GOAL))
    return rows


def lateral_files(folder: Path) -> list[Path]:
    """The lateral chest views of `folder` (shared/data/lateral), sorted."""
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES) if folder.is_dir() else []


def lateral_rows(loaded: Any, folder: Path) -> list[dict[str, Any]]:
    """Lateral chest views: the held-out patients of the model's view check (goal: flag > 95%), then the others.

    Without a view check every lateral image is scored as one row.
    """
    paths = lateral_files(folder)
    if not paths:
        return [{"set": "lateral chest views", "n": 0, "flagged": None, "share_flagged": None, "goal": "flag > 95%",
                 "expect_flag": True, "by_reason": {}, "note": f"not measured: no images in {folder}"}]
    check = gate.view_check_for(loaded) if loaded is not None else None
    held_names = set(((check.info.get("lateral") or {}).get("held_out_files") or []) if check is not None else [])
    if not held_names:
        groups = len({viewcheck.lateral_patient_id(p) for p in paths})
        return [_row(f"lateral chest views, all ({groups} patient groups)", True, _assess_all(loaded, _load_set(paths)),
                     "no view check fitted")]
    held = [p for p in paths if p.name in held_names]
    fitted = [p for p in paths if p.name not in held_names]
    n_held = len({viewcheck.lateral_patient_id(p) for p in held})
    n_fit = len({viewcheck.lateral_patient_id(p) for p in fitted})
    return [
        _row(f"lateral chest views, held-out patients ({n_held} patient groups)", True,
             _assess_all(loaded, _load_set(held)), "patients the view check was not fitted on"),
        _row(f"lateral chest views, the view check's fit patients ({n_fit} patient groups)", None,
             _assess_all(loaded, _load_set(fitted)), "fitted on (with augmented copies): not an independent check"),
    ]


def _load_set(paths: Sequence[Path], transform: Callable[[XrayImage], XrayImage] | None = None) -> list[XrayImage]:
    images = [read_image(p) for p in paths]
    return [transform(i) for i in images] if transform else images


def evaluate(loaded: Any, data: Path, limit: int | None, lateral: Path | None = None) -> list[dict[str, Any]]:
    """All gate rows: in-scope sets first (the official Kermany test set first of all), then out-of-scope sets."""
    rows = []
    fitted_on = FITTED_ON if loaded is not None and gate.view_check_for(loaded) is not None else ""
    test = sorted((data / "kermany-224" / "test").rglob("*.jpeg"))[:limit]
    fullres = sorted((data / "kermany-val-fullres").rglob("*.jpeg"))
    print(f"reading {len(test)} Kermany test images ...", file=sys.stderr)
    test_images = _load_set(test)
    rows.append(_row("Kermany official test (in scope)", False, _assess_all(loaded, test_images)))
    rows.append(_row("Kermany full-resolution val (in scope)", False, _assess_all(loaded, _load_set(fullres))))
    rows.append(covid_row(loaded, data, limit))
    rows += adult_rows(loaded, data, limit)
    photos = photo_files()
    rows.append(_row("natural photographs", True, _assess_all(loaded, _load_set(photos)), fitted_on))
    rows.append(_row("same photographs, grey-scale", True, _assess_all(loaded, _load_set(photos, _grey_copy)),
                     fitted_on))
    rows.append(_row("other medical images (fundus, histology, microscopy)", True,
                     _assess_all(loaded, _load_set(photo_files(OTHER_MEDICAL))), fitted_on))
    with_header = ct_mr_images(True)
    rows.append(_row("CT/MR slices, as DICOM files", True, _assess_all(loaded, [i for _, i in with_header]),
                     "; ".join(filter(None, [", ".join(n for n, _ in with_header), fitted_on]))))
    rows.append(_row("CT/MR slices, pixels only (no header)", True,
                     _assess_all(loaded, [i for _, i in ct_mr_images(False)]), fitted_on))
    inverted = [_inverted(i) for i in test_images]
    rows.append(_row("Kermany test, grey levels inverted", True, _assess_all(loaded, inverted)))
    rows += lateral_rows(loaded, lateral if lateral is not None else data / "lateral")
    return rows


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    """Markdown table of gate rows."""
    print(header)
    print()
    print("| set | n | flagged | share | goal | reasons (images) |")
    print("|---|---:|---:|---:|---|---|")
    for r in rows:
        share = "n/a" if r["share_flagged"] is None else f"{r['share_flagged']:.1%}"
        flagged = "n/a" if r["flagged"] is None else str(r["flagged"])
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["by_reason"].items(), key=lambda kv: -kv[1]))
        note = f" ({r['note']})" if r.get("note") else ""
        print(f"| {r['set']}{note} | {r['n']} | {flagged} | {share} | {r['goal']} | {reasons or '-'} |")


# ---------------------------------------------------------------- fitting the OOD statistics and the view check

#: One image for a fit: a file or an image in memory, and a transform applied after reading it (or None).
Item = tuple[Any, Callable[[Any], Any] | None]


def _read_item(item: Item) -> Any:
    source, transform = item
    image = read_image(source) if isinstance(source, (str, Path)) else source
    return transform(image) if transform is not None else image


def gate_features(loaded: Any, items: Sequence[Item], view: bool, batch: int = 32) -> np.ndarray:
    """(N, D) the gate's features of each item (xray.trust.gate.check_features), read and scored batch by batch.

    Images are read as the app reads an upload and kept only for their batch, so a fit holds features, not pixels.
    """
    from tqdm.auto import tqdm

    out = []
    for start in tqdm(range(0, len(items), batch), desc="features", leave=False):
        out.append(gate.check_features(loaded, [_read_item(i) for i in items[start : start + batch]], view))
    return np.concatenate(out) if out else np.zeros((0, int(loaded.model.num_features)), dtype=np.float32)


def in_scope_splits(loaded: Any, sources: Sequence[str | Path]) -> Any:
    """The sources split by patient as the model's training split them.

    Its metrics.json label map, val/test fractions and seed; the model's classes when the (mapped) labels are among
    them, else the data's own. Each data source is split on its own (`xray.training.data.make_splits`), so a
    source's validation and test patients are the model's whether or not the model was trained on that source.
    """
    from xray.training.data import load_samples, make_splits, merge_labels, parse_label_map

    _, training = _training_config(loaded)
    data = (loaded.metrics or {}).get("data") or {} if loaded is not None else {}
    mapping = parse_label_map(training.get("label_map") or data.get("label_map"))
    samples = [merge_labels(load_samples(s), mapping) for s in sources]
    found = {s.label for source in samples for s in source}
    names = loaded.label_names if loaded is not None and found <= set(loaded.label_names) else None
    return make_splits(samples, label_names=names, val_fraction=float(training.get("val_fraction", 0.15)),
                       test_fraction=float(training.get("test_fraction", 0.2)), seed=int(training.get("seed", 0)))


def _augmented(seed: int) -> Callable[[Any], np.ndarray]:
    return lambda image: viewcheck.augment(np.asarray(getattr(image, "pixels", image)), np.random.default_rng(seed))


def _subsample(samples: list[Any], limit: int | None, seed: int) -> list[Any]:
    if not limit or len(samples) <= limit:
        return samples
    rng = np.random.default_rng(seed)
    return [samples[i] for i in sorted(rng.permutation(len(samples))[:limit])]


def fit_checks(loaded: Any, args: argparse.Namespace, *, ood: bool = True, view_check: bool = True) -> None:
    """Fit and save the OOD statistics and/or the view check on the in-scope sources' training + validation images.

    `args.limit` keeps only that many training and validation images (smoke runs only: a real fit uses them all).
    """
    sources = [str(s) for s in (args.train_data or [args.data / name for name in IN_SCOPE_SOURCES])]
    splits = in_scope_splits(loaded, sources)
    splits.train = _subsample(splits.train, args.limit, 0)
    splits.val = _subsample(splits.val, args.limit, 1)
    view = gate.feature_view(loaded)
    fit_samples = splits.train + splits.val
    print(f"features of {len(splits.train)} training / {len(splits.val)} validation images from {sources} "
          f"({'ood_view copies' if view else 'images as given'})", file=sys.stderr)
    features = gate_features(loaded, [(s.source, None) for s in fit_samples], view)
    if ood:
        n_train = len(splits.train)
        stats = gate.fit_ood(features[:n_train], features[n_train:], labels_train=splits.targets("train"),
                             quantile=args.quantile)
        stats.view = view
        gate.save_ood(stats, loaded.path, sources=[Path(s).name for s in sources])
        print(f"OOD statistics saved: threshold {stats.threshold:.2f} ({stats.quantile:.0%} of {stats.n_val} "
              f"validation images), {stats.n_train} training images, D={stats.feature_dim}", file=sys.stderr)
    if view_check:
        check = fit_view(loaded, args, fit_samples, features, view, sources)
        cv = check.info.get("cv") or {}
        recall = ", ".join(f"{k} {v['correct']}/{v['n']}" for k, v in (cv.get("out_of_fold_recall") or {}).items())
        print(f"view check saved: C={check.c:g}; grouped {cv.get('folds')}-fold out-of-fold recall on the fit images: "
              f"{recall or 'n/a'}", file=sys.stderr)


def fit_view(loaded: Any, args: argparse.Namespace, fit_samples: Sequence[Any], frontal: np.ndarray, view: bool,
             sources: Sequence[str]) -> viewcheck.ViewCheck:
    """Fit the view check (xray.trust.view) and save it: frontal, lateral (fit patients) and other images.

    `frontal` are the features of `fit_samples` (in-scope training and validation images), already computed.
    """
    seed = args.view_seed
    rng = np.random.default_rng(seed)
    lateral = lateral_files(args.lateral)
    if not lateral:
        raise SystemExit(f"No lateral views in {args.lateral}; the view check needs them (--lateral DIR).")
    fit_lat, held_lat = viewcheck.split_lateral(lateral, seed=seed)
    items: list[Item] = []
    labels: list[str] = []
    groups: list[str] = []
    originals: list[bool] = []

    def add(item: Item, label: str, group: str, original: bool) -> None:
        items.append(item)
        labels.append(label)
        groups.append(group)
        originals.append(original)

    def add_with_copies(source: Any, label: str, group: str, copies: int, transform: Any = None) -> None:
        add((source, transform), label, group, True)
        for _ in range(copies):
            augment = _augmented(int(rng.integers(2**31)))
            add((source, augment if transform is None else (lambda i, t=transform, a=augment: a(t(i)))), label,
                group, False)

    for path in fit_lat:
        add_with_copies(path, viewcheck.LATERAL, f"lateral:{viewcheck.lateral_patient_id(path)}", LATERAL_COPIES)
    # frontal copies as many as the lateral ones, so that the augmentation itself says nothing about the class
    n_copies = min(len(fit_samples), len(fit_lat) * LATERAL_COPIES)
    for i in sorted(rng.choice(len(fit_samples), size=n_copies, replace=False)):
        add((fit_samples[i].source, _augmented(int(rng.integers(2**31)))), viewcheck.FRONTAL, fit_samples[i].group,
            False)
    for path in photo_files() + photo_files(OTHER_MEDICAL):
        add_with_copies(path, viewcheck.OTHER, f"other:{path.name}", OTHER_COPIES)
        add_with_copies(path, viewcheck.OTHER, f"other:{path.name}", OTHER_COPIES, _grey_copy)
    for name, image in ct_mr_images(False):
        add_with_copies(image, viewcheck.OTHER, f"other:{name}", OTHER_COPIES)
    for i in sorted(rng.choice(len(fit_samples), size=min(INVERTED_FOR_FIT, len(fit_samples)), replace=False)):
        add((fit_samples[i].source, _inverted), viewcheck.OTHER, fit_samples[i].group, True)
    print(f"view check: {len(fit_samples)} frontal images, {len(fit_lat)} lateral ({len(held_lat)} held out), "
          f"{len(items)} more rows with augmented copies and other images", file=sys.stderr)
    extra = gate_features(loaded, items, view)
    check = viewcheck.fit_view_check(
        np.vstack([frontal, extra]), [viewcheck.FRONTAL] * len(fit_samples) + labels,
        [s.group for s in fit_samples] + groups, originals=np.array([True] * len(fit_samples) + originals),
        seed=seed)
    check.view = view
    viewcheck.save_view_check(check, loaded.path, data={
        "frontal": f"training + validation images of {', '.join(Path(s).name for s in sources)} (no test split)",
        "other": "photographs and grey copies, other medical images, CT/MR slices (scripts/eval_gate.py), "
                 f"inverted copies of {INVERTED_FOR_FIT} in-scope training images",
        "augmentation": f"xray.trust.view.augment: {LATERAL_COPIES} copies per lateral image, as many frontal "
                        f"copies, {OTHER_COPIES} per other image",
    }, lateral={
        "folder": Path(args.lateral).name,
        "seed": seed,
        "held_out_fraction": viewcheck.HELD_OUT_FRACTION,
        "fit_groups": sorted({viewcheck.lateral_patient_id(p) for p in fit_lat}),
        "held_out_groups": sorted({viewcheck.lateral_patient_id(p) for p in held_lat}),
        "held_out_files": [p.name for p in held_lat],
    })
    check.info = viewcheck.load_view_check(loaded.path).info
    return check


# ---------------------------------------------------------------- image statistics and layout


def image_stats(folders: Sequence[str]) -> None:
    """Print the statistics behind the image-statistic thresholds, and the layout template, for training images."""
    import cv2

    paths = [p for folder in folders for p in sorted(Path(folder).rglob("*")) if p.suffix.lower() in
             {".jpeg", ".jpg", ".png"}]
    spreads, stds, sides, corrs, circles, cells = [], [], [], [], [], []
    for path in paths:
        image = read_image(path)
        grey = image.pixels.astype(np.float32).mean(axis=2)
        lo, hi = np.percentile(grey, [0.5, 99.5])
        spreads.append(hi - lo)
        stds.append(grey.std())
        sides.append(min(grey.shape))
        corrs.append(gate.layout_correlation(grey))
        circles.append(gate.circle_deviation(grey))
        small = cv2.resize(grey, (gate.LAYOUT_GRID, gate.LAYOUT_GRID), interpolation=cv2.INTER_AREA)
        m = gate._LAYOUT_MARGIN
        cells.append(gate._zscore(small[m:-m, m:-m]))
    print(f"{len(paths)} images in {', '.join(folders)}")
    for name, values, limit in (("shorter side", sides, gate.MIN_SIDE), ("grey spread", spreads, gate.MIN_SPREAD),
                                ("grey std", stds, gate.MIN_STD), ("layout correlation", corrs, gate.INVERTED_BELOW),
                                ("circle deviation", circles, gate.CIRCLE_TOLERANCE)):
        v = np.asarray(values, dtype=float)
        finite = v[np.isfinite(v)]
        low = f"min {finite.min():.3f}, 0.1% {np.percentile(finite, 0.1):.3f}" if len(finite) else "all infinite"
        print(f"  {name:<20} {low}, median {np.median(v):.3f}   (gate limit {limit})")
    corr = np.asarray(corrs)
    caught = (corr > -gate.INVERTED_BELOW).mean()
    print(f"  inverted copies caught (correlation > {-gate.INVERTED_BELOW}): {caught:.2%}")
    mean = gate._zscore(np.mean(cells, axis=0))
    symmetric = gate._zscore((mean + mean[:, ::-1]) / 2)
    print("  layout template, left half, x10 (gate._LAYOUT_LEFT_HALF):")
    for row in np.round(symmetric * 10).astype(int)[:, : symmetric.shape[1] // 2]:
        print("    (" + ", ".join(str(v) for v in row) + "),")


# ---------------------------------------------------------------- lungs and heatmaps


def lungs_report(loaded: Any, data: Path, limit: int | None) -> None:
    """Lung-field area statistics, and (with a model) where its Grad-CAM heat lies."""
    from xray.trust import lungs
    sets = {
        "Kermany full-resolution val": sorted((data / "kermany-val-fullres").rglob("*.jpeg")),
        "Kermany official test": sorted((data / "kermany-224" / "test").rglob("*.jpeg"))[:limit],
        "covid-chestxray frontal": sorted((data / "covid-chestxray" / "images").glob("*"))[:limit],
    }
    print("\n| set | n | lung area (mean) | implausible masks | mirrored | heat in lungs (median) | lungs < 0.5 |"
          " heat in chest (median) | warned (chest < 0.5) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, paths in sets.items():
        areas, implausible, mirrored, shares, chest, warned = [], 0, 0, [], [], 0
        for path in paths:
            image = read_image(path)
            fields = lungs.lung_fields(image)
            areas.append(fields.area_fraction)
            implausible += not fields.plausible
            mirrored += fields.mirrored
            if loaded is not None:
                from xray.inference.explain import explain

                _, explanation = explain(loaded, image)
                check = lungs.assess_heatmap(explanation.heatmap, image, fields=fields)
                if check.heat_in_lungs is not None:
                    shares.append(check.heat_in_lungs)
                    chest.append(check.heat_in_chest)
                warned += check.warning is not None
        heat = f"{np.median(shares):.2f} | {np.mean(np.asarray(shares) < 0.5):.1%}" if shares else "n/a | n/a"
        heat_chest = f"{np.median(chest):.2f}" if chest else "n/a"
        warn = f"{warned / len(paths):.1%}" if loaded is not None and paths else "n/a"
        print(f"| {name} | {len(paths)} | {np.mean(areas):.3f} | {implausible} | {mirrored} | {heat} | {heat_chest} "
              f"| {warn} |")


def gate_cost(loaded: Any, path: Path, repeats: int = 20) -> dict[str, float]:
    """What the gate adds to one upload, in ms (p50 after 3 warm-up calls): image checks and the OOD score.

    Statistics fitted on `gate.ood_view` copies need their own forward pass on a 224-px JPEG copy of the image,
    on top of the prediction's; statistics of a model with an input JPEG step score the prediction's own features
    (`view` False), which the app passes in. The whole gate is timed as the app calls it (`gate.assess` with the
    prediction's features); the prediction (`xray.inference.predict.predict`) is timed alongside for scale.
    """
    from xray.inference.predict import predict

    image = read_image(path)
    stats = gate.ood_stats_for(loaded)
    own = gate.penultimate_features(loaded, [image])[0]  # what the prediction's forward pass hands the gate
    extra = "JPEG copy + forward" if stats is None or stats.view else "none in the app: the prediction's own"
    steps = {
        "predict": lambda: predict(loaded, [image], batch_size=1),
        "image checks (check_image)": lambda: gate.check_image(image),
        f"OOD features ({extra})": lambda: gate.ood_features(loaded, [image], stats),
        "whole gate (gate.assess, as the app calls it)": lambda: gate.assess(loaded, image, features=own),
    }
    out = {}
    for name, step in steps.items():
        times = []
        for i in range(3 + repeats):
            started = time.perf_counter()
            step()
            if i >= 3:
                times.append((time.perf_counter() - started) * 1000)
        out[name] = float(np.median(times))
    return out


def save(loaded: Any, args: argparse.Namespace, rows: list[dict[str, Any]], ood: Any, seconds: float) -> None:
    """Write gate.json and the model card into the model folder; record the test images flagged in config.json.

    The app quotes that count with each out-of-distribution flag (`xray.trust.gate.verdict`).
    """
    from xray.training.card import GATE_FILE, write_model_card

    flags = " --fit" if args.fit else " --fit-view" if args.fit_view else ""
    check = ood.view_check if ood is not None else None
    record = {
        "command": f"python scripts/eval_gate.py --model {args.model}{flags}",
        "model": args.model,
        "version": loaded.version,
        "ood": None if ood is None else {"threshold": ood.threshold, "quantile": ood.quantile, "n_val": ood.n_val,
                                         "n_train": ood.n_train, "view": ood.view, "l2_normalized": ood.l2_normalized,
                                         "sources": list(ood.sources)},
        "view_check": None if check is None else {"C": check.c, "classes": list(check.classes),
                                                  "rule": "most probable class", **check.info},
        "seconds": round(seconds, 1),
        "rows": rows,
    }
    path = Path(loaded.path) / GATE_FILE
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    test_row = rows[0]  # `evaluate` puts the official test set first
    if ood is not None and test_row["set"].startswith("Kermany official test") and test_row["n"]:
        # the app quotes this with each out-of-distribution flag (xray.trust.gate.verdict)
        gate.record_in_scope_flagged(loaded.path, set_name="official Kermany test X-rays",
                                     flagged=test_row["flagged"], n=test_row["n"])
        print(f"recorded in {Path(loaded.path) / 'config.json'}: {test_row['flagged']}/{test_row['n']} test images "
              "flagged", file=sys.stderr)
    if (Path(loaded.path) / "metrics.json").is_file():
        print(f"wrote {write_model_card(loaded.path)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model name (bundled name, local-dir:PATH, hf-hub:...)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default ../shared/data)")
    p.add_argument("--fit", action="store_true", help="fit and save the model's OOD statistics and view check first")
    p.add_argument("--fit-view", action="store_true", help="fit and save only the view check first")
    p.add_argument("--train-data", action="append", default=[], type=Path,
                   help="in-scope data for --fit, repeatable (default: kermany-224, covid-chestxray, adult-cxr "
                        "under --data)")
    p.add_argument("--lateral", type=Path, default=None, help="lateral chest views (default: DATA/lateral)")
    p.add_argument("--view-seed", type=int, default=0, help="seed of the lateral held-out split and augmentation")
    p.add_argument("--quantile", type=float, default=0.99, help="validation quantile of the OOD threshold")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images per data set (smoke runs)")
    p.add_argument("--lungs", action="store_true", help="also report lung-field and heatmap-in-lungs statistics")
    p.add_argument("--cost", type=Path, metavar="IMAGE", help="only time the gate's steps on one image and exit")
    p.add_argument("--image-stats", nargs="+", metavar="DIR", help="only print training-image statistics and exit")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--save", action="store_true",
                   help="write gate.json into the model folder and regenerate its README.md model card")
    args = p.parse_args(argv)
    args.lateral = args.lateral or args.data / "lateral"
    if args.image_stats:
        image_stats(args.image_stats)
        return 0
    loaded = None
    if args.model:
        from xray.inference.models import load_model

        loaded = load_model(args.model)
        if args.fit_view and not args.fit and gate.ood_stats_for(loaded) is None:
            raise SystemExit(f"model {args.model} has no OOD statistics; the view check scores their features and is "
                             "applied with them: fit both (--fit)")
        if args.fit or args.fit_view:
            fit_checks(loaded, args, ood=args.fit, view_check=True)
        if gate.ood_stats_for(loaded) is None:
            print(f"note: model {args.model} has no OOD statistics (run with --fit); image checks only",
                  file=sys.stderr)
    if args.cost:
        if loaded is None:
            raise SystemExit("--cost needs --model")
        import torch

        print(f"gate cost on {args.cost.name}, model {args.model} ({loaded.architecture}), "
              f"torch threads {torch.get_num_threads()}, p50 of 20 calls:")
        for name, ms in gate_cost(loaded, args.cost).items():
            print(f"  {name}: {ms:.1f} ms")
        return 0
    started = time.perf_counter()
    rows = evaluate(loaded, args.data, args.limit, args.lateral)
    model = f"{args.model} ({loaded.version})" if loaded is not None else "none (image statistics, DICOM header)"
    ood = gate.ood_stats_for(loaded) if loaded is not None else None
    ood_text = f"OOD threshold {ood.threshold:.2f} at the {ood.quantile:.0%} validation quantile" if ood else "no OOD"
    if ood is not None:
        ood_text += f", fitted on {', '.join(ood.sources) or 'the model training data'}"
        ood_text += f"; view check C={ood.view_check.c:g}" if ood.view_check is not None else "; no view check"
    print_table(rows, f"Input gate, model {model}, {ood_text}; {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if args.save and loaded is not None:
        if args.limit:
            raise SystemExit("--save needs the whole evaluation sets: drop --limit")
        save(loaded, args, rows, ood, time.perf_counter() - started)
    if args.lungs:
        lungs_report(loaded, args.data, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
