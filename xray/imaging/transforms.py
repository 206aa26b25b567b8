"""Preprocessing, defined once for training, inference and tests.

Sizes, mean/std and interpolation come from the model's own data config (`timm.data.resolve_data_config`).
The evaluation transform resizes the whole image to the input size (no centre crop), so nothing of the lungs
is cut away and the heatmap maps back onto the original image by a plain resize.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from xray.imaging.io import XrayImage

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}
# PIL first shrinks by an integer factor with a box filter, then resamples: ~3x faster on full-resolution
# radiographs and, at a gap of 3, indistinguishable from a direct resample (PIL's documentation).
_REDUCING_GAP = 3.0


def data_config_for(model: torch.nn.Module) -> dict[str, Any]:
    """Return timm's resolved data config (input_size, mean, std, interpolation) for a model."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def _to_pil(image: Any) -> Image.Image:
    """Accept an `XrayImage`, a PIL image or an HxW / HxWx3 uint8 array; return an "L" or "RGB" PIL image.

    Grey images (all three channels equal, as X-rays are) become single-channel "L": resizing one channel
    instead of three gives the same numbers at a third of the cost.
    """
    if isinstance(image, XrayImage):
        grey = image.grey()  # known from decoding for grey files: no channel comparison per call
        image = image.pixels if grey is None else grey
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an XrayImage, PIL image or numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 3:
        first = image[:, :, 0]
        if np.array_equal(first, image[:, :, 1]) and np.array_equal(first, image[:, :, 2]):
            image = first
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(image))


def _resize(image: Image.Image, *, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """Resize the whole image to (width, height), aspect ratio not kept (as the training images were)."""
    if image.size == size:
        return image
    return image.resize(size, resample, reducing_gap=_REDUCING_GAP)


def jpeg_round_trip(image: Image.Image, *, quality: int) -> Image.Image:
    """The image after saving it as JPEG at `quality` and decoding it again (mode "L" or "RGB" kept)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return decoded.copy()


def check_jpeg_quality(quality: Any) -> int | None:
    """A config's `input_jpeg_quality` as an int in 1..95, or None when absent.

    Raises:
        ValueError: anything else (the message names the accepted values).
    """
    if quality is None:
        return None
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ValueError(f"input_jpeg_quality must be an integer from 1 to 95 (or absent), got {quality!r}")
    return quality


def resize_pixels(image: Any, data_config: dict[str, Any]) -> np.ndarray:
    """Resize an image to the model's input size exactly as the transform does (used to cache decoded data).

    Returns HxW uint8 for grey images, HxWx3 for colour ones; the transform then leaves the size as it is.
    """
    _, height, width = data_config["input_size"]
    resample = _RESAMPLE.get(str(data_config.get("interpolation", "bilinear")), Image.Resampling.BILINEAR)
    return np.asarray(_resize(_to_pil(image), size=(width, height), resample=resample))


def _normalise(image: Image.Image, *, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Float CHW tensor ((x / 255 - mean) / std) with three channels.

    A grey image is broadcast against the three-channel mean/std, which gives exactly what normalising the RGB
    copy would (the training JPEGs are grey stored as RGB).
    """
    tensor = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))
    return _normalise_float(tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1), mean, std)


def _normalise_float(tensor: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x / 255 - mean) / std on float [..., C, H, W] pixels (C 1 or 3), in place when C is 3; three channels out."""
    return tensor.div_(255.0).sub_(mean).div_(std) if tensor.shape[-3] == 3 else (tensor / 255.0 - mean) / std


def normalise_batch(pixels: torch.Tensor, data_config: dict[str, Any]) -> torch.Tensor:
    """The transform's last step on a batch of resized uint8 pixels: float (B, 3, H, W) network input.

    Training augments uint8 tensors from the pixel cache and normalises whole batches here; the arithmetic is
    the evaluation transform's own (`build_transform`), so a cached image reaches the network as an upload does.

    Args:
        pixels: (B, C, H, W) values 0..255 (uint8, or float after augmentation) with C 1 (grey) or 3, already at
            the model's input size; left unchanged.
        data_config: the model's timm data config (`mean`, `std`).
    """
    mean = torch.tensor(data_config["mean"], dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    return _normalise_float(pixels.to(torch.float32, copy=True), mean, std)


def build_transform(
    data_config: dict[str, Any],
    *,
    train: bool = False,
    rotation: float = 10.0,
    translate: float = 0.05,
    scale: tuple[float, float] = (0.9, 1.1),
    hflip: bool = False,
    intensity: float = 0.0,
    jpeg_quality: int | None = None,
) -> Callable[[Any], torch.Tensor]:
    """Build the transform from an image (XrayImage, PIL or array) to a normalised CHW float tensor.

    Args:
        data_config: timm data config with `input_size`, `mean`, `std` and optionally `interpolation`.
        train: add the augmentation used by the source studies (small rotation, shift, zoom, optional flip).
        rotation: maximum rotation in degrees (train only).
        translate: maximum shift as a fraction of the size (train only).
        scale: zoom range (train only).
        hflip: random horizontal flips (train only; off by default since the heart sits on one side).
        intensity: maximum relative change of brightness and contrast (train only): exposure and processing
            differ between machines and sites.
        jpeg_quality: after the resize, pass every image through JPEG at this quality (config.json
            `input_jpeg_quality`), so that an upload reaches the network processed like 224-px JPEG training
            copies; None leaves the resized image as it is.

    Returns:
        A callable mapping one image to a tensor of shape `data_config["input_size"]`.
    """
    _, height, width = data_config["input_size"]
    resample = _RESAMPLE.get(str(data_config.get("interpolation", "bilinear")), Image.Resampling.BILINEAR)
    steps: list[Any] = [T.Lambda(_to_pil), T.Lambda(partial(_resize, size=(width, height), resample=resample))]
    if check_jpeg_quality(jpeg_quality) is not None:
        steps.append(T.Lambda(partial(jpeg_round_trip, quality=jpeg_quality)))
    if train:
        steps.append(T.RandomAffine(degrees=rotation, translate=(translate, translate), scale=scale))
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        if intensity > 0:
            steps.append(T.ColorJitter(brightness=intensity, contrast=intensity))
    mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32).view(3, 1, 1)
    steps.append(T.Lambda(partial(_normalise, mean=mean, std=std)))
    return T.Compose(steps)
