"""Request-path benchmark: what one Diagnose upload costs, stage by stage, on the code the app runs.

`python -m xray.bench_request [--model pneumonia] [--repeats 20]` times, for a 224-px JPEG, a 1776 x 1416 JPEG and
a 2048 x 2500 16-bit DICOM, each stage of `xray.web.diagnose.diagnose` in the order it runs them:

- decode: `xray.web.forms.load_image` (size checks, PIL / pydicom decoding, grey -> RGB);
- predict + Grad-CAM: `xray.inference.explain.explain` (one forward, one head backward);
- input gate: `xray.analysis.pipeline.check_input` on the prediction's features (image checks, OOD score, a
  second forward pass only for models whose statistics were fitted on the gate's own JPEG copy);
- lung fields: `xray.trust.lungs.lung_fields` on the heat check's scoring grid (the lung segmentation model at its
  low input resolution, once per upload; the intensity heuristic when the model folder is missing);
- heat check: `xray.trust.lungs.assess_heatmap` on those fields (the shares of heat over lungs and chest);
- storage: `ImageStore.put` (the upload, bit for bit) + `ImageStore.put_heatmap`;
- database: `xray.records.crud.create_record` (SQLite, WAL);
- display: `xray.web.views.make_view` (display-size copies for the opacity slider);

and then the whole `diagnose` call (p50 / p95), which is what a doctor waits for (queueing and the browser
excluded). `make bench` prints this table after the model-only one (`python -m xray.bench`).
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
STAGES = ("decode", "predict + Grad-CAM", "input gate", "lung fields", "heat check", "storage", "database",
          "display")


def _dicom_16bit(pixels: np.ndarray, rows: int = 2500, columns: int = 2048) -> bytes:
    """A 16-bit MONOCHROME2 DX DICOM of `pixels` resized to rows x columns (a typical detector size)."""
    import cv2
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    big = cv2.resize(grey.astype(np.float32), (columns, rows), interpolation=cv2.INTER_LINEAR)
    values = np.clip(big / 255.0 * 4095, 0, 4095).astype(np.uint16)  # 12 bits stored, as most detectors
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.PatientName, ds.StudyDate = "Bench^Patient", "20250101"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = values.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def bench_inputs() -> list[tuple[str, str, bytes]]:
    """(description, file name, bytes) of the three benchmark uploads, from ../shared/data when present."""
    from xray.imaging.io import read_image

    small = sorted((DATA / "kermany-224" / "test" / "NORMAL").glob("*.jpeg"))
    full = DATA / "kermany-val-fullres" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg"
    examples = sorted((ROOT / "examples").glob("*.jpeg"))
    small_file = small[0] if small else examples[0]
    full_file = full if full.is_file() else examples[0]
    inputs = []
    for path in (small_file, full_file):
        image = read_image(path)
        width, height = image.size
        inputs.append((f"{width}x{height} JPEG", path.name, path.read_bytes()))
    dicom = _dicom_16bit(read_image(full_file).pixels)
    inputs.append(("2048x2500 16-bit DICOM", "bench.dcm", dicom))
    return inputs


def _p50(samples: list[float]) -> float:
    return statistics.median(samples)


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def bench_request_path(model_name: str, *, repeats: int = 20, warmup: int = 3) -> list[dict[str, object]]:
    """Stage and whole-request timings (ms) for each benchmark input; see the module docstring."""
    from sqlmodel import Session

    from xray.analysis.pipeline import check_input
    from xray.config import Settings
    from xray.inference.explain import explain
    from xray.records import auth, crud
    from xray.records.storage import ImageStore
    from xray.trust.lungs import assess_heatmap, lung_fields, score_shape
    from xray.web.diagnose import diagnose
    from xray.web.forms import load_image
    from xray.web.registry import load_registered_model
    from xray.web.startup import open_database
    from xray.web.views import make_view

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        engine = open_database(settings, hint_first_account=False)
        store = ImageStore(Path(tmp) / "images")
        with Session(engine) as session:
            doctor = auth.add_doctor(session, username="timing", password="correct horse battery")
        loaded = load_registered_model(model_name, [model_name])
        for description, filename, data in bench_inputs():
            stages: dict[str, list[float]] = {name: [] for name in STAGES}
            for i in range(warmup + repeats):
                # a different byte at the end of the file each time, so storage really writes (content hashing)
                upload = data + i.to_bytes(4, "little") if filename.endswith(".jpeg") else data
                marks = [time.perf_counter()]
                image = load_image(upload, filename=filename, max_pixels=settings.max_image_pixels)
                marks.append(time.perf_counter())
                prediction, explanation = explain(loaded, image)
                marks.append(time.perf_counter())
                check_input(loaded, image, features=explanation.features)
                marks.append(time.perf_counter())
                # what assess_heatmap(heatmap, image) does in the pipeline, split in its two parts
                fields = lung_fields(image, shape=score_shape(*image.pixels.shape[:2]))
                marks.append(time.perf_counter())
                heat = assess_heatmap(explanation.heatmap, image, fields=fields)
                marks.append(time.perf_counter())
                image_sha, heat_sha = store.put(upload), store.put_heatmap(explanation.heatmap)
                marks.append(time.perf_counter())
                with Session(engine) as session:
                    crud.create_record(
                        session, doctor=doctor, patient_name="Bench", exam_date=_today(), image_sha256=image_sha,
                        model_name=loaded.name, model_version=str(loaded.version), label_names=loaded.label_names,
                        probabilities=prediction.probabilities, predicted_label=prediction.label,
                        heatmap_sha256=heat_sha, heat_in_lungs=heat.heat_in_lungs,
                    )  # fmt: skip
                marks.append(time.perf_counter())
                make_view(image, explanation.heatmap, target_label=prediction.label, method="gradcam",
                          record_id=None)  # fmt: skip
                marks.append(time.perf_counter())
                if i >= warmup:
                    for name, start, end in zip(STAGES, marks[:-1], marks[1:], strict=True):
                        stages[name].append((end - start) * 1000)
            whole = _time_whole(
                lambda i, d=data, f=filename: _diagnose_once(
                    diagnose, engine, store, doctor, d + i.to_bytes(4, "little") if f.endswith(".jpeg") else d, f,
                    loaded.name, settings,
                ),
                repeats, warmup,
            )  # fmt: skip
            rows.append({
                "input": description,
                **{name: _p50(values) for name, values in stages.items()},
                "sum of stages": sum(_p50(values) for values in stages.values()),
                "diagnose p50": _p50(whole),
                "diagnose p95": _p95(whole),
            })  # fmt: skip
            logger.info("%s done", description)
        engine.dispose()
    return rows


def _today():
    from datetime import date

    return date.today()


def _diagnose_once(diagnose, engine, store, doctor, data, filename, model_name, settings) -> None:  # noqa: ANN001
    from sqlmodel import Session

    with Session(engine) as session:
        diagnose(
            session, store, doctor=doctor, source=data, filename=filename, patient_name="Bench", exam_date=_today(),
            model_name=model_name, allowed_models=[model_name], max_upload_bytes=int(settings.max_upload_mb * 2**20),
            max_pixels=settings.max_image_pixels,
        )  # fmt: skip


def _time_whole(call: Callable[[int], None], repeats: int, warmup: int) -> list[float]:
    out = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        call(10_000 + i)
        if i >= warmup:
            out.append((time.perf_counter() - start) * 1000)
    return out


def to_markdown(rows: list[dict[str, object]]) -> str:
    """The stage table: one row per input, p50 milliseconds per stage, then the whole diagnose p50 / p95."""
    head = "| input | " + " | ".join(STAGES) + " | sum of stages | diagnose p50 / p95 |"
    lines = [head, "|" + "---|" * (len(STAGES) + 3)]
    for row in rows:
        cells = " | ".join(f"{row[name]:.1f}" for name in STAGES)
        lines.append(f"| {row['input']} | {cells} | {row['sum of stages']:.1f} | "
                     f"{row['diagnose p50']:.1f} / {row['diagnose p95']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the request-path benchmark and print a Markdown table (milliseconds, p50 unless named)."""
    from xray.bench import machine_description
    from xray.config import get_settings
    from xray.web.startup import serving_threads

    parser = argparse.ArgumentParser(prog="python -m xray.bench_request", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pneumonia", help="model name (default: the bundled pneumonia model)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: as the app serves, see xray.web.startup.serving_threads)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # the thread pools the app serves with (xray.web.startup.serving_threads), so the figures are the app's
    settings = get_settings()
    serving_threads(settings.model_copy(update={"num_threads": args.threads}) if args.threads else settings)
    rows = bench_request_path(args.model, repeats=args.repeats)
    print(f"Machine: {machine_description()}; model {args.model}; request path, ms (p50 of {args.repeats})")
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
