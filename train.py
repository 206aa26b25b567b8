r"""Train and evaluate a chest X-ray classifier; write a hub-ready model folder.

Examples:
    python train.py --data ../shared/data/kermany-224 --arch efficientnet_lite0 --init imagenet --out runs/pneu
    python train.py --data ../shared/data/kermany-224 --data ../shared/data/covid-chestxray \\
        --labels NORMAL,PNEUMONIA,COVID-19 --init local-dir:runs/pneu --out runs/covid
    python train.py --export runs/pneu --out models/pneumonia --half --data ../shared/data/kermany-224
    torchrun --standalone --nproc_per_node=4 train.py --data ../shared/data/kermany-224 --batch-size 128 --out runs/ddp

The output folder holds config.json (label_names, temperature, threshold), model.safetensors, metrics.json,
plots (roc, reliability, confusion, curves) and a README.md model card; `--push-to-hub org/name` uploads it.
Training and inference share `xray.imaging.transforms.build_transform`; the test split never chooses anything.

Under `torchrun` (WORLD_SIZE > 1) the same command trains with DistributedDataParallel: NCCL on CUDA (one GPU per
process, cuda:LOCAL_RANK), gloo on CPU. `--batch-size` stays the global batch; every rank draws the run's global
sample (the same seeded sampler as one process) and takes its own share, so each optimiser step sees the batch one
process would; time-budget and early-stopping decisions are rank 0's; rank 0 alone writes the output folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("train")

CHECKPOINT_NAME = "checkpoint.pt"


def build_arg_parser() -> argparse.ArgumentParser:
    """Command-line options of train.py."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="PATH",
        help="class-per-folder image folder (train/ test/ inside for an official test split), CSV of "
        "path,label[,group[,source]], a covid-chestxray folder, or a folder with a metadata.csv of "
        "path,label,source,patient_id (adult-cxr); repeat to combine sources",
    )
    data.add_argument("--dataset", action="append", default=[], metavar="NAME", help="Hugging Face dataset id")
    data.add_argument(
        "--labels", default=None, help="comma-separated class order (default NORMAL,PNEUMONIA[,COVID-19])"
    )
    data.add_argument(
        "--label-map",
        default=None,
        metavar="OLD=NEW[,...]",
        help="rename labels before splitting, e.g. COVID-19=PNEUMONIA for a two-class pneumonia model",
    )
    data.add_argument("--val-fraction", type=float, default=0.15, help="share of training patients for validation")
    data.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of patients held out as test for sources without their own test split",
    )
    data.add_argument("--max-per-class", type=int, default=None, help="cap images per class and split (smoke tests)")
    model = p.add_argument_group("model")
    model.add_argument("--arch", default="efficientnet_lite0", help="any timm architecture name")
    model.add_argument(
        "--freeze",
        type=int,
        default=0,
        metavar="K",
        help="freeze the stem and the first K block stages (cheaper fine-tuning on CPU)",
    )
    model.add_argument(
        "--init",
        default="imagenet",
        help="imagenet, scratch, or a model name to fine-tune (local-dir:PATH, hf-hub:org/name)",
    )
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=0.05)
    train.add_argument("--schedule", choices=("cosine", "onecycle"), default="cosine")
    train.add_argument("--warmup-steps", type=int, default=50)
    train.add_argument("--patience", type=int, default=3, help="epochs without a better validation AUC before stopping")
    train.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MIN",
        help="stop starting epochs once this many minutes would be exceeded",
    )
    train.add_argument(
        "--balance",
        choices=("loss", "sampler", "none"),
        default="loss",
        help="class imbalance: class-weighted loss or weighted sampler",
    )
    train.add_argument(
        "--source-balance",
        type=float,
        default=None,
        metavar="POWER",
        help="draw each data source in proportion to size**POWER (0.5: square-root sampling, 0: equally often) "
        "so that a small source is not drowned by a large one; default: as the data come",
    )
    train.add_argument("--rotation", type=float, default=10.0, help="max augmentation rotation (degrees)")
    train.add_argument("--translate", type=float, default=0.05, help="max augmentation shift (fraction)")
    train.add_argument("--zoom", type=float, default=0.1, help="augmentation zoom range +-")
    train.add_argument("--hflip", action="store_true", help="random horizontal flips")
    train.add_argument(
        "--intensity", type=float, default=0.1, help="max relative brightness/contrast change (0 turns it off)"
    )
    train.add_argument(
        "--input-jpeg-quality", type=int, default=None, metavar="Q",
        help="pass every resized image through JPEG at quality Q (1-95), in training and at inference (config.json "
        "input_jpeg_quality); with --reevaluate, 0 removes the step",
    )  # fmt: skip
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="output model folder")
    out.add_argument(
        "--min-sensitivity",
        type=float,
        default=0.95,
        help="threshold rule: best specificity with validation sensitivity at least this",
    )
    out.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    out.add_argument("--half", action="store_true", help="store fp16 weights (checked against fp32 probabilities)")
    out.add_argument(
        "--push-to-hub", default=None, metavar="ORG/NAME", help="upload the folder to the Hugging Face hub"
    )
    out.add_argument(
        "--reevaluate",
        default=None,
        metavar="RUN_DIR",
        help="no training: copy a finished run to --out (with --input-jpeg-quality: that input step set), refit its "
        "temperature, threshold and OOD statistics on validation and re-measure the test split, pooled and per data "
        "source (same data, label map and splits as the run)",
    )
    out.add_argument(
        "--export",
        default=None,
        metavar="RUN_DIR",
        help="no training: copy a finished model folder to --out (with --half: fp16, verified)",
    )
    return p


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch for repeatable runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- distributed (torchrun)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job; the default (world size 1) is a plain single-process run.

    Every collective helper returns its input unchanged in a single-process run, so the training loop reads the same
    either way.
    """

    device: torch.device
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether this run is one of several DistributedDataParallel processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that decides, logs and writes files."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str | None = None) -> Distributed:
        """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU); else a plain run.

        Args:
            device: --device (cpu, cuda; default cuda when available). Under torchrun a CUDA run uses
                cuda:LOCAL_RANK, one GPU per process.
        """
        default = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device=default)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if default.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise SystemExit(
                    f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} CUDA devices: start at "
                    "most one process per GPU (torchrun --nproc_per_node)."
                )
            run_device, backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(run_device)
        else:
            run_device, backend = default, "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=run_device if backend == "nccl" else None)
        return cls(device=run_device, world_size=world_size, rank=rank, local_rank=local_rank, backend=backend)

    def local_batch(self, batch_size: int) -> int:
        """Each rank's share of the global --batch-size; refuses a batch that the processes cannot share evenly."""
        if batch_size % self.world_size:
            raise SystemExit(
                f"--batch-size {batch_size} is the global batch and must be divisible by the {self.world_size} "
                f"processes (WORLD_SIZE); try {max(1, batch_size // self.world_size) * self.world_size}."
            )
        return batch_size // self.world_size

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def flag(self, value: bool) -> bool:
        """Rank 0's decision on every rank (one small tensor broadcast: cheap enough for every step)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([int(value)], device=self.device)
        torch.distributed.broadcast(tensor, src=0)
        return bool(tensor.item())

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all replicas are identical."""
        if self.enabled:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def close(self) -> None:
        """Leave the process group (a no-op in a single-process run)."""
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class ShardSampler(torch.utils.data.Sampler[int]):
    """One rank's share of the global training sample, for DistributedDataParallel.

    Every rank runs the same single-process sampler (`sampler`: the WeightedRandomSampler of the class/source
    weighting, or a RandomSampler), seeded alike and drawn in the same order, so all ranks hold the same global
    sample each epoch: exactly what one process draws, epoch after epoch, and restored with the loader generator on
    --resume. That sample is cut to whole global batches (the single-process loader drops the last partial batch
    too) and rank r takes every world_size-th index from r: the union of the ranks' k-th batches is the global
    sample's k-th batch of `batch_size`, the batch one process would train on at that step.
    """

    def __init__(self, sampler: torch.utils.data.Sampler[int], *, batch_size: int, rank: int, world_size: int):
        """Shard `sampler`'s draws for `rank` of `world_size`; `batch_size` is the global batch."""
        self.sampler, self.batch_size, self.rank, self.world_size = sampler, batch_size, rank, world_size

    def _kept(self) -> int:
        n = len(self.sampler)
        if n > self.batch_size:  # whole global batches only, as the single-process loader's drop_last
            return n // self.batch_size * self.batch_size
        return math.ceil(n / self.world_size) * self.world_size  # one short batch, padded to an equal share

    def __len__(self) -> int:
        """Indices per rank and epoch."""
        return self._kept() // self.world_size

    def __iter__(self) -> Iterator[int]:
        """This rank's indices of this epoch's global sample."""
        drawn = list(self.sampler)
        kept = self._kept()
        drawn = (drawn * math.ceil(kept / max(1, len(drawn))))[:kept]
        return iter(drawn[self.rank :: self.world_size])


def _seed_worker(worker_id: int, rank: int) -> None:
    """DataLoader worker seeding under DDP: ranks share the loader generator, so mix the rank into the seed.

    Without this every rank's worker k would draw the same augmentations (rotation, shift, ...) in the same order.
    """
    seed = (torch.initial_seed() + 1_000_003 * rank) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _distributed_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, dist: Distributed):
    """One rank's share of the global batch's (class-weighted) mean cross-entropy.

    DDP averages gradients over ranks, so each rank returns world_size * sum(w_i * loss_i) / sum over the global
    batch of w_i: the average of these is the single-process loss on the whole global batch. (The per-rank weighted
    mean would weigh ranks equally whatever their class mix.)
    """
    losses = torch.nn.functional.cross_entropy(logits, y, weight=weight, reduction="none")
    if weight is None:
        total = float(len(y) * dist.world_size)  # equal shares: the global count is known
    else:
        total = dist.sum([float(weight[y].sum())])[0]
    return losses.sum() * (dist.world_size / total)


# ---------------------------------------------------------------- data


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


# ---------------------------------------------------------------- model


def create_model(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    """A fresh model: ImageNet / scratch init of --arch, or a copy of one of our checkpoints (--init NAME)."""
    from xray.training import pretrained

    if args.init in ("imagenet", "scratch"):
        return pretrained.create_model(args.arch, num_classes, init=args.init)
    from xray.inference.models import load_model

    base = load_model(args.init)
    # loaded models are set up for inference (eval mode, possibly frozen): make every weight trainable again
    model = copy.deepcopy(base.model).to(memory_format=torch.contiguous_format).requires_grad_(True)
    # Loaded models are frozen for inference (xray.inference.models); fine-tuning trains them again.
    model.requires_grad_(True)
    if len(base.label_names) != num_classes:
        model.reset_classifier(num_classes)
    logger.info("fine-tuning %s (%s, labels %s)", args.init, base.architecture, base.label_names)
    return model


def freeze_early(model: torch.nn.Module, stages: int) -> int:
    """Freeze the stem and the first `stages` feature stages of a timm CNN; returns the frozen parameter count.

    Stages are timm's `feature_info` levels (one per output stride): for efficientnet_lite0, 3 freezes the stem
    and blocks 0-3; for resnet18, 2 freezes the stem, layer1 and layer2.

    Early layers work on the largest feature maps, so their backward pass is the costliest on a CPU and their
    ImageNet edge/texture filters transfer well.
    """
    if stages <= 0:
        return 0
    info = getattr(model, "feature_info", None)
    modules = [name for name, _ in model.named_children()]
    # timm CNNs list their stages in feature_info ('blocks.2', 'layer1', ...); everything before the cut is frozen
    # feature_info lists one module per output stride; stem entries (conv_stem/bn1/act1) are not stages
    cut_names = [f["module"] for f in info if "." in f["module"] or f["module"].startswith("layer")] if info else []
    cut = cut_names[min(stages, len(cut_names) - 1)] if cut_names else None
    frozen = 0
    for name, param in model.named_parameters():
        if cut is not None and (name.startswith(cut + ".") or _after(name, cut, modules)):
            continue
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen


def _after(param_name: str, cut: str, children: list[str]) -> bool:
    """Whether a parameter belongs at or after the module `cut` (e.g. 'blocks.2') in the model's order."""
    top, _, rest = cut.partition(".")
    head = param_name.split(".")
    if head[0] != top:
        return children.index(head[0]) > children.index(top) if head[0] in children and top in children else True
    if not rest:
        return True
    index = rest.split(".")[0]
    return len(head) > 1 and head[1].isdigit() and index.isdigit() and int(head[1]) >= int(index)


def lr_at(step: int, total: int, base_lr: float, warmup: int, schedule: str) -> float:
    """Learning rate at an optimiser step: linear warm-up, then cosine decay (or one-cycle) to zero."""
    if schedule == "onecycle":
        peak = max(1, int(0.3 * total))
        if step < peak:
            return base_lr * (0.04 + 0.96 * step / peak)
        progress = (step - peak) / max(1, total - peak)
    else:
        if step < warmup:
            return base_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _class_weights(targets: np.ndarray, num_classes: int, drawn: np.ndarray | None = None) -> torch.Tensor:
    """Inverse class frequencies (mean 1 over classes), under per-sample draw probabilities `drawn` when given."""
    counts = np.bincount(targets, weights=drawn, minlength=num_classes).astype(np.float64)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1e-12))
    return torch.tensor(weights, dtype=torch.float32)


def training_weights(
    samples: Sequence[Any], targets: np.ndarray, num_classes: int, *, balance: str, power: float | None
) -> np.ndarray | None:
    """Per-sample draw probabilities for the training sampler, or None to shuffle the data as they come.

    `power` (--source-balance) draws each data source in proportion to size**power; `balance == "sampler"`
    then also evens out the classes (within the drawn mix).
    """
    from xray.training.data import source_weights

    if power is None and balance != "sampler":
        return None
    weights = source_weights(samples, power) if power is not None else np.full(len(targets), 1 / len(targets))
    if balance == "sampler":
        weights = weights * _class_weights(targets, num_classes, weights).numpy()[targets]
    return weights / weights.sum()


@torch.inference_mode()
def validate(model: torch.nn.Module, loader, device: torch.device) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, logits and targets over a loader, in eval mode."""
    model.eval()
    losses, logits, targets = [], [], []
    for x, y in loader:
        out = model(x.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
        losses.append(torch.nn.functional.cross_entropy(out, y, reduction="sum").item())
        logits.append(out.numpy())
        targets.append(y.numpy())
    y_all = np.concatenate(targets)
    return sum(losses) / max(1, len(y_all)), np.concatenate(logits), y_all


def validate_distributed(
    model: torch.nn.Module, dataset, dist: Distributed, **loader_kw: Any
) -> tuple[float, np.ndarray, np.ndarray]:
    """`validate` over the whole validation set, shared out between the ranks; every rank gets the same result.

    Rank r scores images r, r + world_size, ...; the logits are gathered back into the dataset's order, so every
    rank computes the same metrics and takes the same early-stopping decision. `model` is the unwrapped module (a
    DDP forward would expect every rank to run the same number of batches); its buffers are rank 0's first.
    """
    dist.sync_buffers(model)
    indices = list(range(dist.rank, len(dataset), dist.world_size))
    logits, targets = np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    if indices:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=64, **loader_kw)
        _, logits, targets = validate(model, loader, dist.device)
    shares = dist.gather((logits, targets))
    num_classes = max(share[0].shape[1] for share in shares)
    all_logits = np.zeros((len(dataset), num_classes), dtype=np.float32)
    all_targets = np.zeros(len(dataset), dtype=np.int64)
    for rank, (share_logits, share_targets) in enumerate(shares):
        if len(share_targets):
            all_logits[rank :: dist.world_size] = share_logits
            all_targets[rank :: dist.world_size] = share_targets
    loss = torch.nn.functional.cross_entropy(
        torch.from_numpy(all_logits), torch.from_numpy(all_targets), reduction="sum"
    ).item()
    return loss / max(1, len(all_targets)), all_logits, all_targets


# ---------------------------------------------------------------- training


def train(
    args: argparse.Namespace, splits, out: Path, dist: Distributed | None = None
) -> tuple[torch.nn.Module, list[dict[str, float]], dict]:
    """Train with early stopping on validation AUC; returns the best model, the history and run facts.

    With `dist` from torchrun (world size > 1) the model trains under DistributedDataParallel: every rank takes
    `--batch-size // world_size` images of each global batch (`ShardSampler`), rank 0 decides the time-budget
    schedule and writes the checkpoint, and the returned model is the unwrapped module (the same on every rank).
    """
    from tqdm.auto import tqdm

    from xray.imaging.transforms import build_transform, data_config_for
    from xray.training import metrics as M
    from xray.training.data import ImageDataset, load_pixels

    dist = dist or Distributed(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    device = dist.device
    batch_size = dist.local_batch(args.batch_size)
    num_classes = len(splits.label_names)
    model = create_model(args, num_classes)
    data_config = data_config_for(model)
    size = tuple(data_config["input_size"][1:])
    interpolation = str(data_config.get("interpolation", "bilinear"))
    logger.info("data config %s", data_config)
    t0 = time.perf_counter()
    train_px = load_pixels(splits.train, size, interpolation, progress=dist.is_main)
    val_px = load_pixels(splits.val, size, interpolation, progress=dist.is_main)
    logger.info("decoded %d + %d images in %.0f s", len(train_px), len(val_px), time.perf_counter() - t0)
    y_train, y_val = splits.targets("train"), splits.targets("val")
    train_tf = build_transform(
        data_config,
        train=True,
        rotation=args.rotation,
        translate=args.translate,
        scale=(1 - args.zoom, 1 + args.zoom),
        hflip=args.hflip,
        intensity=args.intensity,
        jpeg_quality=args.input_jpeg_quality,
    )
    eval_tf = build_transform(data_config, train=False, jpeg_quality=args.input_jpeg_quality)
    generator = torch.Generator().manual_seed(args.seed)
    train_ds = ImageDataset(train_px, y_train, train_tf)
    sampler = None
    weights = training_weights(splits.train, y_train, num_classes, balance=args.balance, power=args.source_balance)
    if weights is not None:
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(y_train), replacement=True, generator=generator)
    loader_kw = {"num_workers": args.workers, "persistent_workers": False}
    worker_init = None
    if dist.enabled:
        # every rank draws the single-process sample from the same seeded generator and keeps its own share
        sampler = ShardSampler(
            sampler or torch.utils.data.RandomSampler(train_ds, generator=generator),
            batch_size=args.batch_size, rank=dist.rank, world_size=dist.world_size,
        )  # fmt: skip
        worker_init = partial(_seed_worker, rank=dist.rank) if args.workers else None
    train_loader = torch.utils.data.DataLoader(
        train_ds,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=not dist.enabled and len(train_ds) > args.batch_size,  # ShardSampler keeps whole batches only
        generator=generator,
        worker_init_fn=worker_init,
        **loader_kw,
    )
    val_ds = ImageDataset(val_px, y_val, eval_tf)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=64, **loader_kw)
    loss_weight = None
    if args.balance == "loss":
        # class weights for the class mix the sampler actually draws (source balancing changes it)
        drawn = np.full(len(y_train), 1 / len(y_train)) if weights is None else weights / weights.sum()
        loss_weight = _class_weights(y_train, num_classes, drawn).to(device)
    criterion = torch.nn.CrossEntropyLoss(weight=loss_weight)
    frozen = freeze_early(model, args.freeze)
    if frozen:
        logger.info("froze %.2f M parameters (stem + %d stages)", frozen / 1e6, args.freeze)
    model.to(device).to(memory_format=torch.channels_last)
    net = model  # the unwrapped module: what is checkpointed, validated and returned
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=args.weight_decay
    )
    state = {
        "epoch": 0,
        "step": 0,
        "total_steps": args.epochs * len(train_loader),
        "best_auc": -1.0,
        "best_epoch": 0,
        "best_state": None,
        "history": [],
        "train_seconds": 0.0,
        "finished": False,
    }
    ckpt_path = out / CHECKPOINT_NAME
    found = dist.gather(args.resume and ckpt_path.is_file())
    if len(set(found)) > 1:
        raise SystemExit(
            f"--resume: {ckpt_path} is readable on ranks {[r for r, f in enumerate(found) if f]} only; every "
            "process loads it, so a multi-node run needs --out on a filesystem that every node shares."
        )
    if found[0]:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.update(ckpt["state"])
        rngs = ckpt.get("rank_rngs") or []
        # each rank's own augmentation streams when the checkpoint has them (same world size), else rank 0's
        own = rngs[dist.rank] if len(rngs) == dist.world_size else ckpt
        torch.set_rng_state(own["torch_rng"])
        generator.set_state(ckpt["loader_rng"])
        np.random.set_state(own["numpy_rng"])
        random.setstate(own["python_rng"])
        logger.info("resumed from %s at epoch %d (best AUC %.4f)", ckpt_path, state["epoch"], state["best_auc"])
    if dist.enabled:
        # after the resume: DDP starts every rank from rank 0's weights and buffers
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    budget_s = args.time_budget * 60 if args.time_budget else None
    bad_epochs = state["epoch"] - state["best_epoch"]
    while not state["finished"] and state["epoch"] < args.epochs:
        epoch_start = time.perf_counter()
        model.train()
        running, seen = 0.0, 0
        bar = tqdm(
            train_loader, desc=f"epoch {state['epoch'] + 1}/{args.epochs}", mininterval=5, file=sys.stderr,
            disable=not dist.is_main,
        )  # fmt: skip
        for x, y in bar:
            lr = lr_at(state["step"], state["total_steps"], args.lr, args.warmup_steps, args.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device)
            loss = _distributed_loss(model(x), y, loss_weight, dist) if dist.enabled else criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["step"] += 1
            running += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{lr:.2e}")
            if state["step"] == 2:
                timing_start = time.perf_counter()
            if budget_s and state["step"] == 12 and not args.resume:
                # fit the learning-rate schedule to the steps the time budget allows (10% kept for validation);
                # timed from step 3: the first steps (worker start-up, first allocations) run several times slower
                step_s = dist.broadcast((time.perf_counter() - timing_start) / 10)  # rank 0's timing decides
                fit = int(0.9 * budget_s / step_s)
                if fit < state["total_steps"]:
                    state["total_steps"] = max(fit, 13)
                    logger.info(
                        "%.2f s/step: the %g min budget allows %d steps (%.2f epochs)",
                        step_s,
                        args.time_budget,
                        state["total_steps"],
                        state["total_steps"] / len(train_loader),
                    )
            if state["step"] >= state["total_steps"]:
                break
            if budget_s and dist.flag(state["train_seconds"] + time.perf_counter() - epoch_start > budget_s):
                logger.info("time budget reached in epoch %d after %d steps", state["epoch"] + 1, state["step"])
                break
        running, seen = dist.sum([running, seen])  # the global batches' loss, as one process would log it
        if dist.enabled:
            val_loss, val_logits, val_y = validate_distributed(net, val_ds, dist, **loader_kw)
        else:
            val_loss, val_logits, val_y = validate(model, val_loader, device)
        val_probs = M.softmax(val_logits)
        val_auc = M.roc_auc(val_y, val_probs)["auc"] if len(val_y) else float("nan")
        val_acc = float((val_probs.argmax(1) == val_y).mean()) if len(val_y) else float("nan")
        state["epoch"] += 1
        seconds = dist.broadcast(time.perf_counter() - epoch_start)  # rank 0's clock: the same budget everywhere
        state["train_seconds"] += seconds
        record = {
            "epoch": state["epoch"],
            "train_loss": running / max(1, seen),
            "val_loss": val_loss,
            "val_auc": val_auc,
            "val_accuracy": val_acc,
            "lr": lr,
            "seconds": seconds,
        }
        state["history"].append(record)
        improved = not math.isnan(val_auc) and val_auc > state["best_auc"]
        if improved or state["best_state"] is None:
            state["best_auc"] = val_auc if not math.isnan(val_auc) else state["best_auc"]
            state["best_epoch"] = state["epoch"]
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f, val acc %.4f, %.0f s%s",
            state["epoch"],
            record["train_loss"],
            val_loss,
            val_auc,
            val_acc,
            seconds,
            " (best)" if improved else "",
        )
        stop = None
        if bad_epochs >= args.patience:
            stop = f"no better validation AUC for {args.patience} epochs"
        elif budget_s and state["train_seconds"] > budget_s:
            stop = f"time budget of {args.time_budget:g} min"
        elif state["step"] >= state["total_steps"]:
            stop = "learning-rate schedule finished"
        stop = dist.broadcast(stop)  # the same inputs on every rank already; rank 0's word makes it certain
        if stop or state["epoch"] >= args.epochs:
            state["finished"] = True
            state["stop_reason"] = stop or f"{args.epochs} epochs"
            logger.info("stopping: %s", state["stop_reason"])
        rngs = {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}
        rank_rngs = dist.gather(rngs) if dist.enabled else None
        if dist.is_main:
            checkpoint = {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": state,
                **rngs,
                "loader_rng": generator.get_state(),
                "args": vars(args),
            }
            if rank_rngs:
                checkpoint.update(rank_rngs=rank_rngs, world_size=dist.world_size)
            torch.save(checkpoint, ckpt_path)
    model = net
    model.load_state_dict(state["best_state"])
    # safetensors stores contiguous tensors only, so leave channels_last before saving
    model.cpu().eval().to(memory_format=torch.contiguous_format)
    facts = {
        "epochs_run": state["epoch"],
        "steps_run": state["step"],
        "steps_per_epoch": len(train_loader),
        "best_epoch": state["best_epoch"],
        "best_val_auc": state["best_auc"],
        "stop_reason": state.get("stop_reason"),
        "train_seconds": state["train_seconds"],
        "seconds_per_epoch": state["train_seconds"] / max(1, state["epoch"]),
        "device": f"{dist.world_size} x {device.type} (DDP, {dist.backend})" if dist.enabled else str(device),
        "threads": torch.get_num_threads(),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
    }
    return model, state["history"], facts


def _after_training(loaded, splits, out_dir: Path, val_pixels: Sequence[Any]) -> None:
    """Fit the input gate's out-of-distribution statistics (ood.npz) on this model's own features.

    Mean and covariance come from the training split, the threshold from the validation split: the test split
    plays no part (xray.trust.gate).
    """
    from xray.training.data import load_pixels
    from xray.trust.gate import MIN_OOD_ROWS, fit_model_ood

    if min(len(splits.train), len(val_pixels)) < MIN_OOD_ROWS:
        logger.warning(
            "only %d training / %d validation images: too few to fit OOD statistics; the input gate of this model "
            "will use image statistics only", len(splits.train), len(val_pixels),
        )  # fmt: skip
        return
    size = tuple(loaded.data_config["input_size"][1:])
    interpolation = str(loaded.data_config.get("interpolation", "bilinear"))
    train_pixels = load_pixels(splits.train, size, interpolation, progress=True)
    stats = fit_model_ood(loaded, train_pixels, val_pixels, out_dir, train_targets=splits.targets("train"))
    logger.info("OOD statistics written to %s (threshold %.1f)", out_dir, stats.threshold)


def finish(args: argparse.Namespace, model: torch.nn.Module, splits, history, facts: dict, out: Path) -> dict:
    """Save, evaluate (temperature/threshold on validation, metrics on test), write plots, card; push if asked."""
    from xray.inference.models import INPUT_JPEG_KEY, load_model_dir, save_model
    from xray.training.card import write_model_card
    from xray.training.data import load_pixels
    from xray.training.evaluate import evaluate_model

    labels = splits.label_names
    extra_config: dict[str, Any] = {"temperature": 1.0}
    if args.input_jpeg_quality:
        extra_config[INPUT_JPEG_KEY] = args.input_jpeg_quality
    if len(labels) == 2:
        extra_config.update(threshold=0.5, positive_label=labels[1])
    save_model(model, out, label_names=labels, extra_config=extra_config)
    loaded = load_model_dir(out)
    size = tuple(loaded.data_config["input_size"][1:])
    interpolation = str(loaded.data_config.get("interpolation", "bilinear"))
    val_px = load_pixels(splits.val, size, interpolation)
    test_px = load_pixels(splits.test, size, interpolation, progress=True)
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
    _after_training(loaded, splits, out, val_px)
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


def _copy_model_files(run_dir: Path, dest: Path) -> None:
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

    _copy_model_files(run_dir, dest)
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
    from xray.training.data import load_pixels
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
    _copy_model_files(run_dir, out)
    if args.input_jpeg_quality is not None:
        update_config(out, **{INPUT_JPEG_KEY: args.input_jpeg_quality or None})
    loaded = load_model_dir(out)
    size = tuple(loaded.data_config["input_size"][1:])
    interpolation = str(loaded.data_config.get("interpolation", "bilinear"))
    val_px = load_pixels(splits.val, size, interpolation)
    test_px = load_pixels(splits.test, size, interpolation, progress=True)
    training.update(reevaluated_from=str(run_dir), input_jpeg_quality=loaded.config.get(INPUT_JPEG_KEY) or None)
    metrics = evaluate_model(
        loaded, test_px, splits.targets("test"), val_images=val_px, y_val=splits.targets("val"), out_dir=out,
        history=old.get("history"), min_sensitivity=float(training.get("min_sensitivity", args.min_sensitivity)),
        n_boot=args.bootstrap, sources=[s.data_source for s in splits.test],
        extra={"data": describe_data(args, splits), "training": training, "weights_bytes": old.get("weights_bytes")},
    )  # fmt: skip
    # the OOD features pass through the model's transform too, so the statistics are refitted for the new step
    _after_training(load_model_dir(out), splits, out, val_px)
    write_model_card(out)
    return metrics


def push_to_hub(folder: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload a finished run folder to the Hugging Face hub, as `python -m xray publish` does (no checkpoint)."""
    from xray.inference.models import publish_model, publish_plan

    plan = publish_plan(folder, repo_id, private=private)
    logger.info("%s", plan.describe())
    return publish_model(plan, message="Upload chest X-ray classifier (train.py)")


def main(argv: Sequence[str] | None = None) -> Path:
    """Run training (or --export) and return the output folder.

    Under torchrun (WORLD_SIZE > 1) every process runs this; each trains its share, rank 0 alone writes the
    output folder (checkpoint, model files, metrics, plots, OOD statistics, card) and pushes it.
    """
    args = build_arg_parser().parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (args.reevaluate or args.export):
        raise SystemExit("--reevaluate and --export run in one process: start them with python, not torchrun.")
    dist = Distributed.from_environment(args.device)
    try:
        return _run(args, dist)
    finally:
        dist.close()


def _run(args: argparse.Namespace, dist: Distributed) -> Path:
    """`main` once the process group (if any) is up."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if dist.is_main else logging.WARNING,  # rank 0 speaks for the run
            format="%(asctime)s %(levelname)s %(name)s"
            + (f" [rank {dist.rank}/{dist.world_size}]" if dist.enabled else "")
            + ": %(message)s",
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    dist.local_batch(args.batch_size)  # refuse an uneven global batch before any data is read
    # rank 0 seeds as a single process does; the other ranks' augmentations differ (DDP copies rank 0's weights)
    seed_everything(args.seed + dist.rank)
    out = Path(args.out)
    if args.reevaluate:
        reevaluate(args, Path(args.reevaluate), out)
        return out
    if args.export:
        from xray.inference.models import load_model_dir
        from xray.training.data import load_pixels

        images: list = []
        if args.half and (args.data or args.dataset):
            splits = load_splits(args)
            loaded = load_model_dir(Path(args.export))
            images = load_pixels(
                splits.test,
                tuple(loaded.data_config["input_size"][1:]),
                str(loaded.data_config.get("interpolation", "bilinear")),
            )
        export_model(Path(args.export), out, half=args.half, images=images)
        return out
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(args)
    logger.info("splits %s", json.dumps(splits.summary()))
    if dist.enabled:
        logger.info(
            "DistributedDataParallel: %d processes (%s, %s), %d images per process of each global batch of %d",
            dist.world_size, dist.backend, dist.device, dist.local_batch(args.batch_size), args.batch_size,
        )  # fmt: skip
    model, history, facts = train(args, splits, out, dist)
    if dist.is_main:
        finish(args, model, splits, history, facts, out)
        logger.info("model folder written: %s", out)
    return out


if __name__ == "__main__":
    main()
