"""Train and evaluate the lung segmentation model on hand-drawn lung masks (`../shared/data/lung-masks`).

`python -m xray train-lungs --data ../shared/data/lung-masks --out models/lungs` (run it with `nice`):

- data: `metadata.csv` pairs of grey image and 255-is-lung mask; age group `child` (Kermany) or adult (every other
  row: ages stated, Hannover cohort without ages, a few without metadata that are almost surely adults);
- split: by `patientid`, never one patient on both sides; 20% of the adult patients and 40% of the (few) children
  go to validation, seeded;
- augmentation that keeps the anatomy: one random affine per sample (rotation +-10 degrees, scale 0.85-1.15,
  aspect 0.9-1.1, shift +-6% of the side; no flip: the heart and the left/right lung shapes stay where they are),
  brightness, contrast and gamma, blur or noise now and then;
- loss: MONAI `DiceCELoss` (Dice + binary cross-entropy on the logit), AdamW with a cosine learning rate,
  bf16 autocast on the CPU (AMX) when asked;
- each epoch writes `checkpoint.pt` (network, optimiser, scheduler, epoch, random states) in the output folder, so
  `--resume` carries on; the shipped weights are the last epoch's (no choice among epochs on the validation set).

`evaluate_folder` measures Dice and the 95th-percentile Hausdorff distance (MONAI's `compute_hausdorff_distance`,
in pixels of the image's own size) on the validation patients, per age group, for the model and for the intensity
heuristic on the same images, and the CPU latency per image.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

logger = logging.getLogger(__name__)

CHILD, ADULT = "child", "adult"
#: Share of each age group's patients held out for validation (children are few: a larger share, so that some
#: are measured at all).
VAL_FRACTION = {ADULT: 0.2, CHILD: 0.4}
#: Side images are kept at in memory before augmentation (the masks are drawn at <= 512 px).
BASE_SIDE = 256
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Pair:
    """One image with its hand-drawn lung mask.

    Attributes:
        name: the pair's name in metadata.csv.
        patient: patient id (the split unit).
        age_group: `child` or `adult`.
        grey: HxW uint8 image at its stored size.
        mask: HxW bool mask at the same size.
    """

    name: str
    patient: str
    age_group: str
    grey: np.ndarray
    mask: np.ndarray


def age_group(value: str) -> str:
    """`child` for the metadata's child rows, else `adult` (stated, Hannover cohort or almost surely adult)."""
    return CHILD if value.strip().lower() == CHILD else ADULT


def load_pairs(root: Path) -> list[Pair]:
    """Every image/mask pair listed in `root/metadata.csv`, read as grey uint8 and bool arrays."""
    pairs = []
    with (root / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            grey = cv2.imread(str(root / row["image"]), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(root / row["mask"]), cv2.IMREAD_GRAYSCALE)
            if grey is None or mask is None or grey.shape != mask.shape:
                raise ValueError(f"unreadable or mismatched pair {row['name']} under {root}")
            pairs.append(Pair(row["name"], str(row["patientid"]), age_group(row["age_group"]), grey, mask > 127))
    return pairs


def split_patients(pairs: list[Pair], *, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Train and validation pairs, disjoint by patient, `VAL_FRACTION` of each age group's patients held out."""
    rng = random.Random(seed)
    held: set[tuple[str, str]] = set()
    for group, fraction in VAL_FRACTION.items():
        patients = sorted({p.patient for p in pairs if p.age_group == group})
        rng.shuffle(patients)
        held |= {(group, patient) for patient in patients[: max(1, round(fraction * len(patients)))]}
    val = [p for p in pairs if (p.age_group, p.patient) in held]
    train = [p for p in pairs if (p.age_group, p.patient) not in held]
    if {p.patient for p in train} & {p.patient for p in val}:
        raise ValueError("a patient is on both sides of the split")
    return train, val


def augment(grey: np.ndarray, mask: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One anatomy-keeping random view of a (BASE_SIDE-square) grey image and soft mask, at side x side."""
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.85, 1.15)
    aspect = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.06, 0.06, size=2) * side
    base = grey.shape[0]
    centre = np.array([base / 2, base / 2])
    rotation = cv2.getRotationMatrix2D((0.0, 0.0), angle, 1.0)[:, :2]
    stretch = np.diag([scale * aspect, scale / aspect]) * (side / base)
    linear = stretch @ rotation
    offset = np.array([side / 2, side / 2]) + shift - linear @ centre
    matrix = np.hstack([linear, offset[:, None]]).astype(np.float32)
    image = cv2.warpAffine(grey.astype(np.float32), matrix, (side, side), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT101)  # fmt: skip
    target = cv2.warpAffine(mask.astype(np.float32), matrix, (side, side), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
    image /= 255.0
    image = np.clip(image * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1), 0, 1) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.25:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.25:
        image = image + rng.normal(0, rng.uniform(0.01, 0.04), image.shape).astype(np.float32)
    return image.astype(np.float32), target


def _base(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """A pair squeezed to BASE_SIDE x BASE_SIDE (area interpolation; the mask as a soft 0..1 map)."""
    size = (BASE_SIDE, BASE_SIDE)
    return (cv2.resize(pair.grey, size, interpolation=cv2.INTER_AREA),
            cv2.resize(pair.mask.astype(np.float32), size, interpolation=cv2.INTER_AREA))  # fmt: skip


def _batch(items: list[tuple[np.ndarray, np.ndarray]], side: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    from xray.inference.segmentation import prepare

    images, targets = [], []
    for grey, mask in items:
        image, target = augment(grey, mask, side, rng)
        images.append(prepare(image, side))
        targets.append(target)
    return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(targets))[:, None]


def _val_dice(model: torch.nn.Module, val: list[Pair], side: int) -> float:
    """Mean Dice at side x side on the validation pairs (a progress figure for the log only, never a choice)."""
    from xray.inference.segmentation import prepare

    model.eval()
    scores = []
    with torch.inference_mode():
        for pair in val:
            grey, mask = _base(pair)
            logits = model(torch.from_numpy(prepare(grey, side))[None, None])[0, 0].float().numpy()
            target = cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA) > 0.5
            pred = logits > 0
            scores.append(2 * (pred & target).sum() / max(1, pred.sum() + target.sum()))
    model.train()
    return float(np.mean(scores))


def train(data: Path, out: Path, *, epochs: int = 60, batch_size: int = 8, side: int = 192, lr: float = 3e-3,
          seed: int = 0, bf16: bool = True, resume: bool = False, limit: int | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train the lung U-Net and save it to `out` (config.json, model.safetensors); see the module docstring.

    Args:
        data: the lung-masks folder.
        out: output folder (also holds the per-epoch checkpoint).
        epochs: passes over the training pairs.
        batch_size: pairs per step.
        side: input side of the network.
        lr: peak AdamW learning rate (cosine decay to 1% of it).
        seed: seed of the split, the initialisation and the augmentation.
        bf16: bf16 autocast on the CPU (weights and optimiser stay float32).
        resume: carry on from `out/checkpoint.pt` when present.
        limit: train on at most this many pairs (tests).
        stop_after: end this call after this many epochs (the run carries on with `resume`; the schedule stays
            the one of `epochs`).

    Returns:
        A summary: split counts, epochs, wall-clock seconds, the last epoch's loss.
    """
    from monai.losses import DiceCELoss

    from xray.inference.segmentation import DEFAULT_NETWORK, build_network, save_segmenter

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    pairs = load_pairs(data)
    train_pairs, val_pairs = split_patients(pairs, seed=seed)
    if limit:
        train_pairs, val_pairs = train_pairs[:limit], val_pairs[: max(1, limit // 4)]
    bases = [_base(p) for p in train_pairs]
    model = build_network(DEFAULT_NETWORK)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(bases) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                    pct_start=0.1, final_div_factor=100)  # fmt: skip
    loss_fn = DiceCELoss(sigmoid=True)
    rng = np.random.default_rng(seed)
    start_epoch, elapsed = 0, 0.0
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, elapsed = state["epoch"], state["elapsed"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed at epoch %d", start_epoch)
    counts = {
        "train_pairs": len(train_pairs), "val_pairs": len(val_pairs),
        "train_patients": len({p.patient for p in train_pairs}), "val_patients": len({p.patient for p in val_pairs}),
        "val_children": sum(p.age_group == CHILD for p in val_pairs),
        "train_children": sum(p.age_group == CHILD for p in train_pairs),
    }  # fmt: skip
    logger.info("split: %s", counts)
    model.train()
    last_loss = float("nan")
    last_epoch = epochs if stop_after is None else min(epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, last_epoch):
        started = time.perf_counter()
        order = rng.permutation(len(bases))
        losses = []
        for step in range(steps_per_epoch):
            chosen = [bases[i] for i in order[step * batch_size:(step + 1) * batch_size]]
            images, targets = _batch(chosen, side, rng)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(images)
            loss = loss_fn(logits.float(), targets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
        last_loss = float(np.mean(losses))
        elapsed += time.perf_counter() - started
        dice = _val_dice(model, val_pairs, side)
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "elapsed": elapsed,
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, checkpoint)  # fmt: skip
        logger.info("epoch %d/%d loss %.4f val mean Dice (%d px) %.4f  %.0f s so far", epoch + 1, epochs,
                    last_loss, side, dice, elapsed)  # fmt: skip
    training = {**counts, "epochs": last_epoch, "scheduled_epochs": epochs, "batch_size": batch_size, "lr": lr,
                "seed": seed, "bf16": bf16,
                "train_seconds": round(elapsed, 1), "final_loss": round(last_loss, 4),
                "threads": torch.get_num_threads()}  # fmt: skip
    save_segmenter(model, out, input_side=side, extra_config={"training": training})
    return training


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two bool masks (1.0 when both are empty)."""
    total = int(pred.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * float((pred & target).sum()) / total


def hausdorff95(pred: np.ndarray, target: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance in pixels (MONAI), between the masks' surfaces."""
    from monai.metrics import compute_hausdorff_distance

    if not pred.any() or not target.any():
        return float("inf")
    p = torch.from_numpy(pred)[None, None].float()
    t = torch.from_numpy(target)[None, None].float()
    return float(compute_hausdorff_distance(p, t, percentile=95, include_background=True)[0, 0])


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    return {"n": int(arr.size), "median": round(float(np.median(arr)), 4),
            "p10": round(float(np.percentile(arr, 10)), 4), "p90": round(float(np.percentile(arr, 90)), 4),
            "min": round(float(arr.min()), 4), "max": round(float(finite.max()), 4) if finite.size else None,
            "mean": round(float(finite.mean()), 4) if finite.size else None}  # fmt: skip


def evaluate_pairs(pairs: list[Pair], segmenter: Any) -> dict[str, Any]:
    """Dice / HD95 of the model and of the heuristic on the pairs, per age group, with per-image rows.

    Each mask is made by `xray.trust.lungs` exactly as the app makes it (model or heuristic), at the image's own
    size, and compared with the hand-drawn mask.
    """
    from xray.trust import lungs

    rows = []
    seconds, cpu_seconds = [], []
    for pair in pairs:
        rgb = np.repeat(pair.grey[..., None], 3, axis=2)
        started, cpu_started = time.perf_counter(), time.process_time()
        model_mask = lungs.model_lung_fields(rgb, segmenter).mask
        seconds.append(time.perf_counter() - started)
        # CPU time of every thread: less sensitive than wall time to other jobs on a shared machine
        cpu_seconds.append(time.process_time() - cpu_started)
        heuristic_mask = lungs.heuristic_lung_fields(rgb).mask
        rows.append({
            "name": pair.name, "patient": pair.patient, "age_group": pair.age_group,
            "dice_model": round(dice(model_mask, pair.mask), 4),
            "dice_heuristic": round(dice(heuristic_mask, pair.mask), 4),
            "hd95_model": round(hausdorff95(model_mask, pair.mask), 2),
            "hd95_heuristic": round(hausdorff95(heuristic_mask, pair.mask), 2),
            "long_side": int(max(pair.grey.shape)),
        })  # fmt: skip
    groups: dict[str, Any] = {}
    for group in (ADULT, CHILD):
        chosen = [r for r in rows if r["age_group"] == group]
        if not chosen:
            continue
        groups[group] = {
            "images": len(chosen), "patients": len({r["patient"] for r in chosen}),
            **{f"{metric}_{who}": _summary([r[f"{metric}_{who}"] for r in chosen])
               for metric in ("dice", "hd95") for who in ("model", "heuristic")},
            "dice_below_0.7_model": sum(r["dice_model"] < 0.7 for r in chosen),
            "dice_below_0.7_heuristic": sum(r["dice_heuristic"] < 0.7 for r in chosen),
        }  # fmt: skip
    runtime = ("ONNX Runtime, 1 thread" if getattr(segmenter, "accelerated", False)
               else f"torch, {torch.get_num_threads()} threads")  # fmt: skip
    return {"groups": groups, "rows": rows, "runtime": runtime,
            "latency_ms_per_image_at_own_size": _summary([1000 * s for s in seconds]),
            "cpu_ms_per_image_at_own_size": _summary([1000 * s for s in cpu_seconds])}  # fmt: skip


def evaluate_folder(model_name: str, data: Path, *, seed: int = 0) -> dict[str, Any]:
    """`evaluate_pairs` on the validation patients of `data` (the same split as training with this seed)."""
    from xray.inference.segmentation import load_segmenter

    segmenter = load_segmenter(model_name)
    _, val = split_patients(load_pairs(data), seed=seed)
    return evaluate_pairs(val, segmenter)


def _row(label: str, figures: dict[str, Any], metric: str, digits: int) -> str:
    model, heuristic = figures[f"{metric}_model"], figures[f"{metric}_heuristic"]
    return (f"| {label} | {model['median']:.{digits}f} ({model['p10']:.{digits}f}-{model['p90']:.{digits}f}) | "
            f"{heuristic['median']:.{digits}f} ({heuristic['p10']:.{digits}f}-{heuristic['p90']:.{digits}f}) |")


def card_text(config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The model card (README.md) of a lung segmentation folder, from its config.json and metrics.json."""
    training = config.get("training", {})
    network = config.get("network", {})
    lines = [
        "---", "license: apache-2.0", "library_name: monai", "pipeline_tag: image-segmentation",
        "tags: [chest-x-ray, medical-imaging, lung-segmentation, monai]", "---", "",
        "# Lung fields of frontal chest X-rays (MONAI U-Net)", "",
        "**Decision support only, not a diagnostic device.** This model outlines the lung fields so that the app can "
        "say how much of a classifier's Grad-CAM heat lies over the lungs and the chest (the heat check). It does "
        "not diagnose anything and has not been cleared by any regulator.", "",
        "## Model", "",
        f"- `{config.get('architecture')}` (2-D, 1 grey channel in, 1 lung logit out), channels "
        f"{network.get('channels')}, strides {network.get('strides')}, {network.get('num_res_units')} residual units "
        f"per level; {metrics.get('parameters', 0) / 1e6:.2f} M parameters, float32 safetensors.",
        f"- Input: {config.get('input')}; input side {config.get('input_side')} px. Output: lung probability; the "
        f"app thresholds it at {config.get('threshold')} on its own grid (logits resized bilinearly), keeps "
        "components of at least 10% of the largest one and fills each outline (`xray.trust.lungs`).",
        f"- Training (`python -m xray train-lungs`, `xray/training/lungs.py`): {training.get('epochs')} epochs, batch "
        f"{training.get('batch_size')}, AdamW one-cycle (peak lr {training.get('lr')}), MONAI DiceCELoss (Dice + "
        f"binary cross-entropy), bf16 autocast {'on' if training.get('bf16') else 'off'}, seed {training.get('seed')}; "
        "augmentation: rotation +-10 deg, scale 0.85-1.15, aspect 0.9-1.1, shift +-6%, brightness, contrast, gamma, "
        "occasional blur or noise; no flips. The last epoch's weights are shipped (no choice among epochs on "
        f"validation). {training.get('train_seconds', 0) / 60:.1f} min of training on "
        f"{training.get('threads')} shared CPU threads.", "",
        "## Data and licences", "",
        "- Lung masks: V7 Labs COVID-19 X-ray dataset (github v7labs/covid-19-xray-dataset, June 2020), hand-drawn "
        "lung polygons, **CC BY 4.0, credit V7 Labs**. They include the lung behind the heart and down to the "
        "posterior costophrenic angle (larger than JSRT/SCR-style masks); devices over the lung count as lung.",
        "- Adult images: COVID-19 image data collection (Cohen et al., arXiv:2003.11597, github "
        "ieee8023/covid-chestxray-dataset), **each image under its own licence**: CC BY / CC BY-SA for many, but "
        "some are non-commercial (CC BY-NC, CC BY-NC-ND, CC BY-NC-SA) or have no stated licence. Check the "
        "collection's metadata before any use beyond research.",
        "- Child images: 14 from Kermany, Zhang, Goldbaum (2018), Mendeley Data v2 / Cell 2018, **CC BY 4.0** "
        "(official validation images, the same as `kermany-val-fullres`), and one 12-year-old from the COVID-19 "
        "collection (licence not stated).",
        f"- Split by patient (`patientid`, seeded): train {training.get('train_pairs')} images of "
        f"{training.get('train_patients')} patients ({training.get('train_children')} children), validation "
        f"{training.get('val_pairs')} images of {training.get('val_patients')} patients "
        f"({training.get('val_children')} children). No separate test set: the validation figures below are the "
        "only held-out figures, and they were not used to choose anything.", "",
        "## Validation (patients never trained on), against the intensity heuristic on the same images", "",
        "Dice and Hausdorff-95 (MONAI `compute_hausdorff_distance`, pixels at the image's own size, long side "
        "<= 512 px) against the hand-drawn masks; median (p10-p90).", "",
        "| group | Dice, model | Dice, heuristic |", "|---|---|---|",
    ]
    groups = metrics.get("groups", {})
    for group, figures in groups.items():
        lines.append(_row(f"{group} ({figures['images']} images, {figures['patients']} patients)", figures, "dice", 3))
    lines += ["", "| group | HD95 px, model | HD95 px, heuristic |", "|---|---|---|"]
    for group, figures in groups.items():
        lines.append(_row(f"{group} ({figures['images']} images)", figures, "hd95", 1))
    lines += ["", "| group | lowest Dice, model / heuristic | images with Dice < 0.7, model / heuristic |",
              "|---|---|---|"]
    for group, figures in groups.items():
        lines.append(f"| {group} | {figures['dice_model']['min']:.3f} / {figures['dice_heuristic']['min']:.3f} | "
                     f"{figures['dice_below_0.7_model']} / {figures['dice_below_0.7_heuristic']} |")
    if CHILD in groups:
        total = int(training.get("val_children", 0)) + int(training.get("train_children", 0))
        lines += ["", f"Only {groups[CHILD]['images']} children are in validation ({total} child images in all): "
                  "the children's figures are indicative, not a measurement to rely on. The adults are 344 images "
                  "(ages stated, the Hannover cohort without ages, and a few without metadata that are almost surely "
                  "adults)."]
    latency, cpu = metrics.get("latency_ms_per_image_at_own_size"), metrics.get("cpu_ms_per_image_at_own_size")
    if latency and cpu:
        lines += ["", f"Latency per image on the CPU (model, resizing and clean-up, masks at the image's own size of "
                  f"at most 512 px, {metrics.get('runtime')}, on a 2-core machine shared with other jobs, load "
                  f"average {metrics.get('load_average', 0):.1f}): wall median {latency['median']:.1f} ms "
                  f"(p90 {latency['p90']:.1f}), CPU time of all "
                  f"threads median {cpu['median']:.1f} ms (p90 {cpu['p90']:.1f}). In the app the model runs once per "
                  "upload on the heat check's 512-px grid: see the request-path benchmark (`python -m "
                  "xray.bench_request`) in the project README."]
    for line in metrics.get("notes", []):
        lines += ["", line]
    lines += ["", "## Limits", "",
              "Frontal (PA/AP) adult and paediatric chest X-rays only; on lateral views, CT slices or photographs the "
              "mask is meaningless, which is why the app's input gate runs first. Trained on few (295) images, "
              "mostly COVID-19 and other pneumonias from publications; unusual anatomy, large effusions, "
              "pneumothorax or devices may be outlined wrongly.", ""]
    return "\n".join(lines)


def run_train_lungs_command(args: argparse.Namespace) -> int:
    """`python -m xray train-lungs`: train, then evaluate on the validation patients and write metrics.json."""
    if args.threads:
        torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    if not args.eval_only:
        summary = train(data, out, epochs=args.epochs, batch_size=args.batch_size, side=args.side, lr=args.lr,
                        seed=args.seed, bf16=not args.no_bf16, resume=args.resume, limit=args.limit,
                        stop_after=args.stop_after)  # fmt: skip
        logger.info("trained: %s", summary)
    metrics = evaluate_folder(f"local-dir:{out}", data, seed=args.seed)
    previous = out / "metrics.json"
    if previous.is_file():  # notes added after training (e.g. the heat-check comparison) are kept
        metrics["notes"] = json.loads(previous.read_text(encoding="utf-8")).get("notes", [])
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    from xray.inference.segmentation import build_network

    metrics["load_average"] = round(os.getloadavg()[0], 2)
    metrics["parameters"] = sum(p.numel() for p in build_network(config.get("network")).parameters())
    metrics["training"] = config.get("training", {})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(card_text(config, metrics), encoding="utf-8")
    for group, figures in metrics["groups"].items():
        logger.info("%s: %d images, Dice median model %.4f heuristic %.4f; below 0.7: %d vs %d", group,
                    figures["images"], figures["dice_model"]["median"], figures["dice_heuristic"]["median"],
                    figures["dice_below_0.7_model"], figures["dice_below_0.7_heuristic"])  # fmt: skip
    return 0
