"""What a training run reads and writes around the loop: its splits, and its model folder once trained.

`load_splits` turns train.py's --data/--dataset options into patient-grouped train/validation/test splits;
`finish` saves the trained model, fits temperature and threshold on validation, measures the test split (pooled
and per data source), fits the input gate's OOD statistics and writes the card; `export_model` and `reevaluate`
copy a finished run (in fp16, or with another input JPEG step) without training it again. Evaluation runs through
the app's own loading and preprocessing, in fp32, on pixels from the training pixel cache.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xray.training.checkpoint import CHECKPOINT_NAME

logger = logging.getLogger(__name__)


def split_pixels(args: argparse.Namespace, samples: Sequence[Any], data_config: dict[str, Any], *,
                 progress: bool = False) -> list[np.ndarray]:  # fmt: skip
    """Decoded pixels of `samples` at the model's input size, as `load_pixels` gives them, through the pixel cache."""
    from xray.training.cache import cached_pixels

    cache_dir = getattr(args, "cache_dir", None)
    return cached_pixels(
        samples, tuple(data_config["input_size"][1:]), str(data_config.get("interpolation", "bilinear")),
        cache_dir=Path(cache_dir) if cache_dir else None, store=not getattr(args, "no_pixel_cache", False),
        progress=progress,
    ).arrays()  # fmt: skip


def load_splits(args: argparse.Namespace):
    """Load every --data / --dataset source and split it by patient into train / val / test."""
    from xray.training.data import load_hf_dataset, load_samples, make_splits, merge_labels, parse_label_map

    sources = [load_samples(d) for d in args.data] + [load_hf_dataset(n) for n in args.dataset]
    if not sources:
        raise SystemExit("Give --data PATH or --dataset NAME (no data path is built in).")
    mapping = parse_label_map(getattr(args, "label_map", None))
    if mapping:
        sources = [merge_labels(source, mapping) for source in sources]
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    splits = make_splits(
        sources, label_names=labels, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed
    )
    if args.max_per_class:
        rng = random.Random(args.seed)
        for split in ("train", "val", "test"):
            samples = getattr(splits, split)
            kept = []
            for name in splits.label_names:
                members = [s for s in samples if s.label == name]
                rng.shuffle(members)
                kept += members[: args.max_per_class]
            setattr(splits, split, kept)
    return splits


def describe_data(args: argparse.Namespace, splits) -> dict[str, Any]:
    """Data provenance for metrics.json and the model card."""
    groups = {split: {s.group for s in getattr(splits, split)} for split in ("train", "val", "test")}
    return {
        "patient_overlap": {
            "train_test": len(groups["train"] & groups["test"]),
            "val_test": len(groups["val"] & groups["test"]),
        },
        "sources": [str(d) for d in args.data] + [f"hf:{n}" for n in args.dataset],
        "data_sources": {
            split: dict(sorted(Counter(s.data_source for s in getattr(splits, split)).items()))
            for split in ("train", "val", "test")
        },
        "label_map": getattr(args, "label_map", None) or None,
        "sampling": sampling_rule(args),
        "label_names": splits.label_names,
        "split_counts": splits.summary(),
        "split_rule": (
            f"validation = {args.val_fraction:.0%} of training patients (stratified, grouped by patient, "
            f"seed {args.seed}); test = each source's own test split, else {args.test_fraction:.0%} of its patients"
        ),
    }


def sampling_rule(args: argparse.Namespace) -> str:
    """How training drew its images, in words (for metrics.json and the model card)."""
    power = getattr(args, "source_balance", None)
    if power is None:
        text = "every training image once per epoch (data sources as they come)"
    elif power == 0:
        text = "each data source drawn equally often (weighted sampler with replacement)"
    else:
        text = f"each data source drawn in proportion to its size**{power:g} (weighted sampler with replacement)"
    classes = {"loss": "class-weighted loss", "sampler": "classes evened out by the sampler",
               "none": "no class weighting"}  # fmt: skip
    return f"{text}; {classes[args.balance]}"


def after_training(args: argparse.Namespace, loaded, splits, out_dir: Path, val_pixels: Sequence[Any]) -> None:
    """Fit the input gate's out-of-distribution statistics (ood.npz) on this model's own features.

    Mean and covariance come from the training split, the threshold from the validation split: the test split
    plays no part (xray.trust.gate).
    """
    from xray.trust.gate import MIN_OOD_ROWS, fit_model_ood

    if min(len(splits.train), len(val_pixels)) < MIN_OOD_ROWS:
        logger.warning(
            "only %d training / %d validation images: too few to fit OOD statistics; the input gate of this model "
            "will use image statistics only", len(splits.train), len(val_pixels),
        )  # fmt: skip
        return
    train_pixels = split_pixels(args, splits.train, loaded.data_config, progress=True)
    stats = fit_model_ood(loaded, train_pixels, val_pixels, out_dir, train_targets=splits.targets("train"))
    logger.info("OOD statistics written to %s (threshold %.1f)", out_dir, stats.threshold)


def finish(args: argparse.Namespace, model: torch.nn.Module, splits, history, facts: dict, out: Path) -> dict:
    """Save, evaluate (temperature/threshold on validation, metrics on test), write plots, card; push if asked."""
    from xray.inference.models import INPUT_JPEG_KEY, load_model_dir, save_model
    from xray.training.card import write_model_card
    from xray.training.evaluate import evaluate_model

    labels = splits.label_names
    extra_config: dict[str, Any] = {"temperature": 1.0}
    if args.input_jpeg_quality:
        extra_config[INPUT_JPEG_KEY] = args.input_jpeg_quality
    if len(labels) == 2:
        extra_config.update(threshold=0.5, positive_label=labels[1])
    save_model(model, out, label_names=labels, extra_config=extra_config)
    loaded = load_model_dir(out)
    val_px = split_pixels(args, splits.val, loaded.data_config)
    test_px = split_pixels(args, splits.test, loaded.data_config, progress=True)
    training = {k: v for k, v in vars(args).items() if k not in {"push_to_hub", "export", "resume"}}
    metrics = evaluate_model(
        loaded,
        test_px,
        splits.targets("test"),
        val_images=val_px,
        y_val=splits.targets("val"),
        out_dir=out,
        history=history,
        min_sensitivity=args.min_sensitivity,
        n_boot=args.bootstrap,
        sources=[s.data_source for s in splits.test],
        extra={
            "data": describe_data(args, splits),
            "training": {**training, **facts},
            "weights_bytes": (out / "model.safetensors").stat().st_size,
        },
    )
    after_training(args, loaded, splits, out, val_px)
    if args.half:
        metrics = convert_half(out, test_px)
    write_model_card(out)
    if args.push_to_hub:
        push_to_hub(out, args.push_to_hub)
    return metrics


def convert_half(folder: Path, images: Sequence[Any]) -> dict:
    """Re-store a model folder's weights as fp16 and record the largest probability change on `images`."""
    from xray.inference.models import load_model_dir, save_model
    from xray.training.evaluate import predict_logits
    from xray.training.metrics import softmax

    before = load_model_dir(folder)
    p32 = softmax(predict_logits(before, images), before.temperature)
    extra = {
        k: v
        for k, v in before.config.items()
        if k
        not in {
            "architecture",
            "num_classes",
            "label_names",
            "num_features",
            "global_pool",
            "pretrained_cfg",
            "model_args",
        }
    }
    # loaded models are channels_last; safetensors needs contiguous tensors
    model = copy.deepcopy(before.model).to(memory_format=torch.contiguous_format)
    save_model(model, folder, label_names=before.label_names, extra_config=extra, half=True)
    after = load_model_dir(folder)
    p16 = softmax(predict_logits(after, images), after.temperature)
    diff = float(np.abs(p32 - p16).max()) if len(images) else 0.0
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics["fp16"] = {
        "max_abs_probability_diff": diff,
        "images_checked": len(images),
        "decisions_changed": int((p32.argmax(1) != p16.argmax(1)).sum()) if len(images) else 0,
    }
    metrics["weights_bytes"] = (folder / "model.safetensors").stat().st_size
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    logger.info("fp16 weights: max |p32 - p16| = %.2e on %d images", diff, len(images))
    if diff > 1e-3:
        logger.warning("fp16 changes probabilities by %.2e (> 1e-3); keep fp32 weights for this model", diff)
    return metrics


def copy_model_files(run_dir: Path, dest: Path) -> None:
    """Copy a run's model folder files (weights, config, metrics, plots, card, ood.npz; no checkpoint) to `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in run_dir.iterdir():
        # .npz: the input gate's OOD statistics (ood.npz)
        kept = {".json", ".safetensors", ".png", ".md", ".npz"}
        if path.is_file() and path.name != CHECKPOINT_NAME and path.suffix in kept:
            shutil.copy2(path, dest / path.name)
            (dest / path.name).chmod(0o644)  # timm writes weights owner-only; bundled files must be readable


def export_model(run_dir: Path, dest: Path, *, half: bool, images: Sequence[Any]) -> dict:
    """Copy a finished model folder (no checkpoint) to `dest`, optionally in fp16, and rewrite its card."""
    from xray.training.card import write_model_card

    copy_model_files(run_dir, dest)
    metrics = convert_half(dest, images) if half else json.loads((dest / "metrics.json").read_text(encoding="utf-8"))
    write_model_card(dest)
    return metrics


def reevaluate(args: argparse.Namespace, run_dir: Path, out: Path) -> dict:
    """Re-measure a finished run, optionally with another input JPEG step, without training it again.

    The run is copied to `out` (the run itself is left as it was), `input_jpeg_quality` is set in the copy's
    config.json (`--input-jpeg-quality`; 0 removes it; not given: the run's own setting is kept), and everything
    that depends on the input processing is redone on the run's own splits (its data, label map, split settings
    and seed): temperature and threshold on validation, the test metrics pooled and per data source with the
    shortcut probe, the plots, the OOD statistics and the card. The run's training facts and history are kept,
    with `reevaluated_from` added.
    """
    from xray.imaging.transforms import check_jpeg_quality
    from xray.inference.models import INPUT_JPEG_KEY, load_model_dir, update_config
    from xray.training.card import write_model_card
    from xray.training.evaluate import evaluate_model

    try:
        check_jpeg_quality(args.input_jpeg_quality or None)
    except ValueError as exc:
        raise SystemExit(f"--input-jpeg-quality: {exc} (0 removes the step)") from exc
    old = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    training = dict(old.get("training") or {})
    # the run's own data, label map and split settings, so validation and test are the same patients with the
    # same labels; its sampling settings, so that the data facts describe how it was trained
    if "label_map" not in training:
        training["label_map"] = (old.get("data") or {}).get("label_map")
    for key in ("val_fraction", "test_fraction", "seed", "labels", "max_per_class", "label_map", "balance",
                "source_balance"):  # fmt: skip
        if key in training:
            setattr(args, key, training[key])
    if not args.data and not args.dataset:
        args.data, args.dataset = list(training.get("data") or []), list(training.get("dataset") or [])
    splits = load_splits(args)
    copy_model_files(run_dir, out)
    if args.input_jpeg_quality is not None:
        update_config(out, **{INPUT_JPEG_KEY: args.input_jpeg_quality or None})
    loaded = load_model_dir(out)
    val_px = split_pixels(args, splits.val, loaded.data_config)
    test_px = split_pixels(args, splits.test, loaded.data_config, progress=True)
    training.update(reevaluated_from=str(run_dir), input_jpeg_quality=loaded.config.get(INPUT_JPEG_KEY) or None)
    metrics = evaluate_model(
        loaded, test_px, splits.targets("test"), val_images=val_px, y_val=splits.targets("val"), out_dir=out,
        history=old.get("history"), min_sensitivity=float(training.get("min_sensitivity", args.min_sensitivity)),
        n_boot=args.bootstrap, sources=[s.data_source for s in splits.test],
        extra={"data": describe_data(args, splits), "training": training, "weights_bytes": old.get("weights_bytes")},
    )  # fmt: skip
    # the OOD features pass through the model's transform too, so the statistics are refitted for the new step
    after_training(args, load_model_dir(out), splits, out, val_px)
    write_model_card(out)
    return metrics


def push_to_hub(folder: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload a finished run folder to the Hugging Face hub, as `python -m xray publish` does (no checkpoint)."""
    from xray.inference.models import publish_model, publish_plan

    plan = publish_plan(folder, repo_id, private=private)
    logger.info("%s", plan.describe())
    return publish_model(plan, message="Upload chest X-ray classifier (train.py)")

