"""scripts/eval_gate.py: which covid-chestxray and adult-cxr images count as in scope, the lateral rows, the fit on
every in-scope source (no test image), `--fit` end to end, and the --cost timing."""

from __future__ import annotations

import csv
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
    assert row["expect_flag"] is False and row["goal"] == "flag <= 5%" and "held-out" in row["set"]


def test_cost_times_each_gate_step(eval_gate, tiny_model_dir: Path, kermany_fullres: list[Path],
                                   capsys: pytest.CaptureFixture) -> None:
    assert eval_gate.main(["--model", f"local-dir:{tiny_model_dir}", "--cost", str(kermany_fullres[0])]) == 0
    out = capsys.readouterr().out
    assert f"gate cost on {kermany_fullres[0].name}" in out and "mobilenetv3_small_100" in out
    for step in ("predict", "image checks (check_image)", "OOD features (JPEG copy + forward)",
                 "whole gate (gate.assess, as the app calls it)"):
        value = out.split(f"  {step}: ")[1].split(" ms")[0]
        assert float(value) > 0


def _adult_sources(shared_data: Path) -> set[str]:
    """The sources adult-cxr's metadata.csv names (the folder grows: never a fixed list)."""
    with (shared_data / "adult-cxr" / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        sources = {row["source"] for row in csv.DictReader(handle)}
    assert {"rsna", "nih", "radiography"} <= sources
    return sources


def test_in_scope_splits_never_put_a_test_image_into_the_fit(eval_gate, tiny_model_dir: Path,
                                                               shared_data: Path) -> None:
    loaded = load_model(f"local-dir:{tiny_model_dir}")
    sources = [shared_data / name for name in eval_gate.IN_SCOPE_SOURCES]
    splits = eval_gate.in_scope_splits(loaded, sources)
    fit = {str(s.source) for s in splits.train + splits.val}
    kermany_test = {str(p) for p in (shared_data / "kermany-224" / "test").rglob("*.jpeg")}
    adult_test = {str(p) for p in (shared_data / "adult-cxr" / "test").rglob("*.jpg")}
    assert len(kermany_test) == 624 and not fit & kermany_test and not fit & adult_test
    adult_sources = _adult_sources(shared_data)
    assert {s.data_source for s in splits.train} == {"kermany-224", "covid-chestxray"} | adult_sources
    # covid-chestxray's held-out patients are the same whichever sources join it
    covid_alone = eval_gate.in_scope_splits(loaded, [shared_data / "covid-chestxray"])
    assert {str(s.source) for s in covid_alone.test} == {str(s.source) for s in splits.test
                                                           if s.data_source == "covid-chestxray"}


def test_adult_rows_have_no_goal_when_nothing_was_fitted_on_adult_cxr(eval_gate, tiny_model_dir: Path,
                                                                      shared_data: Path) -> None:
    rows = eval_gate.adult_rows(load_model(f"local-dir:{tiny_model_dir}"), shared_data, limit=2)
    expected = [f"adult-cxr test, {s}" for s in sorted(_adult_sources(shared_data))]
    assert [r["set"].split(" (")[0] for r in rows] == expected
    assert all(r["n"] == 2 and r["expect_flag"] is None and "neither" in r["note"] for r in rows)


def test_lateral_rows_without_a_view_check_score_every_lateral_view(eval_gate, tiny_model_dir: Path,
                                                                    shared_data: Path) -> None:
    (row,) = eval_gate.lateral_rows(load_model(f"local-dir:{tiny_model_dir}"), shared_data / "lateral")
    assert row["n"] == 28 and row["expect_flag"] is True and "17 patient groups" in row["set"]
    assert row["note"] == "no view check fitted"


def test_fit_view_needs_ood_statistics(eval_gate, tiny_model_dir: Path) -> None:
    with pytest.raises(SystemExit, match="no OOD statistics"):
        eval_gate.main(["--model", f"local-dir:{tiny_model_dir}", "--fit-view"])


@pytest.mark.slow  # about 1.5 min on 2 busy cores: every gate row on a few images, after a fit
def test_fit_then_measure_end_to_end(eval_gate, tiny_model_dir: Path, shared_data: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`--fit` on a few in-scope images: ood.npz and view.npz saved, and the held-out lateral patients measured."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    monkeypatch.setattr(eval_gate, "LATERAL_COPIES", 0)  # few images: this checks the plumbing, not the figures
    monkeypatch.setattr(eval_gate, "OTHER_COPIES", 0)
    monkeypatch.setattr(eval_gate, "INVERTED_FOR_FIT", 5)
    out = tmp_path / "rows.json"
    assert eval_gate.main(["--model", f"local-dir:{folder}", "--data", str(shared_data), "--fit", "--limit", "12",
                           "--json", str(out)]) == 0
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["ood"]["sources"] == ["kermany-224", "covid-chestxray", "adult-cxr"]
    assert config["ood"]["n_train"] == 12 and config["ood"]["n_val"] == 12
    entry = config["view_check"]
    assert (folder / "view.npz").is_file() and entry["C"] in (0.01, 0.1, 1.0) and entry["n"]["frontal"]["images"] == 24
    held = entry["lateral"]["held_out_files"]
    assert entry["n"]["lateral"]["images"] == 28 - len(held)
    assert not set(entry["lateral"]["held_out_groups"]) & set(entry["lateral"]["fit_groups"])
    rows = {r["set"].split(" (")[0]: r for r in json.loads(out.read_text(encoding="utf-8"))}
    assert rows["lateral chest views, held-out patients"]["n"] == len(held)
    assert rows["lateral chest views, held-out patients"]["expect_flag"] is True
    assert rows["lateral chest views, the view check's fit patients"]["expect_flag"] is None
    assert rows["covid-chestxray frontal, held-out test patients"]["expect_flag"] is False
    assert all(rows[f"adult-cxr test, {s}"]["expect_flag"] is False for s in _adult_sources(shared_data))
    assert eval_gate.FITTED_ON in rows["natural photographs"]["note"]
