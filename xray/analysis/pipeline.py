"""The one analysis pipeline: an image and a model in, everything a doctor is shown about it out.

`analyse` runs the model once on an image and returns an `Analysis`: calibrated probabilities and the decision,
the Grad-CAM heatmap and the penultimate features from that same forward pass, the input gate's verdict (scored on
those features), where the heat lies relative to the lung fields, and the model's caveat. `analyse_many` does the
same for many images in batched forward passes (the command line and evaluation scripts), with a heatmap per image
only when asked. Diagnose, Batch, Compare, re-explain in History and `python -m xray predict` all come through here,
so a change to a check reaches every one of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xray.errors import OodStatsError
from xray.inference.explain import Explanation, explain
from xray.inference.models import LoadedModel
from xray.inference.predict import Prediction, batches, decide, to_prediction
from xray.trust import gate
from xray.trust.lungs import HeatmapCheck, assess_heatmap

logger = logging.getLogger(__name__)

#: Said when a model folder has no `ood.npz`: the gate then checks image statistics and the DICOM header only.
NO_OOD_NOTE = (
    "This model has no out-of-distribution statistics (ood.npz), so the input check used image statistics "
    "and the DICOM header only."
)


@dataclass
class Analysis:
    """Everything the pipeline found about one image with one model.

    Attributes:
        model: the model that read the image.
        prediction: calibrated probabilities and the decision under the model's threshold.
        features: the penultimate features of the prediction's forward pass (D,).
        explanation: the Grad-CAM heatmap (None when not asked for, as in a batch without heatmaps).
        gate: the input gate's verdict (None when the checks were not asked for).
        gate_note: set when the gate could not use the model's OOD statistics (missing or broken), so that
            "in scope" never hides a partial check.
        heatmap_check: where the heat lies relative to the estimated lung fields (None without a heatmap or checks).
        latency_ms: time of the prediction and heatmap (decoding and checks excluded).
    """

    model: LoadedModel
    prediction: Prediction
    features: np.ndarray | None = None
    explanation: Explanation | None = None
    gate: gate.GateResult | None = None
    gate_note: str | None = None
    heatmap_check: HeatmapCheck | None = None
    latency_ms: float = 0.0

    @property
    def label(self) -> str:
        """The decision."""
        return self.prediction.label

    @property
    def probabilities(self) -> dict[str, float]:
        """Calibrated probability per class."""
        return self.prediction.probabilities

    @property
    def heatmap(self) -> np.ndarray | None:
        """HxW heatmap in [0, 1] at the image's resolution, or None."""
        return None if self.explanation is None else self.explanation.heatmap

    @property
    def in_scope(self) -> bool:
        """False when the input gate found a reason to doubt the image (show the result only on request)."""
        return self.gate is None or self.gate.in_scope

    @property
    def reasons(self) -> list[str]:
        """The gate's doctor-readable reasons (empty when in scope or unchecked)."""
        return [] if self.gate is None else list(self.gate.reasons)

    @property
    def caveat(self) -> str | None:
        """The model's caveat, shown with every one of its predictions."""
        return self.model.caveat

    @property
    def input_check(self) -> str:
        """One line for a table cell: "in scope" or "OUT OF SCOPE: ..." (see `input_check_text`)."""
        return input_check_text(self.gate, self.gate_note)


def input_check_text(gate_result: gate.GateResult | None, note: str | None = None) -> str:
    """One table cell for a gate verdict: "in scope", or "OUT OF SCOPE: " and the reasons ("" without a verdict).

    `note` (the OOD score was not used) follows, so that "in scope" never hides a partial check.
    """
    if gate_result is None:
        return ""
    text = "in scope" if gate_result.in_scope else "OUT OF SCOPE: " + " ".join(gate_result.reasons)
    return f"{text} ({note})" if note else text


def check_input(loaded: LoadedModel, image: Any, *, features: np.ndarray | None = None) -> tuple[Any, str | None]:
    """The input gate on one image: `(GateResult, note)`; the note says when the OOD score could not be used.

    Args:
        loaded: the model.
        image: the decoded image (`XrayImage` or HxWx3 uint8).
        features: its penultimate features from the prediction's forward pass (else the gate runs one).
    """
    return _gate_many(loaded, [image], None if features is None else np.asarray(features)[None, :])[0]


def _fallback(image: Any, exc: Exception) -> tuple[gate.GateResult, str]:
    # Broken statistics must not block a doctor's work: fall back to the image checks and say why.
    findings = gate.check_image(image)
    result = gate.GateResult(in_scope=not findings, reasons=[f.reason for f in findings], findings=findings)
    return result, f"The out-of-distribution check failed ({exc}); only image statistics were checked."


def _gate_many(
    loaded: LoadedModel, images: Sequence[Any], features: np.ndarray | None
) -> list[tuple[gate.GateResult, str | None]]:
    """Gate verdicts for images whose prediction features are `features` (N, D), or None to compute them."""
    try:
        stats = gate.ood_stats_for(loaded)
        if stats is None:
            return [(gate.verdict(image, None, None), NO_OOD_NOTE) for image in images]
        if features is None or stats.view:
            # statistics fitted on the gate's canonical copy need that copy's own features (one batched pass)
            features = gate.ood_features(loaded, list(images), stats)
        return [(gate.verdict(image, stats, row), None) for image, row in zip(images, features, strict=True)]
    except OodStatsError as exc:
        logger.error("OOD statistics of %s unusable: %s", loaded.name, exc)
        return [_fallback(image, exc) for image in images]


def analyse(
    loaded: LoadedModel,
    image: Any,
    *,
    target_label: str | None = None,
    method: str = "gradcam",
    checks: bool = True,
    threshold: float | None = None,
) -> Analysis:
    """Predict, explain and check one image from one forward pass.

    Args:
        loaded: a model from `xray.inference.models.load_model`.
        image: an `XrayImage` (from `xray.imaging.io.read_image`), PIL image or HxW(x3) uint8 array.
        target_label: the class the heatmap explains; default the predicted class.
        method: gradcam, gradcam++ or hirescam.
        checks: run the input gate and the heat-in-lungs check (off when only a new heatmap is wanted).
        threshold: the threshold to decide with (`xray.inference.population.choose_threshold`); default the
            model's pooled one.

    Returns:
        The `Analysis`; raises ValueError for an unknown method or class (callers validate form input first).
    """
    start = time.perf_counter()
    prediction, explanation = explain(loaded, image, target_label=target_label, method=method, threshold=threshold)
    latency_ms = (time.perf_counter() - start) * 1000
    result = Analysis(
        model=loaded, prediction=prediction, features=explanation.features, explanation=explanation,
        latency_ms=latency_ms,
    )  # fmt: skip
    if checks:
        result.gate, result.gate_note = check_input(loaded, image, features=explanation.features)
        result.heatmap_check = assess_heatmap(explanation.heatmap, image)
    return result


@torch.inference_mode()
def _predict_with_features(loaded: LoadedModel, images: Sequence[Any], batch_size: int) -> tuple[list, np.ndarray]:
    """Predictions and penultimate features of many images, one batched forward pass per `batch_size` images."""
    from xray.inference.accel import forward_features

    model = loaded.model
    classifier = model.get_classifier()
    predictions, features = [], []
    for batch in batches(loaded, images, batch_size):
        feature_map = forward_features(loaded, batch) if loaded.accelerated else model.forward_features(batch)
        pre_logits = model.forward_head(feature_map, pre_logits=True)
        logits = classifier(pre_logits)  # eval mode: forward_head(x) == classifier(forward_head(x, pre_logits=True))
        predictions += [to_prediction(loaded, row) for row in logits]
        features.append(pre_logits.flatten(1).float().numpy())
    return predictions, (np.concatenate(features) if features else np.zeros((0, 0), dtype=np.float32))


def analyse_many(
    loaded: LoadedModel,
    images: Sequence[Any],
    *,
    batch_size: int = 32,
    heatmaps: bool = False,
    checks: bool = True,
    thresholds: Sequence[float | None] | None = None,
) -> list[Analysis]:
    """`analyse` for many images: batched forward passes, a heatmap (and heat-in-lungs check) only when asked.

    Args:
        loaded: the model.
        images: decoded images.
        batch_size: images per forward pass.
        heatmaps: compute each image's Grad-CAM (one forward and head backward per image, as `analyse`).
        checks: run the input gate (and, with heatmaps, the heat-in-lungs check).
        thresholds: each image's threshold (a population's); default the model's pooled one for every image.
    """
    thresholds = list(thresholds) if thresholds is not None else [None] * len(images)
    if heatmaps:
        return [analyse(loaded, image, checks=checks, threshold=t) for image, t in zip(images, thresholds, strict=True)]
    loaded.model.eval()
    start = time.perf_counter()
    predictions, features = _predict_with_features(loaded, images, batch_size)
    predictions = [
        p if t is None else Prediction(decide(loaded, list(p.probabilities.values()), t), p.probabilities, p.logits)
        for p, t in zip(predictions, thresholds, strict=True)
    ]
    per_image_ms = (time.perf_counter() - start) * 1000 / max(1, len(images))
    results = [
        Analysis(model=loaded, prediction=p, features=f, latency_ms=per_image_ms)
        for p, f in zip(predictions, features, strict=True)
    ]
    if checks and results:
        for result, (verdict, note) in zip(results, _gate_many(loaded, images, features), strict=True):
            result.gate, result.gate_note = verdict, note
    return results
