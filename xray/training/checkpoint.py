"""Training checkpoints: written after every epoch, read back by `--resume`.

A checkpoint holds everything the next epoch depends on: the fp32 weights, the optimiser's moments, the loop's
state (epoch, step, schedule length, best weights, history, time spent), every random stream (torch, NumPy,
Python, the loader's sampler; under torchrun each rank's own) and the run's arguments. A resumed run therefore
continues exactly as the uninterrupted run would have. The file is replaced atomically, so a run killed while
writing leaves the previous epoch's checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xray.training.distributed import Distributed

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


def new_state(total_steps: int) -> dict[str, Any]:
    """The loop's state before its first epoch."""
    return {
        "epoch": 0,
        "step": 0,
        "total_steps": total_steps,
        "best_auc": -1.0,
        "best_epoch": 0,
        "best_state": None,
        "history": [],
        "train_seconds": 0.0,
        "finished": False,
    }


def rng_states() -> dict[str, Any]:
    """This process's torch, NumPy and Python random states."""
    return {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    generator: torch.Generator,
    args: dict[str, Any],
    dist: Distributed,
) -> None:
    """Write the checkpoint (rank 0 writes; every rank must call, for the random states are gathered).

    Args:
        path: the checkpoint file (OUT/checkpoint.pt).
        model: the unwrapped module (no DDP `module.` prefixes).
        optimizer: its optimiser.
        state: the loop's state (`new_state`).
        generator: the training loader's generator (the sampler's stream).
        args: the run's arguments.
        dist: this process's place in the run.
    """
    rngs = rng_states()
    rank_rngs = dist.gather(rngs) if dist.enabled else None
    if not dist.is_main:
        return
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": state,
        **rngs,
        "loader_rng": generator.get_state(),
        "args": args,
    }
    if rank_rngs:
        checkpoint.update(rank_rngs=rank_rngs, world_size=dist.world_size)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def resume_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    generator: torch.Generator,
    dist: Distributed,
) -> bool:
    """Load `path` into the model, optimiser, loop state and random streams when it exists; returns whether it did.

    Every rank reads the file, so under torchrun `--out` must be on a filesystem all nodes share.
    """
    found = dist.gather(path.is_file())
    if len(set(found)) > 1:
        raise SystemExit(
            f"--resume: {path} is readable on ranks {[r for r, f in enumerate(found) if f]} only; every "
            "process loads it, so a multi-node run needs --out on a filesystem that every node shares."
        )
    if not found[0]:
        logger.info("--resume: no checkpoint at %s yet, starting from the beginning", path)
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    state.update(ckpt["state"])
    rngs = ckpt.get("rank_rngs") or []
    # each rank's own augmentation streams when the checkpoint has them (same world size), else rank 0's
    own = rngs[dist.rank] if len(rngs) == dist.world_size else ckpt
    torch.set_rng_state(own["torch_rng"])
    generator.set_state(ckpt["loader_rng"])
    np.random.set_state(own["numpy_rng"])
    random.setstate(own["python_rng"])
    logger.info("resumed from %s at epoch %d (best AUC %.4f)", path, state["epoch"], state["best_auc"])
    return True
