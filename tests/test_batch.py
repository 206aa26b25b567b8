import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xray.__main__ import main
from xray.analysis.batch import iter_image_files


@pytest.fixture()
def mixed_folder(tmp_path: Path, kermany_fullres: list[Path]) -> Path:
    folder = tmp_path / "in"
    (folder / "NORMAL").mkdir(parents=True)
    (folder / "PNEUMONIA").mkdir()
    shutil.copy(kermany_fullres[0], folder / "NORMAL" / "a.jpeg")
    shutil.copy(kermany_fullres[-1], folder / "PNEUMONIA" / "a.jpeg")  # same name, other folder
    (folder / "notes.txt").write_text("not an image and not scanned")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


def test_folder_scan_is_recursive_and_skips_non_images(mixed_folder: Path):
    names = [p.relative_to(mixed_folder).as_posix() for p in iter_image_files([mixed_folder])]
    assert names == ["NORMAL/a.jpeg", "PNEUMONIA/a.jpeg", "broken.png"]


def test_predict_json_reports_each_file_and_bad_file_is_not_fatal(
    mixed_folder: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    cams = tmp_path / "cams"
    code = main(["predict", str(mixed_folder), "--model", f"local-dir:{tiny_model_dir}", "--json", "--cam", str(cams)])
    rows = json.loads(capsys.readouterr().out)
    assert code == 1  # one file failed
    assert [Path(r["file"]).name for r in rows] == ["a.jpeg", "a.jpeg", "broken.png"]
    good, bad = rows[:2], rows[2]
    for row in good:
        assert row["model"] == f"local-dir:{tiny_model_dir}"
        assert row["label"] in {"NORMAL", "PNEUMONIA"}
        assert set(row["probabilities"]) == {"NORMAL", "PNEUMONIA"}
    assert bad["label"] is None and bad["probabilities"] is None and bad["error"]
    assert [r["in_scope"] for r in rows] == [True, True, None] and [r["reasons"] for r in rows] == [[], [], None]
    written = sorted(p.name for p in cams.iterdir())
    assert written == ["a_2_cam.png", "a_cam.png"]
    with Image.open(cams / "a_cam.png") as overlay, Image.open(mixed_folder / "NORMAL" / "a.jpeg") as original:
        assert overlay.size == original.size and overlay.mode == "RGB"


def test_predict_csv_has_a_probability_column_per_class(
    mixed_folder: Path, tiny_model_dir: Path, tmp_path: Path
):
    out = tmp_path / "out.csv"
    main(["predict", str(mixed_folder / "NORMAL"), "--model", f"local-dir:{tiny_model_dir}", "--csv", str(out)])
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 1
    assert list(rows[0]) == ["file", "model", "label", "p_NORMAL", "p_PNEUMONIA", "threshold", "population",
                             "population_reason", "in_scope", "reasons", "error"]  # fmt: skip
    assert rows[0]["in_scope"] == "true" and rows[0]["reasons"] == ""  # a real frontal X-ray
    # the tiny model has one pooled threshold: it is said, no population
    assert float(rows[0]["threshold"]) == 0.5 and rows[0]["population"] == rows[0]["population_reason"] == ""
    assert abs(float(rows[0]["p_NORMAL"]) + float(rows[0]["p_PNEUMONIA"]) - 1) < 1e-4


def test_predict_without_images_and_unknown_model_fail_cleanly(tmp_path: Path, tiny_model_dir: Path, caplog):
    assert main(["predict", str(tmp_path)]) == 2
    assert "No image or DICOM files found" in caplog.text
    image = tmp_path / "x.png"
    Image.new("L", (64, 64)).save(image)
    assert main(["predict", str(image), "--model", "no-such-model"]) == 2
    assert "Unknown model 'no-such-model'" in caplog.text


def test_predict_reports_the_input_check_of_an_out_of_scope_file(tiny_model_dir: Path, tmp_path: Path, capsys):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(photo)  # a colour image
    out = tmp_path / "out.csv"
    assert main(["predict", str(photo), "--model", f"local-dir:{tiny_model_dir}", "--json", "--csv", str(out)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["in_scope"] is False and any("colour" in r for r in row["reasons"])
    (line,) = list(csv.DictReader(io.StringIO(out.read_text())))
    assert line["in_scope"] == "false" and line["reasons"] == " | ".join(row["reasons"])


def test_predict_decides_each_file_with_its_populations_threshold_and_says_which(
    split_model: Path, aged_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    """DICOM age first, then --population (default adults, as in the app); every row names its threshold."""
    model = f"local-dir:{split_model}"
    expected = {
        None: ("adults", "no age given: most patients are adults", "NORMAL"),
        "Child": ("children", "chosen by the doctor", "PNEUMONIA"),
        "Adult": ("adults", "chosen by the doctor", "NORMAL"),
    }
    for population, (group, reason, label) in expected.items():
        extra = ["--population", population] if population else []
        assert main(["predict", str(aged_folder), "--model", model, "--json", *extra]) == 0
        child, adult, no_age = json.loads(capsys.readouterr().out)
        assert (child["population"], child["threshold"], child["label"]) == ("children", 0.0, "PNEUMONIA")
        assert child["population_reason"] == "from the DICOM age 7 years"
        assert (adult["population"], adult["threshold"], adult["label"]) == ("adults", 1.0, "NORMAL")
        assert adult["population_reason"] == "from the DICOM age 45 years"
        assert (no_age["population"], no_age["population_reason"], no_age["label"]) == (group, reason, label)
        assert no_age["threshold"] == (0.0 if group == "children" else 1.0)
    # the table says it in words too, and the CSV has the columns
    assert main(["predict", str(aged_folder), "--model", model, "--population", "Child"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(threshold 0.000 for children (from the DICOM age 7 years))" in lines[0]
    assert "(threshold 0.000 for children (chosen by the doctor))" in lines[2]
    out = tmp_path / "aged.csv"
    assert main(["predict", str(aged_folder), "--model", model, "--csv", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["threshold"], r["population"]) for r in rows] == [
        ("0.000000", "children"), ("1.000000", "adults"), ("1.000000", "adults")
    ]  # fmt: skip
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'Toddler' (choose from Adult, Child)"
        main(["predict", str(aged_folder), "--model", model, "--population", "Toddler"])
