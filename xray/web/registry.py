"""The app's models: which are offered, what the selector and About tab say about them, and loading one by name.

A model is only ever loaded by a name from the registered list, never by an arbitrary name sent by a client.
`describe_model` reads config.json and metrics.json without loading weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xray.config import PROJECT_ROOT, Settings
from xray.errors import InvalidInputError, XrayError
from xray.imaging.io import IMAGE_EXTENSIONS

EXAMPLES_DIR = PROJECT_ROOT / "examples"


def registered_models(settings: Settings) -> list[str]:
    """Bundled models plus `settings.extra_models`, the default model first, without duplicates.

    A default given as `hf-hub:org/name` or `local-dir:PATH` (a Space loading its model from the hub) is offered
    even when XRAY_EXTRA_MODELS does not list it.
    """
    from xray.inference.models import CONFIG_NAME, HF_PREFIX, LOCAL_PREFIX
    from xray.inference.segmentation import is_segmentation_dir

    root = settings.models_dir
    # models/lungs (the heat check's lung segmentation model) sits beside the classifiers but is not one
    bundled = sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file() and not is_segmentation_dir(p)) \
        if root.is_dir() else []
    names = bundled + [n.strip() for n in settings.extra_models.split(",") if n.strip()]
    default = settings.default_model.strip()
    if default in names or default.startswith((HF_PREFIX, LOCAL_PREFIX)):
        names = [default] + [n for n in names if n != default]
    return list(dict.fromkeys(names))


@dataclass
class ModelInfo:
    """What the model selector and the Compare tab show about a model, read without loading its weights."""

    name: str
    architecture: str = ""
    label_names: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    threshold: float | None = None
    positive_label: str | None = None
    caveat: str | None = None

    @property
    def headline(self) -> dict[str, float]:
        """The test metrics worth a glance (see `headline_metrics`)."""
        return headline_metrics(self.metrics)

    @property
    def choice_label(self) -> str:
        """`name · architecture · test AUC 0.97, sens 0.95, spec 0.88` for a dropdown."""
        if self.error:
            return f"{self.name} (unavailable)"
        parts = [self.name, self.architecture]
        summary = format_headline(self.headline)
        parts.append(f"test {summary}" if summary else "no test metrics")
        return " · ".join(p for p in parts if p)


_HEADLINE_KEYS = (("auc", "AUC"), ("accuracy", "acc"), ("sensitivity", "sens"), ("specificity", "spec"))


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """AUC, accuracy, sensitivity and specificity on the test set, from a metrics.json.

    Reads `test.at_threshold.value` (the operating threshold), else `test.at_default.value`, else flat keys
    under `test` or at the top level; missing or non-numeric values are left out.
    """
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else metrics
    block: dict[str, Any] = test
    for key in ("at_threshold", "at_default"):
        candidate = test.get(key)
        if isinstance(candidate, dict) and isinstance(candidate.get("value"), dict):
            block = candidate["value"]
            break
    out: dict[str, float] = {}
    for key, _short in _HEADLINE_KEYS:
        value = block.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def format_headline(headline: dict[str, float]) -> str:
    """`AUC 0.968, sens 0.932, spec 0.901`."""
    return ", ".join(f"{short} {headline[key]:.3f}" for key, short in _HEADLINE_KEYS if key in headline)


def model_files(name: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A registered model's folder, config.json and metrics.json ({} when absent), without loading its weights.

    Raises:
        XrayError, OSError or ValueError: the model cannot be found or its files are unreadable.
    """
    from xray.inference.models import read_config, read_metrics, resolve_model_dir

    path, _revision = resolve_model_dir(name)
    return path, read_config(path), read_metrics(path)


def describe_model(name: str) -> ModelInfo:
    """Read a model's config.json and metrics.json (not its weights); errors end up in `.error`."""
    from xray.inference.models import config_caveat

    try:
        path, config, metrics = model_files(name)
    except (XrayError, OSError, ValueError) as exc:
        return ModelInfo(name=name, error=str(exc))
    labels = list(config["label_names"])
    binary = len(labels) == 2
    # The same defaults as xray.inference.models.load_model, so the slider starts where the model decides.
    return ModelInfo(
        name=name,
        architecture=str(config["architecture"]),
        label_names=labels,
        metrics=metrics,
        threshold=float(config.get("threshold", 0.5)) if binary else None,
        positive_label=(config.get("positive_label") or labels[1]) if binary else None,
        caveat=config_caveat(config),
    )


def caveat_warnings(caveat: str | None) -> list[str]:
    """The warning a model's `caveat` (config.json) adds to each of its predictions, e.g. a measured confound."""
    return [f"About this model: {caveat}"] if caveat else []


def load_registered_model(name: str | None, allowed: Sequence[str]) -> Any:
    """Load one of the app's models by name (never an arbitrary name sent by a client).

    Raises:
        InvalidInputError: no model chosen, or not one of `allowed`.
        ModelNotFoundError / ModelConfigError: the model cannot be loaded.
    """
    from xray.inference.models import load_model

    if not allowed:
        raise InvalidInputError(
            "No model is installed. Train one with train.py (see README) or set XRAY_EXTRA_MODELS to "
            "'local-dir:PATH' or 'hf-hub:org/repo'."
        )
    if not name:
        raise InvalidInputError("Choose a model.")
    if name not in allowed:
        raise InvalidInputError(f"Unknown model '{name}'. Choose one of: {', '.join(allowed)}.")
    return load_model(name)


def strip_front_matter(card: str) -> str:
    """A model card without its YAML metadata block (the part between the leading `---` lines)."""
    if card.startswith("---"):
        end = card.find("\n---", 3)
        if end != -1:
            return card[end + 4 :].lstrip("\n")
    return card


def example_files() -> list[Path]:
    """The sample X-rays shipped in `examples/` (sorted)."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
