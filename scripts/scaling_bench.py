"""Scaling figures for batch scoring: the single-process path against Ray Data with 1 and 2 workers.

Scores the same N real X-rays (default 2,000, spread evenly over kermany-224 train+test and adult-cxr train+test
in ../shared/data) three ways:

(a) `python -m xray predict FILES --out` in a fresh process (one process, torch threads = cores);
(b) `xray.analysis.distributed.score` on a local Ray cluster with 1 scoring actor (torch threads = cores; the
    decode tasks beside it);
(c) the same with 2 actors (cores / 2 threads each).

For each it prints the wall time and images/s, and the CPU time the job used (user + system, all its processes:
for Ray the driver, GCS, raylet and every worker, sampled from /proc, so Linux only) per image: on a machine shared
with other jobs wall time mostly measures how much of the CPU the job was given, CPU time what the work costs.
It checks that every row equals the single-process one, reports where the single-process CPU time goes (decode,
preprocessing, forward pass, input gate) and whether Ray is within 15% of the single-process throughput.

Ray's own start (`ray.init`) is timed separately and not counted: a cluster is started once and serves many jobs.
Process start-up (interpreter, imports, model load) is counted in all three: once in (a), once per actor in Ray.

    .venv/bin/python scripts/scaling_bench.py --n 400 --model pneumonia
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data"
GOAL = 0.85  # Ray throughput at least 85% of the single-process path


def pick_images(data: Path, n: int) -> list[Path]:
    """N images spread evenly (every k-th, sorted) over kermany-224 train+test and adult-cxr train+test."""
    pool = sorted((data / "kermany-224").rglob("*.jpeg")) + sorted((data / "adult-cxr").rglob("*.jpg"))
    if not pool:
        raise SystemExit(f"No images under {data}/kermany-224 or {data}/adult-cxr (see ../shared/data/README.md).")
    if n >= len(pool):
        return pool
    step = len(pool) / n
    return [pool[int(i * step)] for i in range(n)]


def breakdown(model: str, files: list[Path], batch_size: int) -> dict[str, float]:
    """CPU milliseconds per image of each step of the single-process path (this process, all threads), on `files`.

    decode: `read_image`; preprocess: the model's transform (resize, JPEG step, normalisation); forward: prediction
    and features (`analyse_many` without checks, minus preprocess); gate: the input gate's image checks and OOD
    features and score (`analyse_many` with checks, minus without).
    """
    from xray.analysis.pipeline import analyse_many
    from xray.imaging.io import read_image
    from xray.inference.models import load_model

    loaded = load_model(model)
    analyse_many(loaded, [read_image(files[0])])  # warm up (ONNX session, gate statistics)
    clock = time.process_time
    start = clock()
    images = [read_image(f) for f in files]
    decode = clock() - start
    start = clock()
    for image in images:
        loaded.transform(image)
    preprocess = clock() - start
    start = clock()
    analyse_many(loaded, images, batch_size=batch_size, checks=False)
    unchecked = clock() - start
    start = clock()
    analyse_many(loaded, images, batch_size=batch_size, checks=True)
    checked = clock() - start
    per = 1000 / len(files)
    return {"decode_ms": decode * per, "preprocess_ms": preprocess * per,
            "forward_ms": max(0.0, unchecked - preprocess) * per, "gate_ms": max(0.0, checked - unchecked) * per,
            "whole_ms": (decode + checked) * per}  # fmt: skip


def _proc_cpu() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds)} of every process, from /proc (user + system time)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return found


class TreeCpu:
    """CPU seconds used by this process and all its descendants while the block runs.

    /proc is sampled every `interval` seconds, keeping each process's last value, so that workers that exit
    during the block count (up to one interval of their last work can be missed).
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.seconds = 0.0

    def _tree(self) -> dict[int, float]:
        table = _proc_cpu()
        children: dict[int, list[int]] = {}
        for pid, (parent, _cpu) in table.items():
            children.setdefault(parent, []).append(pid)
        mine, todo = {}, [os.getpid()]
        while todo:
            pid = todo.pop()
            if pid in table:
                mine[pid] = table[pid][1]
            todo += children.get(pid, [])
        return mine

    def __enter__(self) -> TreeCpu:
        import threading

        self._start = self._tree()
        self._last = dict(self._start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._last.update(self._tree())

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._tree())
        self.seconds = sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._last.items())


def run_single(model: str, files: list[Path], out: Path) -> tuple[dict, dict[str, dict]]:
    """(a): `python -m xray predict FILES --out` in a fresh process (interpreter, imports and model load included).

    Its start-up (imports and model load) is measured apart in another fresh process.
    """
    import resource

    import pyarrow.parquet as pq

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    python, env = sys.executable, {**os.environ, "PYTHONPATH": str(ROOT)}
    load = f"from xray.inference.models import load_model; load_model({model!r})"
    cpu, start = children_cpu(), time.perf_counter()
    subprocess.run([python, "-c", load], cwd=ROOT, env=env, check=True)
    startup_s, startup_cpu = time.perf_counter() - start, children_cpu() - cpu
    cpu, start = children_cpu(), time.perf_counter()
    done = subprocess.run([python, "-m", "xray", "predict", *map(str, files), "--model", model, "--out", str(out)],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    seconds, cpu_s = time.perf_counter() - start, children_cpu() - cpu
    if done.returncode not in (0, 1):
        raise SystemExit(f"python -m xray predict failed with exit code {done.returncode}")
    rows = {r["file"]: r for r in pq.read_table(out).to_pylist()}
    return {"path": "(a) single process", "workers": 1, "threads": os.cpu_count() or 1, "seconds": seconds,
            "cpu_s": cpu_s, "startup_s": startup_s, "startup_cpu_s": startup_cpu,
            "errors": sum(r["error"] is not None for r in rows.values())}, rows  # fmt: skip


def run_ray(model: str, files: list[Path], batch_size: int, workers: int, cores: int, out: Path) -> tuple[dict, dict]:
    """(b)/(c): Ray Data with `workers` actors sharing the cores with the decode tasks."""
    import pyarrow.parquet as pq

    from xray.analysis.distributed import score

    decode_cpus = 0.5
    cpus = (cores - decode_cpus) / workers if workers > 1 else 1.0
    threads = max(1, cores // workers)
    with TreeCpu() as meter:
        summary = score([str(f) for f in files], model=model, out=out, workers=workers, cpus_per_worker=cpus,
                        threads_per_worker=threads, decode_cpus=decode_cpus, batch_size=batch_size,
                        progress=False)  # fmt: skip
    rows = {r["file"]: r for r in pq.read_table(out).to_pylist()}
    label = f"({'b' if workers == 1 else 'c'}) Ray, {workers} worker{'s' if workers > 1 else ''}"
    return {"path": label, "workers": workers, "threads": threads, "seconds": summary.seconds,
            "cpu_s": meter.seconds, "errors": summary.errors}, rows  # fmt: skip


def max_difference(single: dict[str, dict], ray_rows: dict[str, dict]) -> tuple[int, float]:
    """(rows whose label, in_scope or error differ, largest probability difference) between two result tables."""
    disagree, largest = 0, 0.0
    for file, want in single.items():
        got = ray_rows[file]
        disagree += any(got[k] != want[k] for k in ("label", "in_scope", "error"))
        for name in (k for k in want if k.startswith("p_") and want[k] is not None):
            largest = max(largest, abs(got[name] - want[name]))
    return disagree, largest


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images to score")
    parser.add_argument("--model", default="pneumonia")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="Ray pool sizes to measure, comma-separated")
    parser.add_argument("--breakdown", type=int, default=100, help="images for the per-step breakdown (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)

    import ray

    cores = os.cpu_count() or 1
    files = pick_images(args.data, args.n)
    print(f"{len(files)} images, model {args.model}, {cores} cores, load average {os.getloadavg()[0]:.1f} at start",
          flush=True)  # fmt: skip
    figures: dict = {"n": len(files), "model": args.model, "cores": cores, "load_start": os.getloadavg()[0]}
    if args.breakdown:
        figures["breakdown"] = breakdown(args.model, files[: args.breakdown], args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        single, single_rows = run_single(args.model, files, Path(tmp) / "single.parquet")
        runs = [single]
        start = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        figures["ray_init_s"] = time.perf_counter() - start
        try:
            for workers in (int(w) for w in args.workers.split(",")):
                out = Path(tmp) / f"{workers}.parquet"
                run, rows = run_ray(args.model, files, args.batch_size, workers, cores, out)
                run["label_disagreements"], run["max_probability_difference"] = max_difference(single_rows, rows)
                runs.append(run)
        finally:
            ray.shutdown()
    figures["load_end"] = os.getloadavg()[0]
    single = runs[0]
    for run in runs:
        run["images_per_s"] = len(files) / run["seconds"]
        run["vs_single"] = run["images_per_s"] / single["images_per_s"]
        run["cpu_ms_per_image"] = 1000 * run["cpu_s"] / len(files)
        run["cpu_vs_single"] = single["cpu_s"] / run["cpu_s"]  # > 1: cheaper than the single process
    figures["runs"] = runs

    print(f"\nRay start (not counted): {figures['ray_init_s']:.1f} s; load average {figures['load_end']:.1f} at end")
    print(
        f"Start-up of a fresh process (imports, model load): {single['startup_s']:.1f} s wall, "
        f"{single['startup_cpu_s']:.1f} s CPU; paid once by (a) and once per actor by Ray"
    )
    print(
        "\n| path | workers x threads | wall (s) | images/s | vs (a) | CPU (s) | CPU ms per image | (a)'s CPU / this |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run['path']} | {run['workers']} x {run['threads']} | {run['seconds']:.1f} "
            f"| {run['images_per_s']:.2f} | {run['vs_single']:.0%} | {run['cpu_s']:.1f} "
            f"| {run['cpu_ms_per_image']:.0f} | {run['cpu_vs_single']:.0%} |"
        )
    for run in runs[1:]:
        print(
            f"{run['path']}: {run['label_disagreements']} rows differ in label, in_scope or error from (a), "
            f"largest probability difference {run['max_probability_difference']:.1e}"
        )
    if "breakdown" in figures:
        b = figures["breakdown"]
        print(f"\nWhere the CPU goes (single process, {args.breakdown} images, CPU ms per image): decode "
              f"{b['decode_ms']:.1f}, preprocess {b['preprocess_ms']:.1f}, forward {b['forward_ms']:.1f}, input gate "
              f"{b['gate_ms']:.1f}; total {b['whole_ms']:.1f}")  # fmt: skip
    for key, what in (("vs_single", "throughput measured here"), ("cpu_vs_single", "CPU per image")):
        best = max(run[key] for run in runs[1:]) if runs[1:] else float("nan")
        print(
            f"Goal (Ray within 15% of the single process), {what}: best Ray run at {best:.0%}: "
            f"{'met' if best >= GOAL else 'not met'}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
