"""Training augmentation on whole batches of cached uint8 tensors, and the datasets the training loop reads.

The pixel cache (`xray.training.cache`) holds every image already resized to the model's input (and passed
through the optional input JPEG step, `jpeg_round_trip`, the inference code's). The dataset hands out those uint8
tensors; the loop augments each batch at once (`BatchAugment`: one `affine_grid`/`grid_sample` for the batch's
random rotations, shifts and zooms, then flips and brightness/contrast, every image with its own draw) and
normalises it with `xray.imaging.transforms.normalise_batch`, the evaluation transform's own arithmetic. The
order of the steps is the evaluation transform's: resize and JPEG step (cached), rotation/shift/zoom, flip,
brightness/contrast.

Why batches: per-image torchvision.transforms.v2 on uint8 tensors was measured at 2 threads slower than the PIL
augmentation it replaces (its many small operations pay the thread pool's start-up each time), while one batched
call costs a few ms per image (README, "Training speed").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


class BatchAugment:
    """Random rotation/shift/zoom, horizontal flip and brightness/contrast of a uint8 (B, C, H, W) batch.

    The draws follow torchvision's RandomAffine and ColorJitter (angle uniform in +-rotation, shift a whole number
    of pixels up to translate * size, scale uniform in 1 +- zoom, nearest-neighbour sampling with black outside;
    brightness and contrast factors uniform in 1 +- intensity, contrast about the image's mean), one draw per image,
    from torch's global generator (so a resumed run continues the same stream). Returns float pixels in 0..255
    (whole numbers), ready for `normalise_batch`.
    """

    def __init__(self, *, rotation: float = 10.0, translate: float = 0.05, zoom: float = 0.1, hflip: bool = False,
                 intensity: float = 0.0) -> None:  # fmt: skip
        self.rotation, self.translate, self.zoom = rotation, translate, zoom
        self.hflip, self.intensity = hflip, intensity

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Augment one batch (every image its own draw)."""
        x = pixels.float()
        b, c, h, w = x.shape
        if self.rotation or self.translate or self.zoom:  # an identity affine is skipped, not resampled
            x = self._affine(x)
        if self.hflip:
            flip = torch.rand(b, device=x.device) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        if self.intensity > 0:
            brightness = 1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * self.intensity
            x = (x * brightness).clamp_(0, 255)
            contrast = 1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * self.intensity
            grey = x if c == 1 else (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1)
            mean = grey.mean(dim=(-3, -2, -1) if c == 1 else (-2, -1), keepdim=True).view(b, 1, 1, 1)
            x = (contrast * x + (1 - contrast) * mean).clamp_(0, 255)
        return x.round_()

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape

        def uniform(limit: float) -> torch.Tensor:
            return (torch.rand(b, device=x.device) * 2 - 1) * limit

        angle, scale = uniform(math.radians(self.rotation)), 1 + uniform(self.zoom)
        tx, ty = torch.round(uniform(self.translate * w)), torch.round(uniform(self.translate * h))
        # output pixel -> input pixel (centre origin): inverse rotation and zoom after removing the shift,
        # written in grid_sample's normalised coordinates (x / (w / 2), y / (h / 2))
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([
            torch.stack([cos, sin * h / w, -(cos * tx + sin * ty) * 2 / w], 1),
            torch.stack([-sin * w / h, cos, -(-sin * tx + cos * ty) * 2 / h], 1),
        ], 1)  # fmt: skip
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def build_augment(
    *,
    rotation: float = 10.0,
    translate: float = 0.05,
    zoom: float = 0.1,
    hflip: bool = False,
    intensity: float = 0.0,
) -> BatchAugment | None:
    """The batch augmentation of train.py's options, or None when every step is off.

    Args:
        rotation: maximum rotation in degrees.
        translate: maximum shift as a fraction of the size.
        zoom: zoom range +- (scale 1 - zoom .. 1 + zoom).
        hflip: random horizontal flips.
        intensity: maximum relative change of brightness and contrast.
    """
    if not (rotation or translate or zoom or hflip or intensity > 0):
        return None
    return BatchAugment(rotation=rotation, translate=translate, zoom=zoom, hflip=hflip, intensity=intensity)


class CachedImages(torch.utils.data.Dataset):
    """Training or validation images from a uint8 (N, C, H, W) pixel tensor: returns (uint8 image, label, index).

    Augmentation happens on whole batches in the loop (`BatchAugment`); the index lets the loop find per-image
    extras (a teacher's cached logits for distillation).
    """

    def __init__(self, pixels: torch.Tensor, targets: Sequence[int]) -> None:
        if len(pixels) != len(targets):
            raise ValueError(f"{len(pixels)} images for {len(targets)} targets")
        self.pixels = pixels
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.pixels[index], int(self.targets[index]), index


class DecodedEachStep(CachedImages):
    """Like `CachedImages`, but every read decodes and resizes the file again (the benchmark's no-cache setting)."""

    def __init__(self, samples: Sequence, size: tuple[int, int], interpolation: str, targets: Sequence[int]) -> None:
        super().__init__(torch.empty((len(samples), 0)), targets)
        self.samples, self.size, self.interpolation = list(samples), size, interpolation

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        from xray.training.data import read_pixels

        pixels = read_pixels(self.samples[index], self.size, self.interpolation)
        image = torch.from_numpy(np.require(pixels, requirements="W"))  # PIL's arrays are read-only
        image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
        return image, int(self.targets[index]), index
