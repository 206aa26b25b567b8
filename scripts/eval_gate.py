"""Measure the input gate (xray.trust.gate) and lung-field estimate (xray.trust.lungs); fit a model's OOD statistics.

Examples (from the repository root):
    python scripts/eval_gate.py --model pneumonia --fit          # fit ood.npz from the model's own train/val split
    python scripts/eval_gate.py --model pneumonia                 # the table for the model card
    python scripts/eval_gate.py --model pneumonia --lungs         # plus lung-field and heatmap-in-lungs figures
    python scripts/eval_gate.py --image-stats ../shared/data/kermany-224/train   # the image-statistic margins
    python scripts/eval_gate.py --model pneumonia --cost IMAGE    # what the gate adds to one upload (ms)

In-scope sets: the official Kermany test images (share wrongly flagged; goal under 2%), the full-resolution
Kermany validation images, and covid-chestxray's held-out patients for a model trained on that source (for a
Kermany-only model those adult images are reported without a goal). Out-of-scope sets,
all real files that ship with installed packages (nothing generated is counted as a photo or a slice):
natural photographs (scikit-learn, matplotlib, gradio and scikit-image sample images), grey-scale copies of the
same photographs, other medical images (scikit-image's fundus, histology and microscopy samples), CT and MR
slices (pydicom's bundled test files, one per distinct image, and matplotlib's MR sample), and every Kermany
test image with inverted grey levels. No lateral chest views are available offline (the covid-chestxray copy
was filtered to frontal views), so that row is reported as not measured.
Thresholds are never tuned here: the OOD threshold comes from validation features, image-statistic
thresholds from the training images (`--image-stats`).
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

DEFAULT_DATA = ROOT.parent / "shared" / "data"

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


def _row(name: str, expect_flag: bool | None, results: list[gate.GateResult], note: str = "") -> dict[str, Any]:
    """One table row; `expect_flag` None: no goal (a set the model was not trained for, reported as is)."""
    flagged = sum(not r.in_scope for r in results)
    reasons = Counter(code for r in results for code in set(r.codes))
    n = len(results)
    goal = "none (report only)" if expect_flag is None else "flag > 95%" if expect_flag else "flag < 2%"
    return {"set": name, "n": n, "flagged": flagged, "share_flagged": flagged / n if n else None,
            "goal": goal, "expect_flag": expect_flag, "by_reason": dict(reasons), "note": note}


def _training_config(loaded: Any) -> tuple[list[str], dict[str, Any]]:
    """The data sources a model was trained on and its training arguments (from its metrics.json)."""
    metrics = (loaded.metrics if loaded is not None else None) or {}
    training = metrics.get("training") or {}
    return list((metrics.get("data") or {}).get("sources") or training.get("data") or []), training


def covid_row(loaded: Any, data: Path, limit: int | None) -> dict[str, Any]:
    """covid-chestxray frontal views: in scope for a model trained on them, else reported without a goal.

    A model trained on covid-chestxray is scored on its held-out test patients only (its training patients
    would be in distribution by construction); a Kermany-only model was never trained on adults, so how many of
    these adult images it flags is reported with no goal.
    """
    from xray.training.data import load_samples, make_splits

    folder = data / "covid-chestxray"
    sources, training = _training_config(loaded)
    if any(Path(s).name == folder.name for s in sources):
        splits = make_splits([load_samples(folder)], label_names=loaded.label_names,
                             val_fraction=float(training.get("val_fraction", 0.15)),
                             test_fraction=float(training.get("test_fraction", 0.2)),
                             seed=int(training.get("seed", 0)))
        paths = [Path(s.source) for s in splits.test][:limit]
        return _row("covid-chestxray frontal, held-out test patients (in scope)", False,
                    _assess_all(loaded, _load_set(paths)), "other hospitals; the model trained on the other patients")
    paths = sorted((folder / "images").glob("*"))[:limit]
    return _row("covid-chestxray frontal (adults, other hospitals)", None, _assess_all(loaded, _load_set(paths)),
                "outside this model's training population of children aged 1-5")


def _load_set(paths: Sequence[Path], transform: Callable[[XrayImage], XrayImage] | None = None) -> list[XrayImage]:
    images = [read_image(p) for p in paths]
    return [transform(i) for i in images] if transform else images


def evaluate(loaded: Any, data: Path, limit: int | None) -> list[dict[str, Any]]:
    """All gate rows: in-scope sets first, then out-of-scope sets."""
    rows = []
    test = sorted((data / "kermany-224" / "test").rglob("*.jpeg"))[:limit]
    fullres = sorted((data / "kermany-val-fullres").rglob("*.jpeg"))
    print(f"reading {len(test)} Kermany test images ...", file=sys.stderr)
    test_images = _load_set(test)
    rows.append(_row("Kermany official test (in scope)", False, _assess_all(loaded, test_images)))
    rows.append(_row("Kermany full-resolution val (in scope)", False, _assess_all(loaded, _load_set(fullres))))
    rows.append(covid_row(loaded, data, limit))
    photos = photo_files()
    rows.append(_row("natural photographs", True, _assess_all(loaded, _load_set(photos))))
    rows.append(_row("same photographs, grey-scale", True, _assess_all(loaded, _load_set(photos, _grey_copy))))
    rows.append(_row("other medical images (fundus, histology, microscopy)", True,
                     _assess_all(loaded, _load_set(photo_files(OTHER_MEDICAL)))))
    with_header = ct_mr_images(True)
    rows.append(_row("CT/MR slices, as DICOM files", True, _assess_all(loaded, [i for _, i in with_header]),
                     ", ".join(n for n, _ in with_header)))
    rows.append(_row("CT/MR slices, pixels only (no header)", True,
                     _assess_all(loaded, [i for _, i in ct_mr_images(False)])))
    inverted = [_inverted(i) for i in test_images]
    rows.append(_row("Kermany test, grey levels inverted", True, _assess_all(loaded, inverted)))
    rows.append({"set": "lateral chest views", "n": 0, "flagged": None, "share_flagged": None, "goal": "flag > 95%",
                 "expect_flag": True, "by_reason": {}, "note": "not measured: no lateral views available offline"})
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


# ---------------------------------------------------------------- fitting the OOD statistics


def fit(loaded: Any, quantile: float, data_override: list[str], limit: int | None = None) -> gate.OodStats:
    """Fit ood.npz from the split the model was trained on (metrics.json), or from `--train-data`.

    `limit` keeps only the first images of each split (smoke runs only: a real fit uses the whole split).
    """
    from xray.training.data import load_pixels, load_samples, make_splits

    model_sources, training = _training_config(loaded)
    sources = data_override or model_sources
    if not sources:
        raise SystemExit("The model's metrics.json names no training data; give --train-data DIR.")
    splits = make_splits([load_samples(s) for s in sources], label_names=loaded.label_names,
                         val_fraction=float(training.get("val_fraction", 0.15)),
                         test_fraction=float(training.get("test_fraction", 0.2)), seed=int(training.get("seed", 0)))
    if limit:
        rng = np.random.default_rng(0)
        splits.train = [splits.train[i] for i in sorted(rng.permutation(len(splits.train))[:limit])]
        splits.val = [splits.val[i] for i in sorted(rng.permutation(len(splits.val))[:limit])]
    size = tuple(loaded.data_config["input_size"][1:])
    interpolation = str(loaded.data_config.get("interpolation", "bilinear"))
    print(f"fitting OOD statistics on {len(splits.train)} training / {len(splits.val)} validation images "
          f"from {sources}", file=sys.stderr)
    train_px = load_pixels(splits.train, size, interpolation, progress=True)
    val_px = load_pixels(splits.val, size, interpolation, progress=True)
    return gate.fit_model_ood(loaded, train_px, val_px, loaded.path, train_targets=splits.targets("train"),
                              quantile=quantile)


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

    flags = " --fit" if args.fit else ""
    record = {
        "command": f"python scripts/eval_gate.py --model {args.model}{flags}",
        "model": args.model,
        "version": loaded.version,
        "ood": None if ood is None else {"threshold": ood.threshold, "quantile": ood.quantile, "n_val": ood.n_val,
                                         "n_train": ood.n_train, "view": ood.view, "l2_normalized": ood.l2_normalized},
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
    p.add_argument("--fit", action="store_true", help="fit and save the model's OOD statistics first")
    p.add_argument("--train-data", action="append", default=[], help="training data for --fit (default: metrics.json)")
    p.add_argument("--quantile", type=float, default=0.99, help="validation quantile of the OOD threshold")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images per data set (smoke runs)")
    p.add_argument("--lungs", action="store_true", help="also report lung-field and heatmap-in-lungs statistics")
    p.add_argument("--cost", type=Path, metavar="IMAGE", help="only time the gate's steps on one image and exit")
    p.add_argument("--image-stats", nargs="+", metavar="DIR", help="only print training-image statistics and exit")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--save", action="store_true",
                   help="write gate.json into the model folder and regenerate its README.md model card")
    args = p.parse_args(argv)
    if args.image_stats:
        image_stats(args.image_stats)
        return 0
    loaded = None
    if args.model:
        from xray.inference.models import load_model

        loaded = load_model(args.model)
        if args.fit:
            stats = fit(loaded, args.quantile, args.train_data, args.limit)
            print(f"OOD statistics saved: threshold {stats.threshold:.2f} ({stats.quantile:.0%} of {stats.n_val} "
                  f"validation images), {stats.n_train} training images, D={stats.feature_dim}", file=sys.stderr)
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
    rows = evaluate(loaded, args.data, args.limit)
    model = f"{args.model} ({loaded.version})" if loaded is not None else "none (image statistics, DICOM header)"
    ood = gate.ood_stats_for(loaded) if loaded is not None else None
    ood_text = f"OOD threshold {ood.threshold:.2f} at the {ood.quantile:.0%} validation quantile" if ood else "no OOD"
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
