"""Batched prediction: images in, calibrated per-class probabilities and the decision under the threshold out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xray.inference.models import LoadedModel


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        label: the predicted class: for binary models the positive class when its probability reaches the
            model's operating threshold, else the other class; otherwise the most probable class.
        probabilities: calibrated probability per class name (temperature-scaled softmax), summing to 1.
        logits: raw network outputs, in `label_names` order.
    """

    label: str
    probabilities: dict[str, float]
    logits: list[float]

    @property
    def confidence(self) -> float:
        """Probability of the predicted class."""
        return self.probabilities[self.label]


def decide(loaded: LoadedModel, probabilities: Sequence[float], threshold: float | None = None) -> str:
    """Apply the model's decision rule to one probability vector.

    Args:
        loaded: the model (labels, positive label, operating threshold).
        probabilities: calibrated probabilities in `label_names` order.
        threshold: override of the model's operating threshold (binary models only).
    """
    labels = loaded.label_names
    threshold = loaded.threshold if threshold is None else threshold
    if threshold is not None and loaded.positive_label is not None:
        positive = labels.index(loaded.positive_label)
        if probabilities[positive] >= threshold:
            return loaded.positive_label
        others = [i for i in range(len(labels)) if i != positive]
        return labels[max(others, key=lambda i: probabilities[i])]
    return labels[int(np.argmax(probabilities))]


def to_prediction(loaded: LoadedModel, logits: torch.Tensor, threshold: float | None = None) -> Prediction:
    """Turn one row of logits into a `Prediction` (temperature scaling + decision rule).

    `threshold` overrides the model's pooled one (a population's threshold, `xray.inference.population`).
    """
    logits = logits.detach().float().cpu()
    probs = torch.softmax(logits / loaded.temperature, dim=-1).numpy()
    return Prediction(
        label=decide(loaded, probs, threshold),
        probabilities={name: float(p) for name, p in zip(loaded.label_names, probs, strict=True)},
        logits=[float(v) for v in logits],
    )


def preprocess(loaded: LoadedModel, images: Iterable[Any]) -> torch.Tensor:
    """Stack images (XrayImage, PIL or arrays) into one normalised NCHW channels_last batch."""
    batch = torch.stack([loaded.transform(image) for image in images])
    return batch.contiguous(memory_format=torch.channels_last)


def predict_logits(loaded: LoadedModel, batch: torch.Tensor) -> torch.Tensor:
    """Forward a preprocessed batch with no autograd bookkeeping (ONNX Runtime features when accelerated)."""
    with torch.inference_mode():
        if loaded.accelerated:
            from xray.inference.accel import forward_features

            return loaded.model.forward_head(forward_features(loaded, batch))
        return loaded.model(batch)


def batches(loaded: LoadedModel, images: Sequence[Any], batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Preprocessed batches of `images`, in order, with the app's own preprocessing."""
    for start in range(0, len(images), batch_size):
        yield preprocess(loaded, images[start : start + batch_size])


@torch.inference_mode()
def extract_features(loaded: LoadedModel, images: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
    """Penultimate features (N, D): `forward_head(forward_features(x), pre_logits=True)`, for the input gate.

    The feature map comes from ONNX Runtime when the model is accelerated, as for predictions.
    """
    from xray.inference.accel import forward_features

    loaded.model.eval()
    model = loaded.model
    out = []
    for batch in batches(loaded, images, batch_size):
        feature_map = forward_features(loaded, batch) if loaded.accelerated else model.forward_features(batch)
        out.append(model.forward_head(feature_map, pre_logits=True).flatten(1).float().numpy())
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)


def predict(loaded: LoadedModel, images: Sequence[Any], *, batch_size: int = 32) -> list[Prediction]:
    """Classify images in batches.

    Args:
        loaded: a model from `xray.inference.models.load_model`.
        images: `XrayImage`s (from `xray.imaging.io.read_image`), PIL images or HxW(x3) uint8 arrays.
        batch_size: images per forward pass.

    Returns:
        One `Prediction` per image, in order.
    """
    results: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        logits = predict_logits(loaded, preprocess(loaded, images[start : start + batch_size]))
        results.extend(to_prediction(loaded, row) for row in logits)
    return results
