"""`python -m xray.bench --train`: training images/s per architecture and setting, on real X-rays."""

from __future__ import annotations

import json
import re

import pytest

from xray.bench import main
from xray.training.throughput import SETTINGS, TrainSpeed, to_markdown


@pytest.fixture(scope="module")
def report(shared_data):
    import contextlib
    import io

    args = ["--train", "--data", str(shared_data / "kermany-val-fullres"), "--archs", "test_efficientnet",
            "--settings", *SETTINGS, "--batch", "4", "--steps", "1", "--warmup", "1", "--rounds", "2",
            "--threads", "2"]  # fmt: skip
    outputs = []
    for extra in ([], ["--json"]):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert main(args + extra) == 0
        outputs.append(buffer.getvalue())
    return outputs


def test_markdown_table_has_one_row_per_setting_with_median_range_and_ratio(report):
    text, _ = report
    lines = text.strip().splitlines()
    assert lines[0].startswith("Machine: ") and re.search(r"load average [\d.]+ before, [\d.]+ after", lines[0])
    assert "8 images, 2 rounds of 1 + 1 steps" in lines[0]
    assert re.match(r"Decode \+ resize to 224x224: [\d.]+ ms/image .*pixel cache read: [\d.]+ ms/image \(8 images\)",
                    lines[1])  # fmt: skip
    assert lines[2] == ("| architecture | setting | train img/s (batch 4), median | range over rounds | vs before | "
                        "img per CPU-s, median | range | vs before (CPU) |")  # fmt: skip
    rows = [line.split(" | ") for line in lines[4:]]
    assert [r[1] for r in rows] == list(SETTINGS) and all(r[0] == "| test_efficientnet" for r in rows)
    for row in rows:
        low, high = (float(v) for v in re.match(r"([\d.]+)-([\d.]+) \(2\)", row[3]).groups())
        assert 0 < low <= float(row[2]) <= high
        low, high = (float(v) for v in re.match(r"([\d.]+)-([\d.]+)$", row[6]).groups())
        assert 0 < low <= float(row[5]) <= high
    assert rows[0][4] == "1.00x" and rows[0][7] == "1.00x |"


def test_json_report_has_every_round(report):
    _, text = report
    data = json.loads(text)
    assert data["batch"] == 4 and data["rounds"] == 2 and len(data["load_before"]) == 3
    assert [(r["arch"], r["setting"]) for r in data["rows"]] == [("test_efficientnet", s) for s in SETTINGS]
    assert all(len(r["images_per_s"]) == len(r["images_per_cpu_s"]) == 2 for r in data["rows"])
    assert all(min(r["images_per_s"] + r["images_per_cpu_s"]) > 0 for r in data["rows"])
    assert data["decode"]["images"] == 8 and data["decode"]["decode_ms"] > data["decode"]["cache_ms"] > 0


def test_speed_ups_are_relative_to_the_same_architecture():
    rows = [TrainSpeed("a", "before", [10.0, 12.0], [5.0, 6.0]), TrainSpeed("a", "cache-bf16", [30.0, 22.0, 26.0],
            [9.0, 11.0, 10.0]), TrainSpeed("b", "before", [5.0], [4.0]), TrainSpeed("b", "cache-bf16", [5.0], [2.0])]
    table = to_markdown(rows, batch=32).splitlines()
    assert table[3] == "| a | cache-bf16 | 26.0 | 22.0-30.0 (3) | 2.36x | 10.0 | 9.0-11.0 | 1.82x |"
    assert table[5] == "| b | cache-bf16 | 5.0 | 5.0-5.0 (1) | 1.00x | 2.0 | 2.0-2.0 | 0.50x |"
