"""Study faster feature extractors against the current one (ONNX Runtime FP32) on the bundled `pneumonia` model.

Candidates, each a drop-in for `xray.inference.accel.forward_features` (PyTorch still runs the head):
    eager          PyTorch `model.forward_features` (reference only)
    onnx           ONNX Runtime FP32, the current path
    openvino       OpenVINO CPU plugin reading the same ONNX graph, `INFERENCE_PRECISION_HINT=f32`
    openvino-nopin the same with `ENABLE_CPU_PINNING=False` (its worker threads then share the cores with torch)
    openvino-bf16  as `openvino` with OpenVINO's default precision on CPUs with AVX512_BF16/AMX (bfloat16)
    int8           ONNX Runtime static INT8 (`quantize_static`: QDQ, per-channel S8 weights, U8 activations,
                   MinMax ranges) calibrated on `--calib` TRAINING images (kermany-224/train, adult-cxr/train)
                   through the model's own preprocessing

Rule, fixed before measuring (issue 13, item 4): a candidate may replace the current path only if, on the
624-image Kermany test set, the ROC AUC changes by at most 0.002 and every probability by at most 0.01.
The test set is only measured, never used to choose anything; `--int8-variants` compares INT8 settings on
training images held out from calibration instead.

Timings are interleaved (each repeat runs every candidate, in rotating order) because the machine is shared;
the load average is printed with them.

    .venv/bin/python scripts/accel_study.py                        # full study (624 test images, 30 repeats)
    .venv/bin/python scripts/accel_study.py --n 40 --repeats 5     # short run
    .venv/bin/python scripts/accel_study.py --int8-variants        # INT8 settings on held-out training images

OpenVINO is not a project dependency: `pip install openvino==2026.4.1` to include it; without it the OpenVINO
candidates are skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xray.inference import accel  # noqa: E402
from xray.inference.models import LoadedModel, load_model  # noqa: E402
from xray.inference.predict import predict, predict_logits, preprocess  # noqa: E402

MAX_AUC_CHANGE = 0.002
MAX_PROB_CHANGE = 0.01
OPENVINO_PIN = "openvino==2026.4.1"
BASELINE = "onnx"
#: Training folders the INT8 ranges are calibrated on (never a test folder), sampled evenly.
CALIBRATION_FOLDERS = ("kermany-224/train/NORMAL", "kermany-224/train/PNEUMONIA", "adult-cxr/train/NORMAL",
                       "adult-cxr/train/PNEUMONIA", "adult-cxr/train/COVID-19")  # fmt: skip
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
Features = Callable[[torch.Tensor], torch.Tensor]


class Row(NamedTuple):
    """One candidate's figures (times in milliseconds; `auc` on the evaluated test images)."""

    name: str
    predict_p50: float
    forward_p50: float
    batch_ips: float
    auc: float
    auc_change: float
    max_prob_change: float
    max_logit_change: float
    decisions_changed: int
    passes_rule: bool | None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def calibration_split(data: Path, n: int, *, holdout: int = 0, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Training images for INT8 calibration: `n` spread evenly over `CALIBRATION_FOLDERS`, and `holdout` others.

    Args:
        data: the shared data folder (kermany-224/, adult-cxr/).
        n: calibration images in all.
        holdout: further images in all, disjoint from the calibration ones, for comparing INT8 settings.
        seed: shuffling seed.

    Returns:
        (calibration paths, held-out paths).
    """
    rng = random.Random(seed)
    calib: list[Path] = []
    held: list[Path] = []
    folders = len(CALIBRATION_FOLDERS)
    for i, name in enumerate(CALIBRATION_FOLDERS):
        files = _images(data / name)
        rng.shuffle(files)
        take, keep = n // folders + (i < n % folders), holdout // folders + (i < holdout % folders)
        calib += files[:take]
        held += files[take : take + keep]
    return calib, held


def test_subset(data: Path, n: int) -> tuple[list[Path], np.ndarray]:
    """The Kermany test images (all 624, or `n` evenly spaced per class in the same proportions) and labels."""
    normal, pneumonia = (_images(data / "kermany-224" / "test" / c) for c in ("NORMAL", "PNEUMONIA"))
    total = len(normal) + len(pneumonia)
    if n < total:
        k = max(1, round(n * len(normal) / total))
        normal = [normal[i] for i in np.linspace(0, len(normal) - 1, k).round().astype(int)]
        pneumonia = [pneumonia[i] for i in np.linspace(0, len(pneumonia) - 1, max(1, n - k)).round().astype(int)]
    return normal + pneumonia, np.array([0] * len(normal) + [1] * len(pneumonia))


def preprocessed(loaded: LoadedModel, paths: Sequence[Path], batch_size: int = 32) -> torch.Tensor:
    """`paths` read and preprocessed by the model's own `preprocess`, stacked (N, C, H, W)."""
    from xray.imaging.io import read_image

    parts = [preprocess(loaded, [read_image(p) for p in paths[i : i + batch_size]])
             for i in range(0, len(paths), batch_size)]  # fmt: skip
    return torch.cat(parts)


def _numpy(batch: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32)


def _ort_session(path: Path) -> Any:
    """An ONNX Runtime session with the same options as `accel.feature_session`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_features(session: Any) -> Features:
    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"pixels": _numpy(batch)})[0])

    return run


def onnx_path(loaded: LoadedModel) -> Path:
    """The cached ONNX graph of the feature extractor that the current path runs (exported on first use)."""
    accel.feature_session(loaded)
    key = f"{loaded.architecture}-{loaded.version}-{'x'.join(map(str, loaded.data_config['input_size']))}"
    return accel.cache_dir() / "onnx" / f"{key}.onnx"


def openvino_features(path: Path, precision: str, *, pinning: bool = True) -> Features | None:
    """OpenVINO on the CPU running the ONNX graph at `path` (None, with a message, when openvino is missing).

    Args:
        path: the exported FP32 ONNX graph.
        precision: `INFERENCE_PRECISION_HINT`, "f32" or "bf16".
        pinning: `ENABLE_CPU_PINNING` (OpenVINO's default on Linux: on).
    """
    try:
        import openvino as ov
    except ImportError:
        print(f"openvino is not installed: `pip install {OPENVINO_PIN}` to include it; skipping", file=sys.stderr)
        return None
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": pinning})  # fmt: skip
    request = compiled.create_infer_request()

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.array(request.infer({0: _numpy(batch)})[0]))

    return run


class _Reader:
    """`CalibrationDataReader` over preprocessed calibration images, in batches of `batch_size`."""

    def __init__(self, pixels: torch.Tensor, batch_size: int = 10) -> None:
        self._batches = iter([{"pixels": _numpy(pixels[i : i + batch_size])}
                              for i in range(0, len(pixels), batch_size)])  # fmt: skip

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - the calibrators read the data once
        raise NotImplementedError


def quantize_int8(source: Path, target: Path, pixels: torch.Tensor, **overrides: Any) -> Path:
    """Static INT8 copy of the ONNX graph at `source`, ranges calibrated on `pixels` (preprocessed images).

    Defaults: QDQ format, per-channel symmetric S8 weights, U8 activations (ONNX Runtime's fast path on x86
    with AVX2/AVX512-VNNI), MinMax calibration; `overrides` replace any `quantize_static` argument.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Reader, CalibrationDataReader):
        pass

    prepared = target.with_suffix(".pre.onnx")
    if not prepared.is_file():
        quant_pre_process(str(source), str(prepared))
    options: dict[str, Any] = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                   weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    options.update(overrides)
    quantize_static(str(prepared), str(target), Reader(pixels), **options)
    return target


@contextlib.contextmanager
def installed(loaded: LoadedModel, features: Features) -> Iterator[None]:
    """Make `features` the feature extractor `predict`/`explain` call, as a drop-in for `accel.forward_features`."""
    original, was_accelerated = accel.forward_features, loaded.accelerated
    accel.forward_features = lambda _loaded, batch: features(batch)  # type: ignore[assignment]
    loaded.accelerated = True
    try:
        yield
    finally:
        accel.forward_features = original  # type: ignore[assignment]
        loaded.accelerated = was_accelerated


def probabilities(loaded: LoadedModel, features: Features, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probabilities and logits for preprocessed images, through `predict_logits` with `features`."""
    positive = loaded.label_names.index(loaded.positive_label or loaded.label_names[-1])
    with installed(loaded, features):
        logits = torch.cat([predict_logits(loaded, pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
    probs = torch.softmax(logits / loaded.temperature, dim=-1)[:, positive]
    return probs.numpy().astype(np.float64), logits.numpy().astype(np.float64)


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages from /proc/loadavg ("n/a" elsewhere)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def time_candidates(
    loaded: LoadedModel, candidates: dict[str, Features], image: Any, batch: torch.Tensor, repeats: int
) -> dict[str, dict[str, float]]:
    """Interleaved timings: each repeat runs every candidate once, in an order rotating by one each time.

    Returns, per candidate: `predict_p50` (ms, `predict` on one image, preprocessing included), `forward_p50`
    (ms, features + head on one preprocessed image) and `batch_ips` (images/s for one batch through
    `predict_logits`, median of the batch runs, one every third repeat).
    """
    one = batch[:1]
    names = list(candidates)
    samples: dict[str, dict[str, list[float]]] = {n: {"predict": [], "forward": [], "batch": []} for n in names}

    def clock(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000

    for name in names:  # warm-up: first calls allocate and compile
        with installed(loaded, candidates[name]):
            predict(loaded, [image])
            predict_logits(loaded, batch)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            with installed(loaded, candidates[name]):
                samples[name]["predict"].append(clock(lambda: predict(loaded, [image])))
                samples[name]["forward"].append(clock(lambda: predict_logits(loaded, one)))
                if r % 3 == 0:
                    samples[name]["batch"].append(clock(lambda: predict_logits(loaded, batch)))
    return {
        n: {
            "predict_p50": statistics.median(s["predict"]),
            "forward_p50": statistics.median(s["forward"]),
            "batch_ips": len(batch) * 1000 / statistics.median(s["batch"]),
        }
        for n, s in samples.items()
    }


def evaluate(
    loaded: LoadedModel, candidates: dict[str, Features], pixels: torch.Tensor, labels: np.ndarray, full: bool
) -> dict[str, dict[str, Any]]:
    """AUC and the change of every probability, logit and decision against the current path (`BASELINE`)."""
    from sklearn.metrics import roc_auc_score

    outputs = {name: probabilities(loaded, fn, pixels) for name, fn in candidates.items()}
    base_p, base_logits = outputs[BASELINE]
    threshold = loaded.threshold if loaded.threshold is not None else 0.5
    base_auc = roc_auc_score(labels, base_p)
    out = {}
    for name, (p, logits) in outputs.items():
        auc = roc_auc_score(labels, p)
        change = float(np.abs(p - base_p).max())
        out[name] = {
            "auc": auc, "auc_change": auc - base_auc, "max_prob_change": change,
            "max_logit_change": float(np.abs(logits - base_logits).max()),
            "decisions_changed": int(((p >= threshold) != (base_p >= threshold)).sum()),
            "passes_rule": (abs(auc - base_auc) <= MAX_AUC_CHANGE and change <= MAX_PROB_CHANGE) if full else None,
        }  # fmt: skip
    return out


def _small(value: float) -> str:
    """4 decimals, or 2 significant digits for changes below 1e-4 (0 stays 0)."""
    return f"{value:.4f}" if value >= 1e-4 or value == 0 else f"{value:.1e}"


def to_markdown(rows: Sequence[Row], batch: int = 32) -> str:
    """The study table (`batch`: images per batch in the throughput column)."""
    lines = [f"| path | predict p50 (ms) | forward p50 (ms) | batch {batch} (img/s) | AUC | ΔAUC | max \\|Δp\\| | "
             "max \\|Δlogit\\| | decisions changed | rule |", "|" + "---|" * 10]  # fmt: skip
    for r in rows:
        rule = "n/a (subset)" if r.passes_rule is None else ("baseline" if r.name == BASELINE else
                                                             "pass" if r.passes_rule else "FAIL")  # fmt: skip
        lines.append(f"| {r.name} | {r.predict_p50:.1f} | {r.forward_p50:.1f} | {r.batch_ips:.0f} | {r.auc:.4f} | "
                     f"{r.auc_change:+.4f} | {_small(r.max_prob_change)} | {_small(r.max_logit_change)} | "
                     f"{r.decisions_changed} | {rule} |")  # fmt: skip
    return "\n".join(lines)


def int8_variants(loaded: LoadedModel, data: Path, source: Path, work: Path, calib: int, holdout: int) -> str:
    """INT8 settings compared on training images held out from calibration (the test set is not touched)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType

    calib_paths, held_paths = calibration_split(data, calib, holdout=holdout)
    calib_pixels, held_pixels = preprocessed(loaded, calib_paths), preprocessed(loaded, held_paths)
    base_p, _ = probabilities(loaded, _ort_features(_ort_session(source)), held_pixels)
    prepared = work / "int8-u8s8.pre.onnx"
    quantize_int8(source, work / "int8-u8s8.onnx", calib_pixels)
    convs = [n for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
    depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    variants: dict[str, dict[str, Any]] = {
        "u8s8 MinMax (the int8 candidate)": {},
        "s8s8 MinMax": {"activation_type": QuantType.QInt8},
        "u8s8 MinMax, first and last conv in FP32": {"nodes_to_exclude": [convs[0].name, convs[-1].name]},
        f"u8s8 MinMax, {len(depthwise)} depthwise convs in FP32": {"nodes_to_exclude": depthwise},
        # Percentile keeps every activation in memory: 40 of the calibration images.
        "u8s8 Percentile 99.999 (40 calibration images)": {"calibrate_method": CalibrationMethod.Percentile},
    }
    lines = [f"INT8 settings on {len(held_paths)} held-out training images (calibration: {len(calib_paths)}), "
             f"load average {load_average()}", "", "| setting | max \\|Δp\\| | mean \\|Δp\\| | 99th pct \\|Δp\\| |",
             "|---|---|---|---|"]  # fmt: skip
    for i, (name, overrides) in enumerate(variants.items()):
        target = work / f"int8-variant-{i}.onnx"
        target.with_suffix(".pre.onnx").write_bytes(prepared.read_bytes())
        pixels = calib_pixels[:: max(1, len(calib_pixels) // 40)][:40] if "Percentile" in name else calib_pixels
        quantize_int8(source, target, pixels, **overrides)
        p, _ = probabilities(loaded, _ort_features(_ort_session(target)), held_pixels)
        d = np.abs(p - base_p)
        lines.append(f"| {name} | {d.max():.4f} | {d.mean():.4f} | {np.quantile(d, 0.99):.4f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the study and print the Markdown table (and the rule's verdict per candidate)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--model", default="pneumonia", help="model name for load_model (default: pneumonia)")
    parser.add_argument("--n", type=int, default=624, help="test images to evaluate (624 = all; fewer: a subset)")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved timing repeats")
    parser.add_argument("--calib", type=int, default=300, help="training images for INT8 calibration")
    parser.add_argument(
        "--image",
        type=Path,
        default=None,
        help="image for single-predict timing (default: a full-resolution Kermany X-ray)",
    )
    parser.add_argument("--only", nargs="+", default=None, help="candidates to run (default: all available)")
    parser.add_argument(
        "--int8-variants",
        action="store_true",
        help="compare INT8 settings on held-out training images instead (no test images)",
    )
    parser.add_argument("--holdout", type=int, default=200, help="held-out training images for --int8-variants")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    loaded = load_model(args.model)
    source = onnx_path(loaded)
    print(f"model {loaded.name} ({loaded.architecture}, version {loaded.version}); torch threads "
          f"{torch.get_num_threads()}; ONNX graph {source}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="accel-study-") as work:  # the INT8 graphs
        return _study(args, loaded, source, Path(work))


def _study(args: argparse.Namespace, loaded: LoadedModel, source: Path, work: Path) -> int:
    from xray.imaging.io import read_image

    if args.int8_variants:
        print(int8_variants(loaded, args.data, source, work, args.calib, args.holdout))
        return 0
    wanted = set(args.only or ["eager", "onnx", "openvino", "openvino-nopin", "openvino-bf16", "int8"]) | {BASELINE}
    candidates: dict[str, Features] = {}
    if "eager" in wanted:
        candidates["eager"] = loaded.model.forward_features
    candidates["onnx"] = _ort_features(accel.feature_session(loaded))
    for name, precision, pinning in (("openvino", "f32", True), ("openvino-nopin", "f32", False),
                                     ("openvino-bf16", "bf16", True)):  # fmt: skip
        if name in wanted and (fn := openvino_features(source, precision, pinning=pinning)) is not None:
            candidates[name] = fn
    if "int8" in wanted:
        calib_paths, _ = calibration_split(args.data, args.calib)
        start = time.perf_counter()
        path = quantize_int8(source, work / "int8.onnx", preprocessed(loaded, calib_paths))
        print(f"int8: calibrated on {len(calib_paths)} training images in {time.perf_counter() - start:.0f} s",
              flush=True)  # fmt: skip
        candidates["int8"] = _ort_features(_ort_session(path))
    paths, labels = test_subset(args.data, args.n)
    pixels = preprocessed(loaded, paths)
    full = len(paths) == 624
    quality = evaluate(loaded, candidates, pixels, labels, full)
    image_path = args.image or args.data / "kermany-val-fullres" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg"
    before = load_average()
    timing = time_candidates(loaded, candidates, read_image(image_path), pixels[:32], args.repeats)
    after = load_average()
    rows = [Row(name=n, **timing[n], **quality[n]) for n in candidates]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{len(paths)} Kermany test images ({int(labels.sum())} PNEUMONIA); {args.repeats} interleaved repeats; "
          f"load average before timing {before}, after {after}; peak RSS {rss:.0f} MiB\n")  # fmt: skip
    print(to_markdown(rows, min(32, len(paths))))
    if args.json:
        args.json.write_text(json.dumps({"load_before": before, "load_after": after, "n": len(paths),
                                         "rows": [r._asdict() for r in rows]}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
