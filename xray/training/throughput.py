"""Training speed per architecture and setting (`python -m xray.bench --train`).

Each setting is one way of feeding and stepping the network, timed over whole training steps (data loading,
augmentation, forward, backward, AdamW) with batches of real images:

- `before`: what train.py did before the pixel cache: decoded pixels held in memory as arrays, the PIL
  augmentation of `build_transform(train=True)` per image, fp32 (channels_last, as it was);
- `cache-fp32`: uint8 tensors from the pixel cache, each batch augmented as one tensor (`xray.training.augment`),
  fp32;
- `cache-bf16`: the same under bf16 autocast (fp32 weights), what `--precision auto` picks on a bf16 CPU;
- `decode-bf16`: no cache: every step decodes and resizes its files again, then as `cache-bf16`;
- `cache-fp32-compile`: as `cache-fp32` with the model under `torch.compile` (inductor; the one-off compilation
  falls in the untimed warm-up steps), to see whether compiling pays for training on this CPU.

Settings are interleaved (every architecture and setting once per round, `repeats` rounds), so a neighbour's load
on a shared machine falls on all of them alike; the table gives the median and the range over the rounds, of
wall-clock images/s and of images per CPU-second of this process (steadier when other processes share the cores).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

SETTINGS = ("before", "cache-fp32", "cache-bf16", "decode-bf16", "cache-fp32-compile")
DEFAULT_SETTINGS = ("before", "cache-fp32", "cache-bf16")
TRAIN_ARCHS = ("efficientnet_lite0", "mobilenetv3_large_100", "resnet18")
#: train.py's default augmentation (rotation, shift, zoom, brightness/contrast)
AUGMENTATION = {"rotation": 10.0, "translate": 0.05, "zoom": 0.1, "hflip": False, "intensity": 0.1}


@dataclass
class TrainSpeed:
    """Images per second of one architecture and setting, one figure per round.

    `images_per_s` is wall-clock speed; `images_per_cpu_s` divides by the CPU time this process used instead, which
    other processes on a shared machine disturb far less (they take turns on the cores; the work per image stays).
    """

    arch: str
    setting: str
    images_per_s: list[float] = field(default_factory=list)
    images_per_cpu_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median wall-clock images/s over the rounds."""
        return statistics.median(self.images_per_s)

    @property
    def cpu_median(self) -> float:
        """Median images per CPU-second over the rounds."""
        return statistics.median(self.images_per_cpu_s) if self.images_per_cpu_s else float("nan")


def _loader(arch: str, setting: str, samples: Sequence[Any], targets: np.ndarray, data_config: dict[str, Any],
            batch: int, cache_dir: Path | None) -> torch.utils.data.DataLoader:  # fmt: skip
    from xray.imaging.transforms import build_transform
    from xray.training.augment import CachedImages, DecodedEachStep
    from xray.training.cache import cached_pixels
    from xray.training.data import ImageDataset, load_pixels

    size = tuple(data_config["input_size"][1:])
    interpolation = str(data_config.get("interpolation", "bilinear"))
    if setting == "before":
        a = AUGMENTATION
        transform = build_transform(data_config, train=True, rotation=a["rotation"], translate=a["translate"],
                                    scale=(1 - a["zoom"], 1 + a["zoom"]), hflip=a["hflip"],
                                    intensity=a["intensity"])  # fmt: skip
        dataset: Any = ImageDataset(load_pixels(samples, size, interpolation), targets, transform)
    elif setting.startswith("cache"):
        pixels = cached_pixels(samples, size, interpolation, cache_dir=cache_dir).pixels
        dataset = CachedImages(pixels, targets)
    elif setting.startswith("decode"):
        dataset = DecodedEachStep(samples, size, interpolation, targets)
    else:
        raise ValueError(f"unknown setting {setting!r}; known: {SETTINGS}")
    generator = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, generator=generator)


def time_setting(arch: str, setting: str, samples: Sequence[Any], targets: np.ndarray, *, batch: int = 32,
                 steps: int = 4, warmup: int = 2, cache_dir: Path | None = None) -> tuple[float, float]:  # fmt: skip
    """Training (images per second, images per CPU-second) of `arch` under `setting`.

    Timed over `steps` steps after `warmup` untimed ones. The model is freshly initialised (random weights train
    at the speed of trained ones), one output per class.
    """
    import timm

    from xray.imaging.transforms import data_config_for
    from xray.training.augment import build_augment
    from xray.training.loop import network_input, train_step

    model = timm.create_model(arch, num_classes=max(2, int(targets.max()) + 1)).train()
    model = model.to(memory_format=torch.channels_last)
    data_config = data_config_for(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    precision = "bf16" if "bf16" in setting else "fp32"
    loader = _loader(arch, setting, samples, targets, data_config, batch, cache_dir)
    if setting.endswith("-compile"):
        model = torch.compile(model)
    augment = build_augment(**AUGMENTATION)
    device = torch.device("cpu")

    def batches():
        while True:
            yield from loader

    stream = batches()
    start = cpu_start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        if setting == "before":  # train.py's own step before the cache: float batches, fp32
            x, y = next(stream)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
        else:
            pixels, y, _ = next(stream)
            x = network_input(augment(pixels), device, data_config)
        loss = train_step(model, optimizer, x, y, criterion, precision=precision)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{arch} {setting}: loss {float(loss)} at step {i}")
    return steps * batch / (time.perf_counter() - start), steps * batch / (time.process_time() - cpu_start)


def decode_cost(samples: Sequence[Any], size: tuple[int, int], interpolation: str, cache_dir: Path) -> dict[str, float]:
    """Milliseconds per image to decode and resize (`read_pixels`, every run before the cache) vs to read the cache."""
    from xray.training.cache import cached_pixels
    from xray.training.data import load_pixels

    start = time.perf_counter()
    load_pixels(samples, size, interpolation)
    decode_s = time.perf_counter() - start
    cached_pixels(samples, size, interpolation, cache_dir=cache_dir)  # written (or already there)
    start = time.perf_counter()
    hit = cached_pixels(samples, size, interpolation, cache_dir=cache_dir)
    hit.pixels.sum()  # touch every page of the memory-mapped file
    read_s = time.perf_counter() - start
    n = len(samples)
    return {"images": n, "decode_ms": 1000 * decode_s / n, "cache_ms": 1000 * read_s / n}


def bench_training(
    samples: Sequence[Any],
    targets: np.ndarray,
    *,
    archs: Sequence[str] = TRAIN_ARCHS,
    settings: Sequence[str] = DEFAULT_SETTINGS,
    batch: int = 32,
    steps: int = 4,
    warmup: int = 2,
    repeats: int = 2,
    cache_dir: Path,
) -> list[TrainSpeed]:
    """Every architecture under every setting, interleaved over `repeats` rounds (module docstring)."""
    rows = {(a, s): TrainSpeed(a, s) for a in archs for s in settings}
    for round_ in range(repeats):
        for arch in archs:
            for setting in settings:
                speed, cpu_speed = time_setting(arch, setting, samples, targets, batch=batch, steps=steps,
                                                warmup=warmup, cache_dir=cache_dir)  # fmt: skip
                rows[arch, setting].images_per_s.append(speed)
                rows[arch, setting].images_per_cpu_s.append(cpu_speed)
                logger.info("round %d: %s %s %.1f img/s, %.1f img/CPU-s (load %.2f)", round_ + 1, arch, setting,
                            speed, cpu_speed, os.getloadavg()[0])  # fmt: skip
    return list(rows.values())


def to_markdown(rows: Sequence[TrainSpeed], *, batch: int, baseline: str = "before") -> str:
    """The README table: wall-clock and CPU-time images/s (median, range) and speed-ups over `baseline`."""
    base = {r.arch: r for r in rows if r.setting == baseline}
    lines = [f"| architecture | setting | train img/s (batch {batch}), median | range over rounds | vs {baseline} | "
             f"img per CPU-s, median | range | vs {baseline} (CPU) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ref = base.get(r.arch)
        ratio = f"{r.median / ref.median:.2f}x" if ref else "n/a"
        cpu_ratio = f"{r.cpu_median / ref.cpu_median:.2f}x" if ref and r.images_per_cpu_s else "n/a"
        cpu_range = (f"{min(r.images_per_cpu_s):.1f}-{max(r.images_per_cpu_s):.1f}" if r.images_per_cpu_s
                     else "n/a")  # fmt: skip
        lines.append(f"| {r.arch} | {r.setting} | {r.median:.1f} | {min(r.images_per_s):.1f}-"
                     f"{max(r.images_per_s):.1f} ({len(r.images_per_s)}) | {ratio} | {r.cpu_median:.1f} | "
                     f"{cpu_range} | {cpu_ratio} |")  # fmt: skip
    return "\n".join(lines)


def benchmark_samples(data: Sequence[str], count: int) -> tuple[list[Any], np.ndarray]:
    """`count` labelled samples from `--data` sources (repeated when fewer), with integer targets."""
    import random

    from xray.training.data import Sample, load_samples, order_labels

    if data:
        samples = [s for d in data for s in load_samples(d)]
    else:  # the repository's example X-rays, full-size JPEGs
        root = Path(__file__).resolve().parents[2] / "examples"
        samples = [Sample(p, "PNEUMONIA" if "bacteria" in p.name or "virus" in p.name else "NORMAL", p.stem)
                   for p in sorted(root.glob("*.jpeg"))]  # fmt: skip
    if not samples:
        raise SystemExit("no images to train on: give --data PATH")
    random.Random(0).shuffle(samples)
    samples = (samples * (count // len(samples) + 1))[:count]
    names = order_labels(s.label for s in samples)
    return samples, np.array([names.index(s.label) for s in samples], dtype=np.int64)
