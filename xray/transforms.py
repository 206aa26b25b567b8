"""Preprocessing, defined once for training, inference and tests.

Sizes, mean/std and interpolation come from the model's own data config (`timm.data.resolve_data_config`).
The evaluation transform resizes the whole image to the input size (no centre crop), so nothing of the lungs
is cut away and the heatmap maps back onto the original image by a plain resize.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import InterpolationMode

_INTERPOLATION = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def data_config_for(model: torch.nn.Module) -> dict[str, Any]:
    """Return timm's resolved data config (input_size, mean, std, interpolation) for a model."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def _to_pil(image: Any) -> Image.Image:
    """Accept an `XrayImage`, a PIL image or an HxW / HxWx3 uint8 array and return an RGB PIL image."""
    pixels = getattr(image, "pixels", None)
    if pixels is not None:
        image = pixels
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected an XrayImage, PIL image or numpy array, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def build_transform(
    data_config: dict[str, Any],
    *,
    train: bool = False,
    rotation: float = 10.0,
    translate: float = 0.05,
    scale: tuple[float, float] = (0.9, 1.1),
    hflip: bool = False,
) -> Callable[[Any], torch.Tensor]:
    """Build the transform from an image (XrayImage, PIL or array) to a normalised CHW float tensor.

    Args:
        data_config: timm data config with `input_size`, `mean`, `std` and optionally `interpolation`.
        train: add the augmentation used by the source studies (small rotation, shift, zoom, optional flip).
        rotation: maximum rotation in degrees (train only).
        translate: maximum shift as a fraction of the size (train only).
        scale: zoom range (train only).
        hflip: random horizontal flips (train only; off by default since the heart sits on one side).

    Returns:
        A callable mapping one image to a tensor of shape `data_config["input_size"]`.
    """
    _, height, width = data_config["input_size"]
    interpolation = _INTERPOLATION.get(str(data_config.get("interpolation", "bilinear")), InterpolationMode.BILINEAR)
    steps: list[Any] = [T.Lambda(_to_pil), T.Resize((height, width), interpolation=interpolation, antialias=True)]
    if train:
        steps.append(T.RandomAffine(degrees=rotation, translate=(translate, translate), scale=scale))
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    steps += [
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])),
    ]
    return T.Compose(steps)
