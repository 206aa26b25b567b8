"""scripts/eval_gate.py: which covid-chestxray images count as in scope for a model, and the --cost timing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import load_script
from xray.inference.models import load_model
from xray.training.card import render_gate_section
from xray.training.data import load_samples, make_splits


@pytest.fixture(scope="module")
def eval_gate():
    return load_script("eval_gate")


def _with_sources(src: Path, dst: Path, sources: list[str]) -> Path:
    shutil.copytree(src, dst)
    metrics = {"data": {"sources": sources}, "training": {"val_fraction": 0.15, "test_fraction": 0.2, "seed": 0}}
    (dst / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return dst


def test_covid_images_have_no_goal_for_a_kermany_only_model(eval_gate, tiny_model_dir: Path, shared_data: Path,
                                                             tmp_path: Path) -> None:
    folder = _with_sources(tiny_model_dir, tmp_path / "pneu", [str(shared_data / "kermany-224")])
    row = eval_gate.covid_row(load_model(f"local-dir:{folder}"), shared_data, limit=4)
    assert row["n"] == 4 and row["expect_flag"] is None and row["goal"] == "none (report only)"
    assert "adults" in row["set"] and "children aged 1-5" in row["note"]
    line = render_gate_section({"rows": [row]})[-2]
    assert "| none (report only) | - (95% CI" in line


def test_covid_images_of_a_covid_model_are_its_held_out_patients_only(eval_gate, tiny_model_dir_3class: Path,
                                                                       shared_data: Path, tmp_path: Path) -> None:
    covid = shared_data / "covid-chestxray"
    folder = _with_sources(tiny_model_dir_3class, tmp_path / "covid", [str(shared_data / "kermany-224"), str(covid)])
    row = eval_gate.covid_row(load_model(f"local-dir:{folder}"), shared_data, limit=None)
    samples = load_samples(covid)
    splits = make_splits([samples], label_names=["NORMAL", "PNEUMONIA", "COVID-19"], seed=0)
    test_patients = {s.group for s in splits.test}
    assert not test_patients & {s.group for s in splits.train + splits.val}
    # every held-out image and nothing else: well under the 559 frontal images of the folder
    assert row["n"] == len(splits.test) and 0 < row["n"] < len(samples) / 3
    assert row["expect_flag"] is False and row["goal"] == "flag < 2%" and "held-out" in row["set"]


def test_cost_times_each_gate_step(eval_gate, tiny_model_dir: Path, kermany_fullres: list[Path],
                                   capsys: pytest.CaptureFixture) -> None:
    assert eval_gate.main(["--model", f"local-dir:{tiny_model_dir}", "--cost", str(kermany_fullres[0])]) == 0
    out = capsys.readouterr().out
    assert f"gate cost on {kermany_fullres[0].name}" in out and "mobilenetv3_small_100" in out
    for step in ("predict", "image checks (check_image)", "OOD features (JPEG copy + forward)",
                 "whole gate (gate.assess, as the app calls it)"):
        value = out.split(f"  {step}: ")[1].split(" ms")[0]
        assert float(value) > 0
