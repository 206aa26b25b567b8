"""Grad-CAM heatmaps (pytorch-grad-cam) computed in the same forward pass as the prediction.

The target layer is derived from the architecture: the last module with a spatial output before global pooling
(timm `feature_info` plus any head convolution that still has a spatial map, e.g. EfficientNet's `bn2`).
Backpropagation stops at that layer: the weights need no gradients, so one explanation costs one forward pass
plus the backward pass of the classifier head only.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.utils.image import scale_cam_image

from xray.imaging.io import XrayImage
from xray.inference.models import LoadedModel
from xray.inference.predict import Prediction, preprocess, to_prediction

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM}

_TARGET_LAYERS: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


@dataclass
class Explanation:
    """A class activation map for one image.

    Attributes:
        heatmap: HxW float32 in [0, 1] at the input image's own resolution.
        image: the input pixels (HxWx3 uint8) the heatmap lies on.
        target_label: the class explained.
        method: one of `METHODS`.
        features: the penultimate features (the classifier's input) from the same forward pass, for the
            input gate's out-of-distribution score (`xray.trust.gate.assess`).
    """

    heatmap: np.ndarray
    image: np.ndarray
    target_label: str
    method: str
    features: np.ndarray | None = None

    def overlay(self, alpha: float = 0.4) -> np.ndarray:
        """The image with the heatmap blended on top in the JET colour map (HxWx3 uint8)."""
        return overlay_heatmap(self.image, self.heatmap, alpha)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a [0, 1] heatmap (resized to the image when needed) onto an RGB uint8 image."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {alpha}")
    height, width = image.shape[:2]
    if heatmap.shape != (height, width):
        heatmap = cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(heatmap, 0, 1)), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(colour, alpha, image, 1.0 - alpha, 0.0)


def cam_target_layer(model: torch.nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> torch.nn.Module:
    """The layer Grad-CAM reads: the last module producing a spatial (H, W > 1) map before pooling.

    Candidates are timm's last `feature_info` module and the model's direct children; one probe forward on a
    zero image records which of them run, in order, with a 4-D output larger than 1x1.
    """
    if model in _TARGET_LAYERS:
        return _TARGET_LAYERS[model]
    candidates: dict[str, torch.nn.Module] = {}
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        last = feature_info[-1]["module"]
        candidates[last] = model.get_submodule(last)
    candidates.update(dict(model.named_children()))
    seen: list[torch.nn.Module] = []

    def record(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] > 1 and output.shape[-2] > 1:
            seen.append(module)

    handles = [m.register_forward_hook(record) for m in candidates.values()]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_size))
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError(f"{type(model).__name__} has no spatial feature map for Grad-CAM")
    _TARGET_LAYERS[model] = seen[-1]
    return seen[-1]


class _DecisionTarget:
    """Grad-CAM target chosen after the forward pass: the predicted class, or the one asked for.

    pytorch-grad-cam calls the target with the model output, so the prediction is read from the same
    forward pass that the heatmap is computed from.
    """

    def __init__(self, loaded: LoadedModel, target_label: str | None, threshold: float | None = None) -> None:
        self.loaded = loaded
        self.threshold = threshold
        self.target_label = target_label
        self.prediction: Prediction | None = None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        self.prediction = to_prediction(self.loaded, output, self.threshold)
        self.target_label = self.target_label or self.prediction.label
        return output[self.loaded.label_names.index(self.target_label)]


class _Head(torch.nn.Module):
    """The classifier head as a module of its own, fed the feature map that ONNX Runtime computed.

    `features` is an identity layer standing where `forward_features` ends, for pytorch-grad-cam to hook.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.features = torch.nn.Identity()

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.features(feature_map))


def _leaf_activation(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    # Start the autograd graph here, so backward runs through the head only (the weights need no gradient).
    return output.detach().requires_grad_(True)


def explain(
    loaded: LoadedModel,
    image: Any,
    *,
    target_label: str | None = None,
    method: str = "gradcam",
    threshold: float | None = None,
) -> tuple[Prediction, Explanation]:
    """Predict one image and explain a class with a CAM, from one forward and one backward pass.

    Args:
        loaded: a model from `xray.inference.models.load_model`.
        image: an `XrayImage`, PIL image or HxW(x3) uint8 array.
        target_label: the class to explain; default: the predicted class.
        method: "gradcam", "gradcam++" or "hirescam".
        threshold: the threshold to decide with (a population's); default the model's own.

    Returns:
        The prediction and the explanation (heatmap at the image's own resolution).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown CAM method '{method}'; choose one of {', '.join(METHODS)}.")
    if target_label is not None and target_label not in loaded.label_names:
        raise ValueError(f"Unknown class '{target_label}'; this model's classes are {', '.join(loaded.label_names)}.")
    pixels = np.asarray(getattr(image, "pixels", image))
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    batch = preprocess(loaded, [image if isinstance(image, XrayImage) else pixels])
    target = _DecisionTarget(loaded, target_label, threshold)
    layer = cam_target_layer(loaded.model, tuple(loaded.data_config["input_size"]))
    captured: list[torch.Tensor] = []
    classifier = loaded.model.get_classifier() if hasattr(loaded.model, "get_classifier") else None
    feature_map = None
    if loaded.accelerated:
        from xray.inference.accel import forward_features

        feature_map = forward_features(loaded, batch).requires_grad_(True)
    # Hooks on the shared module must not interleave between threads serving different requests.
    with loaded.lock, torch.enable_grad():
        handles = [] if feature_map is not None else [layer.register_forward_hook(_leaf_activation)]
        if isinstance(classifier, torch.nn.Module):
            handles.append(classifier.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach())))
        try:
            if feature_map is None:
                with METHODS[method](model=loaded.model, target_layers=[layer]) as cam:
                    grayscale = cam(input_tensor=batch, targets=[target])[0]
            else:
                head = _Head(loaded.model)
                with METHODS[method](model=head, target_layers=[head.features]) as cam:
                    small = cam(input_tensor=feature_map, targets=[target])
                # As pytorch-grad-cam does for a full model: normalise, resize to the input size, normalise.
                grayscale = scale_cam_image(scale_cam_image(small, tuple(batch.shape[-1:-3:-1])))[0]
        finally:
            for handle in handles:
                handle.remove()
    assert target.prediction is not None and target.target_label is not None
    height, width = pixels.shape[:2]
    heatmap = cv2.resize(grayscale.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    features = captured[0].flatten(1)[0].float().numpy() if captured else None
    explanation = Explanation(
        heatmap=np.clip(heatmap, 0.0, 1.0), image=pixels, target_label=target.target_label, method=method,
        features=features,
    )
    return target.prediction, explanation
