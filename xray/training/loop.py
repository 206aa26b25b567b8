"""The training loop: data from the pixel cache, bf16 steps, fp32 validation, early stopping, checkpoints.

`train` reads in the order a run happens:
1. `prepare_data`: the training and validation pixels from the cache (`xray.training.cache`, decoded once per data
   set and resolution), drawn by the class/source-weighted sampler (`training_weights`), sharded between torchrun
   ranks (`xray.training.distributed`), each batch augmented as a tensor (`xray.training.augment`);
2. `make_loss`: class-weighted cross-entropy, the global batch's under torchrun, or distillation from a teacher's
   cached logits (`xray.training.distill`);
3. `run_epoch`: optimiser steps with the learning-rate schedule (`lr_at`), under bf16 autocast when that is
   faster for this model on this machine (`choose_precision`; the weights and the optimiser stay fp32), with the
   time budget;
4. `end_epoch`: fp32 validation (`validate`), the best weights, early stopping, and the checkpoint written after
   every epoch (`xray.training.checkpoint`, read back by `--resume`).
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xray.training.checkpoint import CHECKPOINT_NAME, new_state, resume_checkpoint, save_checkpoint
from xray.training.distributed import Distributed, ShardSampler, distributed_loss, seed_worker

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix arithmetic is native here (CPU: AVX-512 BF16 / AMX via oneDNN; CUDA: Ampere or later)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(requested: str, device: torch.device) -> str:
    """`fp32`, `bf16` or `auto` (to be measured by `probe_precision`) for --precision.

    `auto` stays `auto` only where the hardware computes bf16 natively; elsewhere bf16 is emulated and slower, so
    `auto` is fp32 at once.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "auto" and not bf16_supported(device):
        return "fp32"
    return requested


def probe_precision(model: torch.nn.Module, pixels: torch.Tensor, y: torch.Tensor, data_config: dict[str, Any], *,
                    device: torch.device, steps: int = 2, rounds: int = 2) -> dict[str, float]:  # fmt: skip
    """Training images/s of this model on this machine in fp32 and in bf16 autocast, measured on a copy.

    Whether bf16 pays depends on the architecture (depthwise convolutions gain little) and on what else the
    machine is running, so `--precision auto` measures it at the start of a run: each precision trains a copy
    of the model (with its own optimiser) for one untimed and `steps` timed steps on one batch, alternately, for
    `rounds` rounds; the best round counts (the least disturbed by other processes). The model, the optimiser and
    every random stream of the run are left as they were.

    Returns:
        {"fp32": images/s, "bf16": images/s}.
    """
    x = network_input(pixels, device, data_config)
    criterion = torch.nn.CrossEntropyLoss()
    speeds: dict[str, float] = {}
    rng = torch.get_rng_state()  # dropout and stochastic depth draw from it: the run's stream stays untouched
    for _ in range(rounds):
        for precision in ("fp32", "bf16"):
            trial = copy.deepcopy(model).train()
            optimizer = torch.optim.AdamW([p for p in trial.parameters() if p.requires_grad], lr=1e-6)
            train_step(trial, optimizer, x, y, criterion, precision=precision)
            start = time.perf_counter()
            for _ in range(steps):
                train_step(trial, optimizer, x, y, criterion, precision=precision)
            speed = steps * len(y) / (time.perf_counter() - start)
            speeds[precision] = max(speeds.get(precision, 0.0), speed)
    torch.set_rng_state(rng)
    return speeds


def network_input(pixels: torch.Tensor, device: torch.device, data_config: dict[str, Any]) -> torch.Tensor:
    """A (B, C, H, W) batch of 0..255 pixels (uint8, or augmented floats) as the network's input.

    On `device`, normalised by `normalise_batch` (the evaluation transform's arithmetic), channels_last.
    """
    from xray.imaging.transforms import normalise_batch

    x = normalise_batch(pixels.to(device, non_blocking=True), data_config)
    return x.contiguous(memory_format=torch.channels_last)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    precision: str = "fp32",
) -> torch.Tensor:
    """One optimiser step on a normalised batch; returns the (detached) loss.

    With `precision` bf16 the forward and backward passes run under autocast; the parameters, their gradients
    and AdamW's moments stay fp32 (bf16 has fp32's exponent range, so no loss scaling is needed). The loss is
    computed in fp32 from the logits.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()



# ---------------------------------------------------------------- model, schedule, sampling, validation


def create_model(args: Any, num_classes: int) -> torch.nn.Module:
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


def class_weights(targets: np.ndarray, num_classes: int, drawn: np.ndarray | None = None) -> torch.Tensor:
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
        weights = weights * class_weights(targets, num_classes, weights).numpy()[targets]
    return weights / weights.sum()


@torch.inference_mode()
def validate(
    model: torch.nn.Module, loader, device: torch.device, data_config: dict[str, Any]
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, logits and targets over a loader of uint8 batches, in eval mode and fp32.

    fp32 whatever the training precision: the app serves fp32, so early stopping judges what will be shipped.
    """
    model.eval()
    losses, logits, targets = [], [], []
    for x, y, _ in loader:
        out = model(network_input(x, device, data_config)).float().cpu()
        losses.append(torch.nn.functional.cross_entropy(out, y, reduction="sum").item())
        logits.append(out.numpy())
        targets.append(y.numpy())
    y_all = np.concatenate(targets)
    return sum(losses) / max(1, len(y_all)), np.concatenate(logits), y_all


def validate_distributed(
    model: torch.nn.Module, dataset, dist: Distributed, data_config: dict[str, Any], **loader_kw: Any
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
        _, logits, targets = validate(model, loader, dist.device, data_config)
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




# ---------------------------------------------------------------- the loop


@dataclass
class TrainingData:
    """What `prepare_data` sets up for the loop."""

    train_ds: Any
    val_ds: Any
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    loader_kw: dict[str, Any]
    generator: torch.Generator
    weights: np.ndarray | None
    y_train: np.ndarray
    train_pixels: Any
    val_pixels: Any
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None


def load_cached_splits(args: Any, samples: Sequence[Sequence[Any]], data_config: dict[str, Any],
                       dist: Distributed) -> list[Any]:  # fmt: skip
    """Each sample list's `PixelCache` at the model's input size, after the input JPEG step if any.

    Rank 0 decodes (or reads), then the other ranks read; `--no-pixel-cache` decodes into memory, storing nothing.
    """
    from xray.training.cache import cached_pixels

    size = tuple(data_config["input_size"][1:])
    interpolation = str(data_config.get("interpolation", "bilinear"))
    # the input JPEG step is deterministic and comes before augmentation: applied once, in the cache
    kw = {"cache_dir": Path(args.cache_dir) if getattr(args, "cache_dir", None) else None,
          "store": not getattr(args, "no_pixel_cache", False), "jpeg_quality": args.input_jpeg_quality}  # fmt: skip
    out: list[Any] = []
    if dist.is_main:
        out = [cached_pixels(s, size, interpolation, progress=True, **kw) for s in samples]
    dist.broadcast(None)  # the other ranks wait for rank 0's cache files, then read them (a hit)
    if not dist.is_main:
        out = [cached_pixels(s, size, interpolation, **kw) for s in samples]
    return out


def prepare_data(args: Any, splits, data_config: dict[str, Any], dist: Distributed) -> TrainingData:
    """Pixels, augmentation, sampler and loaders of a run (see the module docstring, step 1)."""
    from xray.training.augment import CachedImages, build_augment

    batch_size = dist.local_batch(args.batch_size)
    t0 = time.perf_counter()
    train_px, val_px = load_cached_splits(args, [splits.train, splits.val], data_config, dist)
    logger.info("pixels of %d + %d images ready in %.1f s (%s)", len(train_px), len(val_px),
                time.perf_counter() - t0, "cache hit" if train_px.hit and val_px.hit else "decoded")  # fmt: skip
    y_train, y_val = splits.targets("train"), splits.targets("val")
    augment = build_augment(rotation=args.rotation, translate=args.translate, zoom=args.zoom, hflip=args.hflip,
                            intensity=args.intensity)  # fmt: skip
    train_ds = CachedImages(train_px.pixels, y_train)
    val_ds = CachedImages(val_px.pixels, y_val)
    generator = torch.Generator().manual_seed(args.seed)
    num_classes = len(splits.label_names)
    weights = training_weights(splits.train, y_train, num_classes, balance=args.balance, power=args.source_balance)
    sampler = None
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
        worker_init = partial(seed_worker, rank=dist.rank) if args.workers else None
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
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=64, **loader_kw)
    return TrainingData(train_ds, val_ds, train_loader, val_loader, loader_kw, generator, weights, y_train,
                        train_px, val_px, augment)  # fmt: skip


def make_loss(args: Any, data: TrainingData, num_classes: int, dist: Distributed, device: torch.device,
              teacher: np.ndarray | None = None) -> Callable[..., torch.Tensor]:  # fmt: skip
    """The loss of a batch, `loss(logits, y, index)` (module docstring, step 2)."""
    loss_weight = None
    if args.balance == "loss":
        # class weights for the class mix the sampler actually draws (source balancing changes it)
        drawn = np.full(len(data.y_train), 1 / len(data.y_train)) if data.weights is None else data.weights
        loss_weight = class_weights(data.y_train, num_classes, drawn / drawn.sum()).to(device)
    if dist.enabled:
        hard = partial(distributed_loss, weight=loss_weight, dist=dist)
    else:
        criterion = torch.nn.CrossEntropyLoss(weight=loss_weight)
        hard = criterion
    if teacher is None:
        return lambda logits, y, index: hard(logits, y)
    from xray.training.distill import distillation_loss

    targets = torch.from_numpy(teacher).to(device)
    return lambda logits, y, index: distillation_loss(
        logits, y, targets[index.to(device)], hard_loss=hard, alpha=args.distill_alpha,
        temperature=args.distill_temperature,
    )  # fmt: skip


def run_epoch(args: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: TrainingData,
              loss_fn: Callable[..., torch.Tensor], state: dict[str, Any], *, data_config: dict[str, Any],
              precision: str, dist: Distributed, budget_s: float | None, epoch_start: float,
              ) -> tuple[float, int, float]:  # fmt: skip
    """One epoch of optimiser steps (module docstring, step 3); returns (loss sum, images seen, last lr)."""
    from tqdm.auto import tqdm

    device = dist.device
    model.train()
    running, seen, lr = 0.0, 0, args.lr
    timing_start = time.perf_counter()
    bar = tqdm(data.train_loader, desc=f"epoch {state['epoch'] + 1}/{args.epochs}", mininterval=5, file=sys.stderr,
               disable=not dist.is_main)  # fmt: skip
    for pixels, y, index in bar:
        lr = lr_at(state["step"], state["total_steps"], args.lr, args.warmup_steps, args.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        y = y.to(device)
        if data.augment is not None:
            pixels = data.augment(pixels)
        loss = train_step(model, optimizer, network_input(pixels, device, data_config), y,
                          partial(loss_fn, index=index), precision=precision)  # fmt: skip
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
                logger.info("%.2f s/step: the %g min budget allows %d steps (%.2f epochs)", step_s,
                            args.time_budget, state["total_steps"], state["total_steps"] / len(data.train_loader))
        if state["step"] >= state["total_steps"]:
            break
        if budget_s and dist.flag(state["train_seconds"] + time.perf_counter() - epoch_start > budget_s):
            logger.info("time budget reached in epoch %d after %d steps", state["epoch"] + 1, state["step"])
            break
    running, seen = dist.sum([running, seen])  # the global batches' loss, as one process would log it
    return running, int(seen), lr


def end_epoch(args: Any, net: torch.nn.Module, model: torch.nn.Module, data: TrainingData,
              state: dict[str, Any], *, running: float, seen: int, lr: float, epoch_start: float,
              data_config: dict[str, Any], dist: Distributed, budget_s: float | None) -> None:  # fmt: skip
    """Validate in fp32, keep the best weights, decide whether to stop (module docstring, step 4)."""
    from xray.training import metrics as M

    if dist.enabled:
        val_loss, val_logits, val_y = validate_distributed(net, data.val_ds, dist, data_config, **data.loader_kw)
    else:
        val_loss, val_logits, val_y = validate(model, data.val_loader, dist.device, data_config)
    val_probs = M.softmax(val_logits)
    val_auc = M.roc_auc(val_y, val_probs)["auc"] if len(val_y) else float("nan")
    val_acc = float((val_probs.argmax(1) == val_y).mean()) if len(val_y) else float("nan")
    state["epoch"] += 1
    seconds = dist.broadcast(time.perf_counter() - epoch_start)  # rank 0's clock: the same budget everywhere
    state["train_seconds"] += seconds
    record = {"epoch": state["epoch"], "train_loss": running / max(1, seen), "val_loss": val_loss,
              "val_auc": val_auc, "val_accuracy": val_acc, "lr": lr, "seconds": seconds}  # fmt: skip
    state["history"].append(record)
    improved = not math.isnan(val_auc) and val_auc > state["best_auc"]
    if improved or state["best_state"] is None:
        state["best_auc"] = val_auc if not math.isnan(val_auc) else state["best_auc"]
        state["best_epoch"] = state["epoch"]
        state["best_state"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    logger.info("epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f, val acc %.4f, %.0f s, %.1f img/s%s",
                state["epoch"], record["train_loss"], val_loss, val_auc, val_acc, seconds, seen / max(seconds, 1e-9),
                " (best)" if improved else "")  # fmt: skip
    stop = None
    if state["epoch"] - state["best_epoch"] >= args.patience:
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


#: How much faster bf16 autocast must train than fp32 for `--precision auto` to take it: a smaller gain is within the
#: probe's noise (EfficientNet-Lite2 measured 9.21 against 9.20 img/s), and fp32 is what the app serves in.
BF16_MIN_GAIN = 1.05


def faster_precision(probe: dict[str, float]) -> str:
    """`bf16` when the probe's bf16 images/s beat fp32's by at least `BF16_MIN_GAIN`, else `fp32`."""
    return "bf16" if probe["bf16"] >= BF16_MIN_GAIN * probe["fp32"] else "fp32"


def choose_precision(args: Any, model: torch.nn.Module, data: TrainingData, data_config: dict[str, Any],
                     state: dict[str, Any], dist: Distributed) -> str:  # fmt: skip
    """--precision of this run: as asked, or for `auto` the faster one measured on rank 0 (`probe_precision`).

    The choice is kept in the loop state, so a resumed run continues in the precision it started with.
    """
    if state.get("precision"):
        return state["precision"]
    precision = resolve_precision(getattr(args, "precision", "auto") or "auto", dist.device)
    if precision == "auto":
        probe = None
        if dist.is_main:
            count = min(len(data.train_ds), dist.local_batch(args.batch_size))
            pixels = data.train_ds.pixels[:count]
            y = torch.from_numpy(data.train_ds.targets[:count]).to(dist.device)
            probe = probe_precision(model, pixels, y, data_config, device=dist.device)
        probe = dist.broadcast(probe)
        precision = faster_precision(probe)
        state["precision_probe"] = probe
        logger.info("--precision auto: fp32 %.1f img/s, bf16 autocast %.1f img/s on this machine now: %s",
                    probe["fp32"], probe["bf16"], precision)  # fmt: skip
    state["precision"] = precision
    return precision


def train(
    args: Any, splits, out: Path, dist: Distributed | None = None
) -> tuple[torch.nn.Module, list[dict[str, float]], dict]:
    """Train with early stopping on validation AUC; returns the best model (fp32, eval), the history and run facts.

    With `args.pause_after` N the process stops after N epochs and returns the current model with facts
    `{"paused": True}`: the checkpoint stays unfinished for `--resume` (a long run spread over several sessions).

    `args` holds train.py's options (see `train.py --help`). With `dist` from torchrun (world size > 1) the model
    trains under DistributedDataParallel: every rank takes `--batch-size // world_size` images of each global batch
    (`ShardSampler`), rank 0 decides the time-budget schedule and writes the checkpoint, and the returned model is
    the unwrapped module (the same on every rank).
    """
    from xray.imaging.transforms import data_config_for

    dist = dist or Distributed(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    device = dist.device
    num_classes = len(splits.label_names)
    model = create_model(args, num_classes)
    data_config = data_config_for(model)
    logger.info("data config %s", data_config)
    data = prepare_data(args, splits, data_config, dist)
    teacher = None
    if getattr(args, "teacher", None):
        from xray.training.distill import teacher_logits

        teacher = teacher_logits(args.teacher, splits.train, label_names=splits.label_names,
                                 cache_dir=getattr(args, "cache_dir", None), dist=dist)  # fmt: skip
    loss_fn = make_loss(args, data, num_classes, dist, device, teacher)
    frozen = freeze_early(model, args.freeze)
    if frozen:
        logger.info("froze %.2f M parameters (stem + %d stages)", frozen / 1e6, args.freeze)
    model.to(device).to(memory_format=torch.channels_last)
    net = model  # the unwrapped module: what is checkpointed, validated and returned
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=args.weight_decay
    )
    state = new_state(args.epochs * len(data.train_loader))
    ckpt_path = out / CHECKPOINT_NAME
    if args.resume:
        resume_checkpoint(ckpt_path, model=net, optimizer=optimizer, state=state, generator=data.generator, dist=dist)
    precision = choose_precision(args, net, data, data_config, state, dist)
    if dist.enabled:
        # after the resume: DDP starts every rank from rank 0's weights and buffers
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    logger.info("training in %s (%s, %d threads), %d steps of %d images per epoch", precision, device,
                torch.get_num_threads(), len(data.train_loader), args.batch_size)  # fmt: skip
    budget_s = args.time_budget * 60 if args.time_budget else None
    pause_at = state["epoch"] + args.pause_after if getattr(args, "pause_after", None) else None
    while not state["finished"] and state["epoch"] < args.epochs:
        if pause_at is not None and state["epoch"] >= pause_at:
            logger.info("pausing after epoch %d as asked (--pause-after); continue with --resume", state["epoch"])
            return net, state["history"], {"paused": True, "epochs_run": state["epoch"]}
        epoch_start = time.perf_counter()
        running, seen, lr = run_epoch(args, model, optimizer, data, loss_fn, state, data_config=data_config,
                                      precision=precision, dist=dist, budget_s=budget_s,
                                      epoch_start=epoch_start)  # fmt: skip
        end_epoch(args, net, model, data, state, running=running, seen=seen, lr=lr, epoch_start=epoch_start,
                  data_config=data_config, dist=dist, budget_s=budget_s)  # fmt: skip
        save_checkpoint(ckpt_path, model=net, optimizer=optimizer, state=state, generator=data.generator,
                        args=vars(args), dist=dist)  # fmt: skip
    model = net
    model.load_state_dict(state["best_state"])
    # safetensors stores contiguous tensors only, so leave channels_last before saving
    model.cpu().eval().to(memory_format=torch.contiguous_format)
    facts = {
        "epochs_run": state["epoch"],
        "steps_run": state["step"],
        "steps_per_epoch": len(data.train_loader),
        "best_epoch": state["best_epoch"],
        "best_val_auc": state["best_auc"],
        "stop_reason": state.get("stop_reason"),
        "train_seconds": state["train_seconds"],
        "seconds_per_epoch": state["train_seconds"] / max(1, state["epoch"]),
        "device": f"{dist.world_size} x {device.type} (DDP, {dist.backend})" if dist.enabled else str(device),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "precision_probe": state.get("precision_probe"),
        "pixel_cache": str(data.train_pixels.path.parent) if data.train_pixels.path else None,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
    }
    return model, state["history"], facts
