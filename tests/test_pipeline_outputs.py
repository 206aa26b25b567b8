"""scripts/pipeline_outputs.py: the fixed image set and what a comparison of two dumps reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("pipeline_outputs")


def test_image_set_is_fixed_and_covers_every_source(script, shared_data: Path) -> None:
    files = script.image_set(shared_data)
    assert files == script.image_set(shared_data)  # seeded: the same images on every checkout
    folders = [p.relative_to(shared_data).parts[0] for p in files]
    assert folders.count("kermany-val-fullres") == 16
    assert {f: folders.count(f) for f in ("adult-cxr", "covid-chestxray", "kermany-224", "lateral")} == {
        "adult-cxr": 30, "covid-chestxray": 30, "kermany-224": 30, "lateral": 10,
    }  # fmt: skip


def test_compare_reports_probability_verdict_and_heat_changes(script) -> None:
    row = {"probabilities": {"NORMAL": 0.7, "PNEUMONIA": 0.3}, "in_scope": True, "codes": [], "heat_in_lungs": 0.5,
           "heat_in_chest": 0.8}  # fmt: skip
    before = {"pneumonia:adult-cxr/test/a.jpg": row, "pneumonia:lateral/b.jpg": {**row, "heat_in_lungs": None}}
    after = {
        "pneumonia:adult-cxr/test/a.jpg": {**row, "probabilities": {"NORMAL": 0.69, "PNEUMONIA": 0.31},
                                           "heat_in_chest": 0.79},
        "pneumonia:lateral/b.jpg": {**row, "heat_in_lungs": None, "in_scope": False, "codes": ["lateral_view"]},
    }  # fmt: skip
    lines = script.compare(before, after)
    assert lines[0] == "2 image x model pairs"
    assert lines[1] == "largest probability change: 0.01"
    assert lines[2] == "gate verdicts or reasons changed: 1 (pneumonia:lateral/b.jpg)"
    assert lines[3] == "heat shares, adult-cxr: largest change 0.0100 over 1 pairs"
    unchanged = script.compare(before, before)
    assert unchanged[1:3] == ["largest probability change: 0", "gate verdicts or reasons changed: 0"]
    with pytest.raises(SystemExit, match="different images"):
        script.compare(before, {"pneumonia:adult-cxr/test/a.jpg": row})


def test_compare_counts_heat_check_warnings_that_appear_or_go(script) -> None:
    row = {"probabilities": {"NORMAL": 0.7, "PNEUMONIA": 0.3}, "in_scope": True, "codes": [], "heat_in_lungs": 0.3,
           "heat_in_chest": 0.45}  # fmt: skip
    before = {"covid:kermany-224/test/a.jpeg": row, "covid:kermany-224/test/b.jpeg": {**row, "heat_in_chest": 0.6},
              "covid:kermany-224/test/c.jpeg": {**row, "heat_in_chest": 0.7}}  # fmt: skip
    after = {"covid:kermany-224/test/a.jpeg": {**row, "heat_in_chest": 0.55},
             "covid:kermany-224/test/b.jpeg": {**row, "heat_in_chest": 0.4},
             "covid:kermany-224/test/c.jpeg": {**row, "heat_in_chest": 0.72}}  # fmt: skip
    lines = script.compare(before, after)
    assert lines[-1] == "heat check, kermany-224: median change 0.1000; warnings 1 -> 1 (1 new, 1 gone)"
    assert lines[-2] == "heat shares, kermany-224: largest change 0.2000 over 3 pairs"
