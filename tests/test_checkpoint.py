"""Checkpoints: a run paused after an epoch and resumed ends in exactly the state of the uninterrupted run."""

from __future__ import annotations

import json
import sys

import torch

from xray.config import PROJECT_ROOT
from xray.training.checkpoint import CHECKPOINT_NAME

sys.path.insert(0, str(PROJECT_ROOT))
import train  # noqa: E402


def _args(shared_data, out, *extra):
    return [
        "--data", str(shared_data / "kermany-224"), "--data", str(shared_data / "adult-cxr"), "--label-map",
        "COVID-19=PNEUMONIA", "--source-balance", "0.5", "--arch", "mobilenetv3_small_100", "--init", "scratch",
        "--epochs", "2", "--max-per-class", "4", "--batch-size", "4", "--bootstrap", "0", "--threads", "2",
        "--warmup-steps", "1", "--precision", "bf16", "--out", str(out), *extra,
    ]  # fmt: skip


def _load(folder):
    return torch.load(folder / CHECKPOINT_NAME, map_location="cpu", weights_only=False)


def test_pause_and_resume_continue_exactly_where_the_run_was(shared_data, tmp_path):
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    train.main(_args(shared_data, straight))
    train.main(_args(shared_data, paused, "--pause-after", "1"))
    middle = _load(paused)
    assert middle["state"]["epoch"] == 1 and not middle["state"]["finished"]
    assert not (paused / "metrics.json").exists()  # paused: no evaluation, no model folder yet
    # the checkpoint after epoch 1 holds the fp32 weights and optimiser of the uninterrupted run's epoch 1
    assert all(v.dtype != torch.bfloat16 for v in middle["model"].values())
    train.main(_args(shared_data, paused, "--resume"))
    a, b = _load(straight), _load(paused)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 2 and a["state"]["step"] == b["state"]["step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(value[name], b["optimizer"]["state"][key][name]), (key, name)
    for key in ("torch_rng", "loader_rng"):
        assert torch.equal(a[key], b[key]), key
    timeless = [{k: v for k, v in h.items() if k != "seconds"} for h in a["state"]["history"]]
    assert timeless == [{k: v for k, v in h.items() if k != "seconds"} for h in b["state"]["history"]]
    first = json.loads((straight / "metrics.json").read_text())
    second = json.loads((paused / "metrics.json").read_text())
    assert first["test"]["at_default"]["value"] == second["test"]["at_default"]["value"]
    assert second["training"]["epochs_run"] == 2 and second["training"]["precision"] == "bf16"


def test_resume_without_a_checkpoint_starts_from_the_beginning(shared_data, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    out = tmp_path / "fresh"
    train.main(_args(shared_data, out, "--resume", "--pause-after", "1"))
    assert "no checkpoint at" in caplog.text and _load(out)["state"]["epoch"] == 1
