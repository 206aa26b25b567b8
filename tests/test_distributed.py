"""Batch scoring on Ray Data (`xray.analysis.distributed`) against the single-process path, and streamed hub datasets.

A real local Ray cluster (2 CPUs) scores a few hundred real X-rays from ../shared/data plus broken files with the
tiny real timm model; every row must equal `python -m xray predict` without Ray (`xray.analysis.batch`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster with 2 CPUs for this module, shut down afterwards."""
    ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """200 real X-rays (100 Kermany children, 100 adults) and a folder of bad and odd files."""
    kermany = sorted((shared_data / "kermany-224" / "test").rglob("*.jpeg"))[::6][:100]
    adults = sorted((shared_data / "adult-cxr" / "test").rglob("*.jpg"))[::2][:100]
    assert len(kermany) == 100 and len(adults) == 100
    odd = tmp_path_factory.mktemp("odd")
    (odd / "truncated.png").write_bytes(_png(kermany[0])[:400])
    (odd / "notes.jpg").write_text("this is not an image\n", encoding="utf-8")
    (odd / "empty.png").write_bytes(b"")
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(odd / "colour-photo.png")
    return [str(p) for p in kermany + adults], odd


def _png(path: Path) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def _single_process(model_name: str, files: list[str]) -> dict[str, dict]:
    from xray.analysis.batch import predict_files
    from xray.inference.models import load_model

    results = predict_files(load_model(model_name), [Path(f) for f in files], progress=False)
    return {r.file: r.as_dict() for r in results}


def _assert_same(rows: list[dict], expected: dict[str, dict], label_names: list[str]) -> None:
    assert [r["file"] for r in rows] == list(expected)  # one row per input, in input order
    for row in rows:
        want = expected[row["file"]]
        assert row["error"] == want.get("error"), row["file"]
        if want.get("error"):
            assert row["label"] is None and row["in_scope"] is None
            continue
        assert row["label"] == want["label"], row["file"]
        for name in label_names:
            assert abs(row[f"p_{name}"] - want["probabilities"][name]) <= TOLERANCE, row["file"]
        assert row["in_scope"] == want["in_scope"] and list(row["reasons"]) == want["reasons"], row["file"]
        for key in ("threshold", "population", "population_reason"):
            assert row[key] == want[key], (row["file"], key)


def test_importing_the_module_needs_no_ray_and_no_torch():
    code = (
        "import sys; import xray.analysis.distributed as d; "
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_without_ray_the_command_exits_2_naming_the_requirements_file(tmp_path):
    # `sys.modules["ray"] = None` makes `import ray` fail exactly as when Ray is not installed
    code = (
        "import sys; sys.modules['ray'] = None; from xray.__main__ import main; "
        f"sys.exit(main(['predict', {str(tmp_path)!r}, '--ray', '--out', {str(tmp_path / 'r.parquet')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "pip install -r requirements-ray.txt" in done.stderr


def test_pixels_survive_the_trip_between_decode_tasks_and_actors(kermany_fullres):
    from xray.analysis.distributed import pack_image, unpack_image
    from xray.imaging.io import read_image

    grey = read_image(kermany_fullres[0])
    colour = read_image(_colour_png())
    for image in (grey, colour):
        packed = pack_image(image)
        back = unpack_image(packed)
        np.testing.assert_array_equal(back.pixels, image.pixels)
        assert back.pixels.shape == image.pixels.shape and not back.pixels.flags.writeable
        assert (back.source_format, back.is_color, back.metadata) == (image.source_format, image.is_color,
                                                                       image.metadata)  # fmt: skip
    assert pack_image(grey)["channels"] == 1 and pack_image(colour)["channels"] == 3


def _colour_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_fsspec_urls_are_listed_decoded_and_written(inputs, tmp_path):
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xray.analysis.distributed import decode_batch, list_inputs, unpack_image
    from xray.analysis.results import ResultsWriter, result_row
    from xray.imaging.io import read_image

    files, odd = inputs
    folder = Path(files[0]).parent
    urls = list_inputs([f"file://{folder}", f"file://{odd}/*.png"])
    assert urls[0].startswith("file://") and len(urls) == len(list(folder.glob("*.jpeg"))) + 3
    table = pa.Table.from_pylist([{"index": i, "file": u} for i, u in enumerate(urls[:2] + urls[-3:])])
    decoded = decode_batch(table).to_pylist()
    np.testing.assert_array_equal(unpack_image(decoded[0]).pixels, read_image(urls[0][len("file://"):]).pixels)
    assert [d["error"] is None for d in decoded] == [True, True, True, False, False]  # colour, empty, truncated
    # results go to any fsspec URL (here the in-memory file system)
    with ResultsWriter("memory://bench/results.parquet", ["NORMAL", "PNEUMONIA"]) as writer:
        writer.write([result_row("a.png", "m", "v", ["NORMAL", "PNEUMONIA"], error="broken")])
    with fsspec.open("memory://bench/results.parquet", "rb") as handle:
        assert pq.read_table(handle).to_pylist()[0]["error"] == "broken"


def test_ray_rows_equal_the_single_process_path(ray_cluster, inputs, tiny_model_dir, tmp_path):
    import pyarrow.parquet as pq

    from xray.analysis.distributed import list_inputs, score

    files, odd = inputs
    model = f"local-dir:{tiny_model_dir}"
    listed = list_inputs([*files, odd])
    assert len(listed) == 204
    expected = _single_process(model, listed)
    # two actors share the 2 CPUs (0.5 each) with the decode tasks
    summary = score([*files, odd], model=model, out=tmp_path / "r.parquet", workers=2, cpus_per_worker=0.5,
                    decode_cpus=0.5, progress=False)  # fmt: skip
    rows = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert summary.files == len(rows) == 204
    _assert_same(rows, expected, ["NORMAL", "PNEUMONIA"])
    errors = {Path(r["file"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"truncated.png", "notes.jpg", "empty.png"} and summary.errors == 3
    assert "text file" in errors["notes.jpg"] and "empty" in errors["empty.png"]
    photo = next(r for r in rows if r["file"].endswith("colour-photo.png"))
    assert photo["in_scope"] is False and photo["reasons"]
    assert {r["model"] for r in rows} == {model} and len({r["version"] for r in rows}) == 1


def test_ray_decides_each_image_with_its_populations_threshold(ray_cluster, split_model, aged_folder, tmp_path):
    """DICOM ages and --population pick the threshold on the Ray path exactly as in the single-process one."""
    import pyarrow.parquet as pq

    from xray.__main__ import main

    folder, model = aged_folder, f"local-dir:{split_model}"
    for population, no_age in ((None, ("adults", 1.0, "NORMAL")), ("Child", ("children", 0.0, "PNEUMONIA"))):
        extra = ["--population", population] if population else []
        ray_out, single_out = tmp_path / f"ray-{population}.parquet", tmp_path / f"single-{population}.parquet"
        assert main(["predict", str(folder), "--model", model, "--ray", "--out", str(ray_out), *extra]) == 0
        assert main(["predict", str(folder), "--model", model, "--out", str(single_out), *extra]) == 0
        rows = pq.read_table(ray_out).to_pylist()
        assert rows == pq.read_table(single_out).to_pylist()
        assert [(r["population"], r["threshold"], r["label"]) for r in rows] == [
            ("children", 0.0, "PNEUMONIA"), ("adults", 1.0, "NORMAL"), no_age
        ]  # fmt: skip
        assert rows[0]["population_reason"] == "from the DICOM age 7 years"


def test_the_command_line_writes_csv_and_exits_1_for_unreadable_files(ray_cluster, inputs, tiny_model_dir, tmp_path):
    import csv

    from xray.__main__ import main

    _files, odd = inputs
    model = f"local-dir:{tiny_model_dir}"
    out = tmp_path / "odd.csv"
    assert main(["predict", str(odd), "--model", model, "--ray", "--out", str(out)]) == 1
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["file"]).name for r in rows] == ["colour-photo.png", "empty.png", "notes.jpg", "truncated.png"]
    assert list(rows[0]) == ["file", "model", "version", "label", "p_NORMAL", "p_PNEUMONIA", "threshold", "population",
                             "population_reason", "in_scope", "reasons", "error"]  # fmt: skip
    assert rows[0]["in_scope"] == "false" and rows[0]["reasons"] and not rows[0]["error"]
    assert all(r["error"] and not r["label"] for r in rows[1:])
    # the single-process path writes the same table with --out
    single = tmp_path / "single.csv"
    assert main(["predict", str(odd), "--model", model, "--out", str(single)]) == 1
    assert single.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    # misuse is refused before any work
    assert main(["predict", str(odd), "--model", model, "--ray"]) == 2  # no --out
    assert main(["predict", str(odd), "--model", model, "--ray", "--out", str(tmp_path / "r.txt")]) == 2
    assert main(["predict", "--model", model, "--ray", str(odd), "--out", str(out)]) == 2  # folder taken as address


def _hub_like_dataset(root: Path, test_files: list[Path], train_files: list[Path]) -> Path:
    """A dataset folder as on the hub: parquet files with an Image (bytes embedded) and a ClassLabel column."""
    import datasets

    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=["NORMAL", "PNEUMONIA"]),
        "patient_id": datasets.Value("string"),
    })  # fmt: skip
    (root / "data").mkdir(parents=True)
    for split, files in (("test", test_files), ("train", train_files)):
        table = {
            "image": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
            "label": [1 if f.parent.name in ("PNEUMONIA", "COVID-19") else 0 for f in files],
            "patient_id": [f.stem for f in files],
        }
        dataset = datasets.Dataset.from_dict(table, features=features)
        dataset.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def hub_dataset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    kermany = sorted((shared_data / "kermany-224" / "test").rglob("*.jpeg"))
    test_files = kermany[:6] + kermany[-6:]
    train_files = sorted((shared_data / "kermany-224" / "train").rglob("*.jpeg"))[:4]
    return _hub_like_dataset(tmp_path_factory.mktemp("hub") / "ds", test_files, train_files), test_files


def test_streaming_hub_dataset_yields_the_same_samples_lazily(hub_dataset):
    from xray.imaging.io import read_image
    from xray.training.data import load_hf_dataset, read_pixels

    root, test_files = hub_dataset
    stream = load_hf_dataset(str(root), streaming=True)
    assert isinstance(stream, Iterator) and not isinstance(stream, list)
    streamed = list(stream)
    whole = load_hf_dataset(str(root))
    key = [(s.label, s.group, s.split, s.data_source) for s in whole]
    assert sorted(key) == sorted((s.label, s.group, s.split, s.data_source) for s in streamed)
    assert sum(s.split == "test" for s in streamed) == 12 and sum(s.split == "train" for s in streamed) == 4
    # undecoded: the file's own bytes, for the app's reader; decoded: PIL images, as without streaming
    raw = list(load_hf_dataset(str(root), streaming=True, split="test", decode=False))
    assert [s.source for s in raw] == [f.read_bytes() for f in test_files]
    np.testing.assert_array_equal(read_image(raw[0].source).pixels, read_image(test_files[0]).pixels)
    first = next(load_hf_dataset(str(root), streaming=True, split="test"))
    assert read_pixels(first, (224, 224)).shape[:2] == (224, 224)


def test_streamed_dataset_scored_on_ray_equals_the_single_process_path(ray_cluster, hub_dataset, tiny_model_dir,
                                                                      tmp_path):  # fmt: skip
    import pyarrow.parquet as pq

    from xray.__main__ import main

    root, test_files = hub_dataset
    model = f"local-dir:{tiny_model_dir}"
    expected = list(_single_process(model, [str(f) for f in test_files]).values())
    out = tmp_path / "ds.parquet"
    argv = ["predict", "--dataset", str(root), "--split", "test", "--model", model, "--ray", "--out", str(out)]
    assert main(argv) == 0
    rows = pq.read_table(out).to_pylist()
    assert [r["true_label"] for r in rows] == [f.parent.name for f in test_files]
    assert [r["file"] for r in rows] == [f"hf:{root}:test:{i}" for i in range(12)]
    _assert_same(rows, {r["file"]: e for r, e in zip(rows, expected, strict=True)}, ["NORMAL", "PNEUMONIA"])
