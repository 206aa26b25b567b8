"""Classify many files at once: the engine of `python -m xray predict` (files or folders, per-file errors).

Every file goes through `xray.analysis.pipeline.analyse_many`, the same pipeline as the app: each row carries the
input gate's verdict (`in_scope`, `reasons`) next to the prediction, and the threshold it was decided with. A model
with one threshold per population decides each file as the app does (`choose_threshold`): the DICOM PatientAge
when the file has one, else `--population` (default adults).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image
from tqdm import tqdm

from xray.analysis.pipeline import analyse_many
from xray.errors import XrayError
from xray.imaging.io import IMAGE_EXTENSIONS, read_image
from xray.inference.models import LoadedModel, load_model
from xray.inference.population import ThresholdChoice, choose_threshold, parse_population
from xray.trust.operating import describe_threshold

logger = logging.getLogger(__name__)


@dataclass
class FileResult:
    """The outcome for one file: a prediction, or the reason it could not be read."""

    file: str
    model: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    in_scope: bool | None = None
    reasons: list[str] | None = None
    error: str | None = None
    threshold: float | None = None
    population: str | None = None
    population_reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict; `error` only appears for failed files."""
        out = {"file": self.file, "label": self.label, "probabilities": self.probabilities, "model": self.model,
               "threshold": self.threshold, "population": self.population,
               "population_reason": self.population_reason, "in_scope": self.in_scope,
               "reasons": self.reasons}  # fmt: skip
        if self.error:
            out["error"] = self.error
        return out


def iter_image_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Yield the given files, and the image/DICOM files found recursively in given folders, sorted."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            yield path


def threshold_choices(loaded: LoadedModel, images: list, population: str | None = None) -> list[ThresholdChoice]:
    """Each image's threshold as the app chooses it: its DICOM PatientAge, else `population` (None: adults)."""
    return [
        choose_threshold(loaded, patient_age=(getattr(image, "metadata", None) or {}).get("PatientAge"),
                         population=population)
        for image in images
    ]  # fmt: skip


def predict_files(
    loaded: LoadedModel,
    files: list[Path],
    *,
    batch_size: int = 32,
    cam_dir: Path | None = None,
    progress: bool = True,
    population: str | None = None,
) -> list[FileResult]:
    """Predict every file; unreadable files get an `error` instead of stopping the batch.

    Args:
        loaded: the model.
        files: image or DICOM files.
        batch_size: images per forward pass.
        cam_dir: when given, write `<stem>_cam.png` Grad-CAM overlays of the predicted class there.
        progress: show a progress bar on stderr.
        population: the patients' group ("Adult" / "Child", `adults` / `children`) for files without a DICOM age;
            None: adults, as in the app. Only models with one threshold per population use it.

    Raises:
        ValueError: an unknown population.
    """
    parse_population(population)  # a wrong group fails before any file is read
    results: list[FileResult] = []
    pending: list[tuple[FileResult, object]] = []
    cam_names: set[str] = set()

    def flush() -> None:
        images = [img for _, img in pending]
        choices = threshold_choices(loaded, images, population)
        analyses = analyse_many(loaded, images, batch_size=batch_size, heatmaps=cam_dir is not None,
                                thresholds=[c.threshold for c in choices])  # fmt: skip
        for (result, _image), analysis, choice in zip(pending, analyses, choices, strict=True):
            result.label, result.probabilities = analysis.label, analysis.probabilities
            result.threshold, result.population = choice.threshold, choice.population
            result.population_reason = choice.why or None
            result.in_scope, result.reasons = analysis.in_scope, analysis.reasons
            if cam_dir is not None:
                # Same file names in different folders (NORMAL/x.png, PNEUMONIA/x.png) must not overwrite each other.
                name, n = f"{Path(result.file).stem}_cam.png", 1
                while name in cam_names:
                    n += 1
                    name = f"{Path(result.file).stem}_{n}_cam.png"
                cam_names.add(name)
                cam_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(analysis.explanation.overlay()).save(cam_dir / name)
        pending.clear()

    for path in tqdm(files, desc="predict", unit="img", disable=not progress, file=sys.stderr):
        result = FileResult(file=str(path), model=loaded.name)
        results.append(result)
        try:
            pending.append((result, read_image(path)))
        except (XrayError, OSError) as exc:
            result.error = str(exc)
            logger.warning("%s: %s", path, exc)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return results


def write_csv(results: list[FileResult], label_names: list[str], stream: IO[str]) -> None:
    """Write one CSV row per file.

    Columns: file, model, label, one probability column per class, threshold, population, population_reason,
    in_scope, reasons, error. `in_scope` is true/false (empty for unreadable files); `reasons` joins the gate's
    reasons with " | "; `threshold` is empty for argmax models, `population` for a pooled threshold.
    """
    writer = csv.writer(stream)
    writer.writerow(["file", "model", "label", *[f"p_{name}" for name in label_names], "threshold", "population",
                     "population_reason", "in_scope", "reasons", "error"])  # fmt: skip
    for r in results:
        probs = [f"{r.probabilities[n]:.6f}" if r.probabilities else "" for n in label_names]
        scope = "" if r.in_scope is None else str(r.in_scope).lower()
        threshold = "" if r.threshold is None else f"{r.threshold:.6f}"
        writer.writerow([r.file, r.model, r.label or "", *probs, threshold, r.population or "",
                         r.population_reason or "", scope, " | ".join(r.reasons or []), r.error or ""])  # fmt: skip


def run_predict_command(args: argparse.Namespace) -> int:
    """Run `python -m xray predict`; exit code 1 when some file failed, 2 when no file was found."""
    from xray.config import get_settings

    files = list(iter_image_files(args.paths))
    if not files:
        logger.error("No image or DICOM files found in %s", ", ".join(args.paths) or "(no paths given)")
        return 2
    loaded = load_model(args.model or get_settings().default_model)
    results = predict_files(
        loaded, files, batch_size=args.batch_size, cam_dir=Path(args.cam) if args.cam else None, progress=not args.json,
        population=getattr(args, "population", None),
    )  # fmt: skip
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    elif args.csv != "-":
        width = max(len(r.file) for r in results)
        for r in results:
            detail = r.error or "  ".join(f"{k}={v:.3f}" for k, v in (r.probabilities or {}).items())
            if not r.error and r.threshold is not None:
                detail += f"  ({describe_threshold(r.threshold, r.population, r.population_reason)})"
            if r.in_scope is False:
                detail += "  OUT OF SCOPE: " + " ".join(r.reasons or [])
            print(f"{r.file:<{width}}  {r.label or 'ERROR':<12}  {detail}")
    if args.csv == "-":
        write_csv(results, loaded.label_names, sys.stdout)
    elif args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as stream:
            write_csv(results, loaded.label_names, stream)
    if getattr(args, "out", None):
        write_table(results, loaded, args.out)
    return 1 if any(r.error for r in results) else 0


def write_table(results: list[FileResult], loaded: LoadedModel, out: str) -> None:
    """Write `--out` (.parquet or .csv, local or fsspec URL): the table `python -m xray predict --ray` writes."""
    from xray.analysis.results import ResultsWriter, result_row

    with ResultsWriter(out, loaded.label_names) as writer:
        writer.write(
            result_row(r.file, r.model, loaded.version, loaded.label_names, label=r.label,
                       probabilities=r.probabilities, in_scope=r.in_scope, reasons=r.reasons, error=r.error,
                       threshold=r.threshold, population=r.population, population_reason=r.population_reason)
            for r in results
        )  # fmt: skip
