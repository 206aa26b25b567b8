"""The request-path benchmark runs on the app's own code and reports every stage for the three inputs."""

from __future__ import annotations

from pathlib import Path

from xray import bench_request


def test_request_path_table_has_every_stage(tiny_model_dir: Path, shared_data: Path):
    rows = bench_request.bench_request_path(f"local-dir:{tiny_model_dir}", repeats=1, warmup=0)
    assert [r["input"] for r in rows] == ["224x224 JPEG", "1776x1416 JPEG", "2048x2500 16-bit DICOM"]
    for row in rows:
        assert all(row[stage] > 0 for stage in bench_request.STAGES)
        assert row["sum of stages"] == sum(row[stage] for stage in bench_request.STAGES)
        assert row["diagnose p50"] > 0
    table = bench_request.to_markdown(rows)
    head = "| input | decode | predict + Grad-CAM | input gate | lung fields | heat check |"
    assert table.splitlines()[0].startswith(head)
    assert len(table.splitlines()) == 5
