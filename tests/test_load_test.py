"""scripts/load_test.py: a short run against a real app process, with the light HTTP client, checks its records."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_script


def test_http_client_run_stores_every_record_under_its_doctor(tiny_model_dir: Path, tmp_path: Path) -> None:
    script = load_script("load_test")
    out = tmp_path / "result.json"
    code = script.main(["--clients", "2", "--per-client", "2", "--model", f"local-dir:{tiny_model_dir}",
                        "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 0 and result["failures"] == []
    assert result["client"] == "http"
    assert (result["submitted"], result["succeeded"], result["stored"], result["misplaced"]) == (4, 4, 4, 0)
    assert result["throughput_per_s"] > 0 and result["p95_s"] >= result["p50_s"] > 0
    assert result["app_cpu_s"] is None or result["app_cpu_ms_per_prediction"] > 0
