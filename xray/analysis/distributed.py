"""Batch scoring on a Ray cluster with Ray Data: `python -m xray predict PATH... --ray [ADDRESS] --out FILE`.

The job is a Ray Data stream of three stages:

1. **list** (driver): files and folders (searched recursively for image and DICOM files, as without Ray), or any
   fsspec URL (`s3://bucket/prefix/`, `gs://...`, globs); or, for a labelled dataset, one read task that iterates
   a sample generator lazily (`items`, e.g. a streaming Hugging Face dataset) so nothing is loaded whole.
2. **decode** (parallel Ray tasks): read each file's bytes and decode them with `xray.imaging.io.read_image`, the
   app's own reader. An unreadable file becomes a row with its `error` (the same message as without Ray), never a
   failed task. Decoded pixels travel as uint8 (one channel when the image is grey, three otherwise).
3. **score** (a pool of Ray actors: `map_batches` with a callable class, `ActorPoolStrategy(size=workers)`): each
   actor loads the model once and runs `xray.analysis.pipeline.analyse_many`, the one pipeline of the app and of
   `python -m xray predict` (model-specific preprocessing, forward pass, calibrated probabilities, decision and
   input gate), so every row equals the single-process result.

The driver writes the rows, in input order, as they arrive (`xray.analysis.results.ResultsWriter`: Parquet or CSV,
local or fsspec URL). Importing this module costs nothing and does not need Ray; Ray (`requirements-ray.txt`) is
imported when a job starts, and a missing Ray raises `RayUnavailableError` naming the install command.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from xray.analysis.results import ResultsWriter, is_url, result_row
from xray.errors import XrayError

logger = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install -r requirements-ray.txt"
#: Files per block of the listing: the unit of work of one decode task.
FILES_PER_BLOCK = 64


class RayUnavailableError(XrayError):
    """Ray is not installed (it is optional: `requirements-ray.txt`)."""


def require_ray() -> ModuleType:
    """Import Ray, or raise `RayUnavailableError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray[data]: pandas, pyarrow)
    except ImportError as exc:
        raise RayUnavailableError(
            f"Scoring with --ray needs Ray Data, which is not installed ({exc}). Install it with: {RAY_INSTALL_HINT}"
        ) from exc
    return ray


@dataclass
class ScoreSummary:
    """What a scoring job did.

    Attributes:
        files: rows written (one per input).
        errors: inputs that could not be read or scored.
        out_of_scope: inputs the input gate flagged.
        seconds: wall time of the job, from listing the inputs to the last row written (starting or connecting to
            Ray and loading the model on the driver excluded; starting the actors included).
        out: where the table was written.
    """

    files: int
    errors: int
    out_of_scope: int
    seconds: float
    out: str

    @property
    def images_per_second(self) -> float:
        """Throughput over the whole job."""
        return self.files / self.seconds if self.seconds > 0 else float("nan")


# ---------------------------------------------------------------------------------------------------------
# Stage 1: listing


def list_inputs(paths: Iterable[str | Path]) -> list[str]:
    """Every input file: local files as given, local folders searched recursively, fsspec URLs listed.

    Local folders yield the same files, in the same order, as `python -m xray predict` without Ray
    (`xray.analysis.batch.iter_image_files`). A URL may be one object, a prefix ("folder") searched recursively for
    image and DICOM files, or a glob.
    """
    from xray.analysis.batch import iter_image_files

    found: list[str] = []
    for raw in paths:
        if is_url(str(raw)):
            found += _list_url(str(raw))
        else:
            found += [str(p) for p in iter_image_files([raw])]
    return found


def _list_url(url: str) -> list[str]:
    import fsspec

    from xray.imaging.io import IMAGE_EXTENSIONS

    fs, path = fsspec.core.url_to_fs(url)
    if glob.has_magic(path):
        matches = fs.glob(path)
    elif fs.isdir(path):
        matches = [p for p in fs.find(path) if Path(p).suffix.lower() in IMAGE_EXTENSIONS]
    else:
        matches = [path]
    return [fs.unstrip_protocol(p) for p in sorted(matches)]


# ---------------------------------------------------------------------------------------------------------
# Stage 2: decoding (Ray tasks)


def _decoded_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("index", pa.int64()), ("file", pa.string()), ("true_label", pa.string()), ("error", pa.string()),
        ("pixels", pa.large_binary()), ("height", pa.int32()), ("width", pa.int32()), ("channels", pa.int8()),
        ("info", pa.string()),
    ])  # fmt: skip


def _read_bytes(file: str) -> bytes:
    if is_url(file):
        import fsspec

        with fsspec.open(file, "rb") as handle:
            return handle.read()
    return Path(file).read_bytes()


def pack_image(image: Any) -> dict[str, Any]:
    """An `XrayImage` as plain columns: uint8 pixel bytes (one channel when all three are equal) and its fields."""
    import numpy as np

    pixels = image.pixels
    single = image.grey()
    grey = single is not None
    data = np.ascontiguousarray(single if grey else pixels)
    # the constructor's fields only: the image's cached grey channel and preview are rebuilt on demand
    info = {f.name: getattr(image, f.name) for f in fields(image) if f.init and f.name != "pixels"}
    return {"pixels": data.tobytes(), "height": pixels.shape[0], "width": pixels.shape[1],
            "channels": 1 if grey else pixels.shape[2], "info": json.dumps(info)}  # fmt: skip


def unpack_image(row: dict[str, Any]) -> Any:
    """The `XrayImage` of a `pack_image` row: the same pixels (HxWx3, read-only) and fields."""
    import numpy as np

    from xray.imaging.io import XrayImage

    pixels = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(row["height"], row["width"], row["channels"])
    if row["channels"] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    pixels.flags.writeable = False
    return XrayImage(pixels=pixels, **json.loads(row["info"]))


def decode_batch(batch: Any) -> Any:
    """Ray Data task: read and decode a batch of `index, file[, data, true_label]` rows (a pyarrow Table).

    `data` holds the file's bytes when the input carried them (a dataset); otherwise the bytes are read from
    `file` (local path or fsspec URL). Failures become the row's `error`.
    """
    import pyarrow as pa

    from xray.imaging.io import read_image

    out = []
    for row in batch.to_pylist():
        file = row["file"]
        packed: dict[str, Any] = {"index": row["index"], "file": file, "true_label": row.get("true_label")}
        try:
            data = row.get("data")
            if data is None:
                data = _read_bytes(file)
            name = Path(file.split("?", 1)[0] if is_url(file) else file).name
            packed.update(pack_image(read_image(data, filename=name)))
        except Exception as exc:  # noqa: BLE001  (any unreadable input is a row with its error, never a failed job)
            packed["error"] = str(exc) or type(exc).__name__
            logger.warning("%s: %s", file, packed["error"])
        out.append(packed)
    return pa.Table.from_pylist(out, schema=_decoded_schema())


# ---------------------------------------------------------------------------------------------------------
# Stage 3: scoring (Ray actors)


class Scorer:
    """Ray Data actor: loads the model once, then scores decoded batches with `analyse_many`.

    Args:
        model: model name (bundled, `local-dir:PATH`, `hf-hub:org/repo`), resolved on the worker.
        threads: torch (and ONNX Runtime) intra-op threads of this worker; None keeps the worker's default.
        batch_size: images per forward pass.
        population: the patients' group for images without a DICOM age (`xray.analysis.batch.threshold_choices`).
    """

    def __init__(
        self, model: str, threads: int | None = None, batch_size: int = 32, population: str | None = None
    ) -> None:
        import torch

        from xray.inference.models import load_model

        if threads:
            torch.set_num_threads(threads)
        self.loaded = load_model(model)
        self.batch_size = batch_size
        self.population = population

    def __call__(self, batch: Any) -> Any:
        """Score one batch (pyarrow Table from `decode_batch`) into result rows, in the same order."""
        import pyarrow as pa

        from xray.analysis.results import arrow_schema

        loaded = self.loaded
        rows = batch.to_pylist()
        good = [r for r in rows if r["error"] is None]
        analyses = self._analyse([unpack_image(r) for r in good], good)
        out = []
        for row in rows:
            base = {"file": row["file"], "model": loaded.name, "version": loaded.version,
                    "label_names": loaded.label_names}  # fmt: skip
            found = analyses.get(row["index"])
            if row["error"] is not None or isinstance(found, str):
                out.append(result_row(**base, error=row["error"] or found))
            else:
                analysis, choice = found
                out.append(result_row(**base, label=analysis.label, probabilities=analysis.probabilities,
                                      in_scope=analysis.in_scope, reasons=analysis.reasons, threshold=choice.threshold,
                                      population=choice.population, population_reason=choice.why))  # fmt: skip
            out[-1]["index"] = row["index"]
            out[-1]["true_label"] = row.get("true_label")
        schema = arrow_schema(loaded.label_names, true_label=True).append(pa.field("index", pa.int64()))
        return pa.Table.from_pylist(out, schema=schema)

    def _analyse(self, images: list[Any], rows: list[dict[str, Any]]) -> dict[int, Any]:
        """(analysis, threshold choice) of each image by row index, from `analyse_many`.

        If the batch fails, image by image, so one bad image fails alone (its value is then the error text).
        """
        from xray.analysis.batch import threshold_choices
        from xray.analysis.pipeline import analyse_many

        choices = threshold_choices(self.loaded, images, self.population)
        try:
            analyses = analyse_many(self.loaded, images, batch_size=self.batch_size,
                                    thresholds=[c.threshold for c in choices])  # fmt: skip
            return {r["index"]: (a, c) for r, a, c in zip(rows, analyses, choices, strict=True)}
        except Exception:  # noqa: BLE001
            logger.exception("a batch failed; scoring its images one by one")
        found: dict[int, Any] = {}
        for row, image, choice in zip(rows, images, choices, strict=True):
            try:
                analysis = analyse_many(self.loaded, [image], batch_size=1, thresholds=[choice.threshold])[0]
                found[row["index"]] = (analysis, choice)
            except Exception as exc:  # noqa: BLE001
                found[row["index"]] = f"analysis failed: {exc}"
        return found


# ---------------------------------------------------------------------------------------------------------
# The job


def _item_rows(factory: Callable[[], Iterable[Any]], prefix: str, chunk: int) -> Iterator[Any]:
    """Rows `index, file, data, true_label` from a sample generator, `chunk` at a time (a streaming dataset)."""
    import pyarrow as pa

    schema = pa.schema([("index", pa.int64()), ("file", pa.string()), ("data", pa.large_binary()),
                        ("true_label", pa.string())])  # fmt: skip
    rows: list[dict[str, Any]] = []
    for i, sample in enumerate(factory()):
        source = getattr(sample, "source", sample)
        label = getattr(sample, "label", None)
        if isinstance(source, bytes | bytearray):
            rows.append({"index": i, "file": f"{prefix}{i}", "data": bytes(source), "true_label": label})
        else:
            rows.append({"index": i, "file": str(source), "data": None, "true_label": label})
        if len(rows) >= chunk:
            yield pa.Table.from_pylist(rows, schema=schema)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=schema)


def _expand_items(batch: Any, factory: Callable[[], Iterable[Any]], prefix: str, chunk: int) -> Iterator[Any]:
    """Ray Data read task: the rows of `factory()`, produced lazily inside the cluster."""
    yield from _item_rows(factory, prefix, chunk)


def connect(address: str | None = None) -> bool:
    """Connect to Ray; returns True when this call started it (and the caller should shut it down).

    `address` names a cluster; without one, `ray.init()` connects to the cluster in RAY_ADDRESS or one started on
    this machine by `ray start --head`, else starts a local one. Does nothing when Ray is already initialised in
    this process (e.g. by a test or a notebook).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    # the workers see the same XRAY_* settings (models folder, ONNX cache, image size limit) as the driver
    env = {k: v for k, v in os.environ.items() if k.startswith("XRAY_")}
    ray.init(address=address or None, include_dashboard=False, runtime_env={"env_vars": env} if env else None)
    return True


def score(
    paths: Sequence[str | Path] | None = None,
    *,
    model: str,
    out: str | Path,
    items: Callable[[], Iterable[Any]] | None = None,
    item_prefix: str = "item:",
    address: str | None = None,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    threads_per_worker: int | None = None,
    decode_cpus: float = 0.5,
    batch_size: int = 32,
    files_per_block: int = FILES_PER_BLOCK,
    progress: bool = True,
    population: str | None = None,
) -> ScoreSummary:
    """Score files (or a sample generator) on Ray and write one row per input to `out` (.parquet or .csv).

    Args:
        paths: files, folders or fsspec URLs (see `list_inputs`); or None with `items`.
        model: model name, loaded once by every worker (and on the driver, for the class names).
        out: output file, local or fsspec URL, `.parquet` or `.csv`.
        items: a picklable callable returning an iterable of samples with `.source` (bytes or a path/URL) and
            `.label` (written as `true_label`), e.g. a streaming Hugging Face dataset; iterated inside the cluster.
        item_prefix: `file` column of samples given as bytes: `<prefix><index>`.
        address: Ray cluster address (`ray://host:10001`, `host:6379`, `auto`); None: see `connect`.
        workers: scoring actors (each holds one copy of the model).
        cpus_per_worker: CPUs Ray reserves for each actor.
        threads_per_worker: torch threads per actor; default `cpus_per_worker` rounded up.
        decode_cpus: CPUs Ray reserves for each decode task.
        batch_size: images per forward pass (and per scoring call).
        files_per_block: files per decode task.
        progress: show Ray Data's progress bars.
        population: the patients' group for images without a DICOM age ("Adult" / "Child"; None: adults), for
            models with one threshold per population.

    Returns:
        A `ScoreSummary`.
    """
    from xray.inference.models import load_model
    from xray.inference.population import parse_population

    if (paths is None) == (items is None):
        raise ValueError("give either paths or items")
    label_names = load_model(model).label_names  # fails early, on the driver, for an unknown model
    parse_population(population)  # and for an unknown patient group
    ray = require_ray()
    started = connect(address)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars, context.target_max_block_size)
    context.execution_options.preserve_order = True  # rows come back in input order
    context.enable_progress_bars = progress
    start = time.perf_counter()
    try:
        if items is None:
            files = list_inputs(paths)
            if not files:
                raise XrayError(f"No image or DICOM files found in {', '.join(map(str, paths))}")
            rows = [{"index": i, "file": f} for i, f in enumerate(files)]
            dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / files_per_block)))
        else:
            # one read task iterates the generator; small blocks let the decode tasks start while it reads
            context.target_max_block_size = 8 * 1024 * 1024
            dataset = ray.data.range(1, override_num_blocks=1).map_batches(
                _expand_items, fn_kwargs={"factory": items, "prefix": item_prefix, "chunk": files_per_block},
                batch_format="pyarrow", batch_size=None, num_cpus=decode_cpus,
            )  # fmt: skip
        dataset = dataset.map_batches(decode_batch, batch_format="pyarrow", batch_size=files_per_block,
                                      num_cpus=decode_cpus)  # fmt: skip
        dataset = dataset.map_batches(
            Scorer, fn_constructor_kwargs={"model": model, "batch_size": batch_size, "population": population,
                                           "threads": threads_per_worker or max(1, math.ceil(cpus_per_worker))},
            batch_format="pyarrow", batch_size=batch_size, num_cpus=cpus_per_worker,
            compute=ray.data.ActorPoolStrategy(size=workers),  # a fixed pool: `concurrency=workers` before Ray 2.51
        )  # fmt: skip
        errors = out_of_scope = 0
        with ResultsWriter(out, label_names, true_label=items is not None) as writer:
            for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                rows_out = table.to_pylist()
                errors += sum(r["error"] is not None for r in rows_out)
                out_of_scope += sum(r["in_scope"] is False for r in rows_out)
                writer.write(rows_out)
        return ScoreSummary(writer.rows, errors, out_of_scope, time.perf_counter() - start, str(out))
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved[0], saved[1]
        context.target_max_block_size = saved[2]
        if started:
            ray.shutdown()


def run_ray_predict_command(args: Any, items: Callable[[], Iterable[Any]] | None = None) -> int:
    """Run `python -m xray predict ... --ray [ADDRESS] --out FILE`; exit code 1 when some input failed, 2 on misuse.

    Args:
        args: the parsed `predict` arguments (`paths`, `model`, `out`, `ray`, `workers`, ...).
        items: sample generator of `--dataset` (built by the command line, which may import the training layer).
    """
    from xray.analysis.results import output_format
    from xray.config import get_settings

    address = args.ray or None
    if args.cam or args.json or args.csv:
        logger.error("--ray writes one table: use --out FILE.parquet or --out FILE.csv (not --cam, --json or --csv).")
        return 2
    if not args.out:
        logger.error("--ray needs --out FILE.parquet or --out FILE.csv (a local path or a URL such as s3://...).")
        return 2
    if address and not args.paths and items is None and Path(address).exists():
        logger.error("'%s' was read as the Ray address: put the paths before --ray, or write --ray=ADDRESS.", address)
        return 2
    if not args.paths and items is None:
        logger.error("Nothing to score: give files, folders or URLs, or --dataset NAME.")
        return 2
    output_format(args.out)  # a wrong suffix fails before the cluster starts
    require_ray()
    summary = score(
        args.paths if items is None else None, items=items, item_prefix=f"hf:{args.dataset}:{args.split or 'all'}:",
        model=args.model or get_settings().default_model, out=args.out, address=address, workers=args.workers,
        cpus_per_worker=args.cpus_per_worker, threads_per_worker=args.threads_per_worker,
        decode_cpus=args.decode_cpus, batch_size=args.batch_size, population=getattr(args, "population", None),
    )  # fmt: skip
    print(f"{summary.files} rows ({summary.errors} unreadable, {summary.out_of_scope} out of scope) in "
          f"{summary.seconds:.1f} s, {summary.images_per_second:.1f} images/s -> {summary.out}")  # fmt: skip
    return 1 if summary.errors else 0
