"""train.py under torchrun: two gloo processes on CPU train what one process trains, and rank 0 alone writes.

The runs are launched for real (`torchrun --standalone --nproc_per_node=2 train.py ...` in a subprocess) on a
small real subset of kermany-224 + adult-cxr with source-balanced sampling (a weighted sampler) and the
class-weighted loss, so the distributed sampler and the loss normalisation are both on the line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xray.config import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT))
import train  # noqa: E402

TRAIN_PY = str(PROJECT_ROOT / "train.py")

# Why test_efficientnet_gn (timm's ~0.1 M-parameter test EfficientNet with GroupNorm) and not mobilenetv3_small_100:
# BatchNorm normalises each rank's 2 images with their own statistics (one process: all 4 of the global batch) and
# keeps rank 0's running statistics, so a BatchNorm model trains differently under DDP; SyncBatchNorm would fix that
# but supports CUDA only (torch raises for CPU tensors under gloo). Measured with these settings: mobilenetv3_small_100
# after one epoch, val AUC 0.455 (1 process) vs 0.403 (2 processes), val loss 17.1 vs 4.6 (eval-mode BatchNorm on
# running statistics of 2-4 images), weights up to 0.51 apart (running variances): no tolerance would mean anything.
# GroupNorm normalises each image on its own, so with augmentation off (below) the two runs see the same batches and
# the same per-image activations and differ only by floating-point summation order (two half-batch gradients
# averaged by the all-reduce vs one batch gradient), which AdamW's normalised steps carry into the weights.
# Measured: losses 3e-7 apart, weights 7e-6, the same validation AUC and accuracy. The tolerances sit 15-40 times
# above that and far below what a wrong shard or loss normalisation gives (measured: each rank drawing its own
# sample, val loss +0.12 and weights 1.4e-2 apart; each rank's own class-weighted mean instead of the global batch's,
# val loss 8e-3 and weights 7e-3 apart).
TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-4

ARGS = [
    "--label-map", "COVID-19=PNEUMONIA", "--source-balance", "0.5", "--arch", "test_efficientnet_gn",
    "--init", "scratch", "--epochs", "1", "--max-per-class", "12", "--batch-size", "4", "--lr", "2e-3",
    "--warmup-steps", "2", "--bootstrap", "0", "--threads", "1", "--seed", "3",
    # no augmentation: rank 1 draws its augmentations from its own stream, so they would differ from one process's
    "--rotation", "0", "--translate", "0", "--zoom", "0", "--intensity", "0",
    # fp32: bf16 rounds each half-batch's activations differently from the whole batch's, far above the tolerances
    "--precision", "fp32",
]  # fmt: skip


def _torchrun() -> list[str]:
    """The torchrun next to this Python (the venv's), else the module it runs."""
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def _launch(command: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"}}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


def _data(shared_data: Path) -> list[str]:
    return ["--data", str(shared_data / "kermany-224"), "--data", str(shared_data / "adult-cxr")]


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory) -> tuple[Path, str]:
    """The same run in one process and under torchrun with two gloo processes; returns the folder and the log."""
    root = tmp_path_factory.mktemp("ddp")
    _launch([sys.executable, TRAIN_PY, *_data(shared_data), *ARGS, "--out", "one"], root)
    log = _launch(
        [*_torchrun(), "--standalone", "--nproc_per_node=2", TRAIN_PY, *_data(shared_data), *ARGS, "--out", "two"],
        root,
    )
    return root, log


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(runs):
    from safetensors.torch import load_file

    root, _ = runs
    one, two = _metrics(root / "one"), _metrics(root / "two")
    assert two["training"]["device"] == "2 x cpu (DDP, gloo)" and one["training"]["device"] == "cpu"
    assert two["training"]["batch_size"] == one["training"]["batch_size"] == 4  # the global batch
    assert two["training"]["steps_run"] == one["training"]["steps_run"] == 6  # 24 images, whole batches of 4
    (a,), (b,) = one["history"], two["history"]
    for key in ("train_loss", "val_loss"):
        assert b[key] == pytest.approx(a[key], abs=TOLERANCE), key
    # the same ranking and decisions: a flip would need two validation probabilities within ~1e-7 of each other
    for key in ("val_auc", "val_accuracy"):
        assert b[key] == pytest.approx(a[key], abs=1e-9), key
    assert two["validation"]["temperature"] == pytest.approx(one["validation"]["temperature"], abs=1e-3)
    assert two["test"]["at_default"]["value"] == pytest.approx(one["test"]["at_default"]["value"], abs=1e-9)
    w1, w2 = load_file(root / "one" / "model.safetensors"), load_file(root / "two" / "model.safetensors")
    assert set(w1) == set(w2)  # the unwrapped module: no "module." prefixes
    diff = max(float((w1[k].double() - w2[k].double()).abs().max()) for k in w1)
    print(f"1 vs 2 processes: {a} vs {b}; max weight difference {diff:.2e}")  # the measured gaps, with pytest -s
    assert diff < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_rank_zero_alone_writes_one_model_folder(runs):
    from xray.inference.models import load_model_dir

    root, log = runs
    assert sorted(p.name for p in root.iterdir()) == ["one", "two"]  # nothing written elsewhere
    assert sorted(p.name for p in (root / "two").iterdir()) == sorted(p.name for p in (root / "one").iterdir())
    ckpt = torch.load(root / "two" / train.CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["world_size"] == 2 and len(ckpt["rank_rngs"]) == 2
    # the ranks augment from their own streams: rank 1's generator state is not rank 0's
    assert not torch.equal(ckpt["rank_rngs"][0]["torch_rng"], ckpt["rank_rngs"][1]["torch_rng"])
    loaded = load_model_dir(root / "two")
    assert loaded.architecture == "test_efficientnet_gn" and loaded.label_names == ["NORMAL", "PNEUMONIA"]
    assert log.count("model folder written") == 1 and "[rank 0/2]" in log
    assert not [line for line in log.splitlines() if "[rank 1/2]" in line and " INFO " in line]  # rank 1 is quiet


@pytest.mark.slow
def test_resume_under_torchrun(runs, shared_data):
    root, _ = runs
    ckpt = torch.load(root / "two" / train.CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    out = root.parent / f"{root.name}-resumed"
    out.mkdir()
    # the finished one-epoch checkpoint, made unfinished and continued to two epochs by both ranks
    ckpt["state"]["finished"] = False
    ckpt["state"]["total_steps"] = 12
    torch.save(ckpt, out / train.CHECKPOINT_NAME)
    args = [a if a != "1" or i == 0 or ARGS[i - 1] != "--epochs" else "2" for i, a in enumerate(ARGS)]
    _launch([*_torchrun(), "--standalone", "--nproc_per_node=2", TRAIN_PY, *_data(shared_data), *args, "--resume",
             "--out", str(out)], out)  # fmt: skip
    metrics = _metrics(out)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][0] == _metrics(root / "two")["history"][0]  # epoch 1 comes from the checkpoint
    assert metrics["training"]["epochs_run"] == 2 and metrics["training"]["steps_run"] == 12
    shutil.rmtree(out)


def test_shard_sampler_splits_each_global_batch_between_the_ranks():
    weights = np.linspace(1, 3, 22)
    weights /= weights.sum()

    def sampler():
        generator = torch.Generator().manual_seed(7)
        return torch.utils.data.WeightedRandomSampler(weights, 22, replacement=True, generator=generator)

    single = list(torch.utils.data.BatchSampler(sampler(), 6, drop_last=True))
    shards = [train.ShardSampler(sampler(), batch_size=6, rank=r, world_size=3) for r in range(3)]
    per_rank = [list(torch.utils.data.BatchSampler(s, 2, drop_last=False)) for s in shards]
    assert all(len(s) == 6 for s in shards) and all(len(b) == len(single) == 3 for b in per_rank)
    for step, batch in enumerate(single):
        # the ranks' step-k batches together are the single process's step-k batch
        assert sorted(i for rank in per_rank for i in rank[step]) == sorted(batch)
    # a sample smaller than one global batch: one short batch, padded so that every rank has the same share
    tiny = [train.ShardSampler(torch.utils.data.SequentialSampler(range(5)), batch_size=8, rank=r, world_size=2)
            for r in range(2)]  # fmt: skip
    assert [list(s) for s in tiny] == [[0, 2, 4], [1, 3, 0]]


def test_the_global_batch_must_divide_between_the_processes():
    dist = train.Distributed(torch.device("cpu"), world_size=4, rank=1)
    assert dist.local_batch(32) == 8 and dist.enabled and not dist.is_main
    with pytest.raises(SystemExit, match="--batch-size 30 is the global batch.*4 processes.*try 28"):
        dist.local_batch(30)
    single = train.Distributed(torch.device("cpu"))
    assert single.local_batch(30) == 30 and single.broadcast("x") == "x" and single.sum([1.0, 2]) == [1.0, 2]
