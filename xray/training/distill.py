"""Knowledge distillation: a small student learns from a trained teacher's logits, cached once per training set.

The teacher scores every training image once, through the app's own loading and preprocessing (fp32, its own
input size), and the logits are kept on disk next to the pixel cache, keyed by the training images and the
teacher's files: every epoch and every student run reads them back. The student's loss mixes the usual
cross-entropy with the teacher's softened probabilities (Hinton et al. 2015):
`alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross_entropy`.
The teacher saw the image un-augmented, the student an augmented copy: the targets stay those of the image.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from xray.training.distributed import Distributed

logger = logging.getLogger(__name__)


def distillation_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    teacher: torch.Tensor,
    *,
    hard_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """The student's loss on a batch: softened teacher targets mixed with the labels.

    Args:
        logits: the student's logits (B, C), fp32.
        y: labels (B,).
        teacher: the teacher's logits for the same images (B, C).
        hard_loss: the loss on the labels (class-weighted cross-entropy; the global batch's under torchrun).
        alpha: weight of the teacher's part (1: teacher only, 0: labels only).
        temperature: softening temperature T (the T^2 factor keeps the gradient scale independent of T).
    """
    soft = torch.nn.functional.kl_div(
        torch.log_softmax(logits / temperature, dim=1),
        torch.log_softmax(teacher.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * hard_loss(logits, y)


def _teacher_key(folder: Path, pixel_key: str | None) -> str | None:
    """Hash of the teacher's files (names, sizes, times) and the training images' pixel-cache key."""
    if pixel_key is None:
        return None
    digest = hashlib.sha256(pixel_key.encode())
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in {".json", ".safetensors"}:
            stat = path.stat()
            digest.update(f"\n{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def teacher_logits(
    teacher: str,
    samples: Sequence,
    *,
    label_names: Sequence[str],
    cache_dir: Path | str | None = None,
    dist: Distributed | None = None,
) -> np.ndarray:
    """The teacher's fp32 logits (N, C) over `samples`, computed once and cached on disk (rank 0 computes).

    Args:
        teacher: a model name (`local-dir:PATH`, `hf-hub:org/name`, a bundled name).
        samples: the training samples, in the training set's order.
        label_names: the student's classes; the teacher must have the same, in the same order.
        cache_dir: the pixel cache folder (default `xray.training.cache.default_cache_dir()`).
        dist: this process's place in a torchrun job.
    """
    from xray.inference.models import load_model
    from xray.training.cache import cached_pixels, default_cache_dir
    from xray.training.evaluate import predict_logits

    dist = dist or Distributed(torch.device("cpu"))
    logits = None
    if dist.is_main:
        loaded = load_model(teacher)
        if list(loaded.label_names) != list(label_names):
            raise SystemExit(f"--teacher {teacher} predicts {loaded.label_names}, the student {list(label_names)}: "
                             "distillation needs the same classes in the same order.")  # fmt: skip
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        pixels = cached_pixels(samples, tuple(loaded.data_config["input_size"][1:]),
                               str(loaded.data_config.get("interpolation", "bilinear")), cache_dir=root)  # fmt: skip
        key = _teacher_key(loaded.path, pixels.key)
        path = root / "teacher" / f"{key}.npy" if key else None
        if path is not None and path.is_file():
            logits = np.load(path)
            logger.info("teacher logits of %d images read from %s", len(logits), path)
        else:
            logits = predict_logits(loaded, pixels.arrays()).astype(np.float32)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.stem}.{os.getpid()}.npy")
                np.save(tmp, logits)
                os.replace(tmp, path)
            logger.info("teacher %s scored %d training images", teacher, len(logits))
    return dist.broadcast(logits)
