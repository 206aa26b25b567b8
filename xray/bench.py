"""Speed benchmark: `python -m xray.bench [--archs ...] [--threads N]`; `--train` for training speed.

For each architecture: cold start (fresh interpreter: import + load), warm load time, p50/p95 latency of
predict alone and of predict + Grad-CAM on one real-size image, and batch throughput. Every architecture runs
through the same `xray` code path the app uses; DenseNet-121 (the CheXNet / torchxrayvision architecture) is
the reference each row is compared with.

`--train` measures training instead: images/s per architecture and setting (train.py before the pixel cache,
cached uint8 tensors in fp32 and in bf16 autocast, decoding every step), interleaved rounds, median and range
(`xray.training.throughput`).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_ARCHS = ["mobilenetv3_large_100", "mobilenetv3_small_100", "efficientnet_lite0", "resnet18", "resnet50",
                 "densenet121"]
REFERENCE = "densenet121"


@dataclass
class BenchRow:
    """Timings for one architecture (milliseconds unless named otherwise)."""

    arch: str
    params_m: float
    cold_start_s: float
    load_s: float
    first_s: float
    predict_p50: float
    predict_p95: float
    cam_p50: float
    cam_p95: float
    throughput: float


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def _time(fn: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def _model_dir(arch: str, root: Path) -> Path:
    """A saved model folder for `arch`: the bundled one when its architecture matches, else random weights."""
    import timm

    from xray.inference.models import list_bundled_models, read_config, resolve_model_dir, save_model

    for name in list_bundled_models():
        path, _ = resolve_model_dir(name)
        if read_config(path)["architecture"] == arch:
            return path
    # Weights do not change speed: random initialisation measures the same network.
    return save_model(timm.create_model(arch, num_classes=2), root / arch, label_names=["NORMAL", "PNEUMONIA"])


def _cold_start(model_dir: Path, threads: int | None) -> float:
    code = (
        "import time; t=time.perf_counter(); import torch; "
        + (f"torch.set_num_threads({threads}); " if threads else "")
        + "from xray.inference.models import load_model; "
        f"load_model('local-dir:{model_dir}'); print(time.perf_counter()-t)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def bench_arch(arch: str, image: object, root: Path, *, repeats: int, batch: int, threads: int | None) -> BenchRow:
    """Measure one architecture through the app's own `xray.inference` code (models, predict, explain)."""
    from xray.inference.explain import explain
    from xray.inference.models import load_model_dir
    from xray.inference.predict import predict, predict_logits

    model_dir = _model_dir(arch, root)
    cold = _cold_start(model_dir, threads)
    start = time.perf_counter()
    loaded = load_model_dir(model_dir)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    predict(loaded, [image])  # first use: includes the one-off ONNX export when accelerated
    first_s = time.perf_counter() - start
    pred = _percentiles(_time(lambda: predict(loaded, [image]), repeats))
    cam = _percentiles(_time(lambda: explain(loaded, image), repeats))
    x = torch.randn(batch, *loaded.data_config["input_size"]).contiguous(memory_format=torch.channels_last)
    # at least 10 batches with the default 30 repeats: 3 gave figures 1.8x apart between runs on a shared machine
    batch_ms = statistics.median(_time(lambda: predict_logits(loaded, x), max(5, repeats // 3), warmup=1))
    return BenchRow(arch, loaded.num_parameters / 1e6, cold, load_s, first_s, *pred, *cam, batch * 1000 / batch_ms)


def machine_description() -> str:
    """One line naming the CPU, the cores torch uses and the library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


def to_markdown(rows: list[BenchRow], batch: int) -> str:
    """A README table; the last columns give each architecture's speed relative to DenseNet-121."""
    ref = next((r for r in rows if r.arch == REFERENCE), None)
    head = (f"| model | params (M) | cold start (s) | load (s) | first predict (s) | predict p50 / p95 (ms) | "
            f"predict + Grad-CAM p50 / p95 (ms) | batch {batch} (img/s) | Grad-CAM speed-up vs DenseNet-121 | "
            "throughput vs DenseNet-121 |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        ratio_cam = f"{ref.cam_p50 / r.cam_p50:.1f}x" if ref else "n/a"
        ratio_tp = f"{r.throughput / ref.throughput:.1f}x" if ref else "n/a"
        lines.append(
            f"| {r.arch} | {r.params_m:.1f} | {r.cold_start_s:.2f} | {r.load_s:.2f} | {r.first_s:.2f} | "
            f"{r.predict_p50:.1f} / {r.predict_p95:.1f} | {r.cam_p50:.1f} / {r.cam_p95:.1f} | {r.throughput:.0f} | "
            f"{ratio_cam} | {ratio_tp} |"
        )
    return "\n".join(lines)


def _bench_image(path: str | None) -> object:
    from xray.imaging.io import read_image

    if path:
        return read_image(path)
    candidates = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpeg"))
    if candidates:
        return read_image(candidates[0])
    return (np.random.default_rng(0).random((1500, 1800)) * 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m xray.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=None, help="timm architectures (default: per mode)")
    parser.add_argument("--image", default=None, help="image to time (default: first example X-ray)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-onnx", action="store_true", help="eager PyTorch only (XRAY_ONNX=0)")
    train = parser.add_argument_group("training speed (--train)")
    train.add_argument("--train", action="store_true", help="measure training images/s instead of inference")
    train.add_argument("--data", action="append", default=[], metavar="PATH",
                       help="training images (train.py's --data); default: the example X-rays")  # fmt: skip
    train.add_argument("--settings", nargs="+", default=None, help="training settings (default: before, "
                       "cache-fp32, cache-bf16; also decode-bf16, cache-fp32-compile)")  # fmt: skip
    train.add_argument("--steps", type=int, default=4, help="timed training steps per measurement")
    train.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    train.add_argument("--rounds", type=int, default=2, help="interleaved rounds over every architecture/setting")
    train.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    if args.train:
        return train_main(args)
    args.archs = args.archs or DEFAULT_ARCHS
    from xray.config import get_settings

    if args.no_onnx:
        os.environ["XRAY_ONNX"] = "0"
    get_settings.cache_clear()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    image = _bench_image(args.image)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # An empty ONNX cache, so "first predict" shows the one-off export a new installation pays.
        os.environ.setdefault("XRAY_CACHE_DIR", str(Path(tmp) / "cache"))
        get_settings.cache_clear()
        for arch in args.archs:
            row = bench_arch(arch, image, Path(tmp), repeats=args.repeats, batch=args.batch, threads=args.threads)
            rows.append(row)
            logger.info("%s done", arch)
    size = getattr(image, "size", None)
    engine = "eager PyTorch" if os.environ.get("XRAY_ONNX") == "0" else "ONNX Runtime features + PyTorch head"
    print(f"Machine: {machine_description()}; {engine}" + (f"; image {size[0]}x{size[1]}" if size else ""))
    print(to_markdown(rows, args.batch))
    return 0


def train_main(args: argparse.Namespace) -> int:
    """`--train`: training images/s per architecture and setting (`xray.training.throughput`)."""
    import json

    from xray.training import throughput

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = args.archs or list(throughput.TRAIN_ARCHS)
    settings = args.settings or list(throughput.DEFAULT_SETTINGS)
    unknown = sorted(set(settings) - set(throughput.SETTINGS))
    if unknown:
        raise SystemExit(f"unknown --settings {unknown}; known: {', '.join(throughput.SETTINGS)}")
    samples, targets = throughput.benchmark_samples(args.data, args.batch * (args.warmup + args.steps))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp) / "pixels"
        decode = throughput.decode_cost(samples, (224, 224), "bicubic", cache_dir)
        rows = throughput.bench_training(samples, targets, archs=archs, settings=settings, batch=args.batch,
                                         steps=args.steps, warmup=args.warmup, repeats=args.rounds,
                                         cache_dir=cache_dir)  # fmt: skip
    load_after = os.getloadavg()
    if args.json:
        print(json.dumps({"machine": machine_description(), "load_before": load_before, "load_after": load_after,
                          "batch": args.batch, "steps": args.steps, "rounds": args.rounds, "decode": decode,
                          "rows": [{"arch": r.arch, "setting": r.setting, "images_per_s": r.images_per_s,
                                    "median": r.median, "images_per_cpu_s": r.images_per_cpu_s,
                                    "cpu_median": r.cpu_median} for r in rows]}, indent=1))  # fmt: skip
        return 0
    print(f"Machine: {machine_description()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"{len(samples)} images, {args.rounds} rounds of {args.warmup} + {args.steps} steps")  # fmt: skip
    print(f"Decode + resize to 224x224: {decode['decode_ms']:.1f} ms/image (every run before the cache); pixel cache "
          f"read: {decode['cache_ms']:.2f} ms/image ({decode['images']} images)")  # fmt: skip
    print(throughput.to_markdown(rows, batch=args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
