r"""Train and evaluate a chest X-ray classifier; write a hub-ready model folder.

Examples:
    python train.py --data ../shared/data/kermany-224 --arch efficientnet_lite0 --init imagenet --out runs/pneu
    python train.py --data ../shared/data/kermany-224 --data ../shared/data/covid-chestxray \\
        --labels NORMAL,PNEUMONIA,COVID-19 --init local-dir:runs/pneu --out runs/covid
    python train.py --export runs/pneu --out models/pneumonia --half --data ../shared/data/kermany-224
    torchrun --standalone --nproc_per_node=4 train.py --data ../shared/data/kermany-224 --batch-size 128 --out runs/ddp

The output folder holds config.json (label_names, temperature, threshold), model.safetensors, metrics.json,
plots (roc, reliability, confusion, curves) and a README.md model card; `--push-to-hub org/name` uploads it.
Training and inference share the preprocessing of `xray.imaging.transforms` (the model's data config); the test
split never chooses anything. This file is the command line: the loop, the pixel cache, checkpoints, torchrun
support and distillation live in `xray.training` (loop, cache, augment, checkpoint, distributed, distill, run).

Speed (`python -m xray.bench --train`): each image is decoded once into an on-disk cache of uint8 tensors at the
training resolution (`--cache-dir`), augmented in batches as tensors, and trained under bf16 autocast with fp32
weights where that is faster for the model on this machine (`--precision auto` times both on a copy at the start);
validation and the shipped metrics are fp32.
Every epoch ends with OUT/checkpoint.pt; `--resume` continues from it with the same state.

Under `torchrun` (WORLD_SIZE > 1) the same command trains with DistributedDataParallel: NCCL on CUDA (one GPU per
process, cuda:LOCAL_RANK), gloo on CPU. `--batch-size` stays the global batch; every rank draws the run's global
sample (the same seeded sampler as one process) and takes its own share, so each optimiser step sees the batch one
process would; time-budget and early-stopping decisions are rank 0's; rank 0 alone writes the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from xray.training.checkpoint import CHECKPOINT_NAME
from xray.training.distributed import Distributed, ShardSampler
from xray.training.loop import PRECISIONS, class_weights, freeze_early, lr_at, train
from xray.training.run import export_model, finish, load_splits, reevaluate

logger = logging.getLogger("train")

# what tests and scripts reach through train.py; the code lives in xray.training
__all__ = ["CHECKPOINT_NAME", "Distributed", "ShardSampler", "build_arg_parser", "class_weights", "export_model",
           "freeze_early", "lr_at", "main", "train"]


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
    train.add_argument(
        "--pause-after", type=int, default=None, metavar="N",
        help="stop this process after N epochs, leaving OUT/checkpoint.pt unfinished for --resume (no evaluation)",
    )  # fmt: skip
    train.add_argument(
        "--precision", choices=PRECISIONS, default="auto",
        help="training arithmetic: bf16 autocast (fp32 weights) or fp32; auto: where the hardware has bf16, the "
        "faster of the two for this model, timed on a copy at the start of the run (bf16 only when >= 5%% faster)",
    )  # fmt: skip
    train.add_argument(
        "--cache-dir", default=None, metavar="DIR",
        help="pixel cache folder (default: XRAY_CACHE_DIR/pixels or ~/.cache/xray/pixels)",
    )  # fmt: skip
    train.add_argument("--no-pixel-cache", action="store_true", help="decode into memory only, store no cache file")
    train.add_argument(
        "--teacher", default=None, metavar="MODEL",
        help="distil from this trained model (local-dir:PATH, hf-hub:org/name, bundled name); its logits over the "
        "training set are computed once and cached",
    )  # fmt: skip
    train.add_argument("--distill-alpha", type=float, default=0.5, help="weight of the teacher's soft targets")
    train.add_argument("--distill-temperature", type=float, default=2.0, help="distillation softening temperature")
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
    if facts.get("paused"):
        logger.info("paused after epoch %d: continue with the same command and --resume", facts["epochs_run"])
        return out
    if dist.is_main:
        finish(args, model, splits, history, facts, out)
        logger.info("model folder written: %s", out)
    return out


if __name__ == "__main__":
    main()
