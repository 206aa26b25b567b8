"""Load and save timm classifiers in the Hugging Face layout (`config.json`, `model.safetensors`, `README.md`).

A model name is one of:
- `hf-hub:org/repo[@revision]`: a Hugging Face hub repository (the local HF cache is used offline);
- `local-dir:PATH`: a folder on disk;
- a short name: a folder under the bundled models directory (`models/` in the repository).

All three resolve to a folder and then load through the same code, so `label_names`, input size, mean/std,
temperature and threshold always come from `config.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import torch

from xray.config import get_settings
from xray.errors import ModelConfigError, ModelNotFoundError

logger = logging.getLogger(__name__)

HF_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
METRICS_NAME = "metrics.json"


@dataclass
class LoadedModel:
    """A classifier ready for inference, with everything `config.json` says about it.

    Attributes:
        name: the name it was loaded by (`hf-hub:...`, `local-dir:...` or a bundled short name).
        model: the timm module in eval mode (float32, channels_last).
        architecture: timm architecture name, e.g. `mobilenetv3_large_100`.
        label_names: class names in output order.
        data_config: timm data config (input_size, mean, std, interpolation).
        temperature: softmax temperature fitted on validation (1.0 = uncalibrated).
        threshold: operating threshold on the positive class probability (binary models), else None.
        positive_label: the class the threshold applies to (binary models), else None.
        path: the folder the files were read from.
        version: hub revision when known, else a short hash of the weights.
        config: the whole parsed config.json.
        metrics: parsed metrics.json when present, else {}.
        lock: serialises Grad-CAM, whose hooks on the shared module must not interleave between threads.
        accelerated: compute the feature extractor with ONNX Runtime (`xray.inference.accel`); PyTorch otherwise.
    """

    name: str
    model: torch.nn.Module
    architecture: str
    label_names: list[str]
    data_config: dict[str, Any]
    temperature: float
    threshold: float | None
    positive_label: str | None
    path: Path
    version: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    accelerated: bool = False

    @property
    def card(self) -> str:
        """The model card (README.md) text, or an empty string when the folder has none."""
        card_path = self.path / CARD_NAME
        return card_path.read_text(encoding="utf-8") if card_path.is_file() else ""

    @property
    def caveat(self) -> str | None:
        """A warning shown with every prediction of this model (see `config_caveat`)."""
        return config_caveat(self.config)

    @cached_property
    def transform(self) -> Any:
        """The evaluation transform (whole-image resize, the config's input JPEG step, normalisation)."""
        from xray.imaging.transforms import build_transform

        return build_transform(self.data_config, jpeg_quality=self.config.get(INPUT_JPEG_KEY))

    @property
    def num_parameters(self) -> int:
        """Number of parameters of the network."""
        return sum(p.numel() for p in self.model.parameters())


def _split_revision(repo: str) -> tuple[str, str | None]:
    repo_id, _, revision = repo.partition("@")
    return repo_id, (revision or None)


def resolve_model_dir(name: str) -> tuple[Path, str | None]:
    """Turn a model name into a local folder, downloading from the hub (or reading its cache) when needed.

    Args:
        name: `hf-hub:org/repo[@revision]`, `local-dir:PATH` or the short name of a bundled model.

    Returns:
        The folder holding config.json and the weights, and the hub commit hash when it came from the hub.

    Raises:
        ModelNotFoundError: the name resolves to nothing usable; the message says how to make it available.
    """
    if name.startswith(HF_PREFIX):
        return _resolve_hub(name[len(HF_PREFIX):])
    if name.startswith(LOCAL_PREFIX):
        path = Path(name[len(LOCAL_PREFIX):]).expanduser()
        if not (path / CONFIG_NAME).is_file():
            raise ModelNotFoundError(
                f"Model folder '{path}' has no {CONFIG_NAME}. A local-dir: model must be a folder written by "
                f"xray.inference.models.save_model or timm's save_for_hf ({CONFIG_NAME} with label_names, "
                f"{WEIGHTS_NAME})."
            )
        return path, None
    bundled = get_settings().models_dir / name
    if (bundled / CONFIG_NAME).is_file():
        return bundled, None
    available = ", ".join(list_bundled_models()) or "none"
    raise ModelNotFoundError(
        f"Unknown model '{name}'. Use the name of a bundled model (available: {available}), "
        f"'hf-hub:org/repo[@revision]' or 'local-dir:PATH'."
    )


def _resolve_hub(repo: str) -> tuple[Path, str | None]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, revision = _split_revision(repo)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            # ood.npz: the input gate's out-of-distribution statistics (xray.trust.gate)
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, METRICS_NAME, "*.png", "ood.npz"],
        )
    except LocalEntryNotFoundError as exc:
        raise ModelNotFoundError(
            f"Model 'hf-hub:{repo}' is not in the local Hugging Face cache and the hub cannot be reached. "
            f"Connect to the internet once, or run `huggingface-cli download {repo_id}` on a connected machine "
            f"and copy the cache (HF_HOME), or use 'local-dir:PATH' with the downloaded folder."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(
            f"Hub repository '{repo_id}' does not exist or is private. Check the name, or log in with "
            f"`huggingface-cli login` for a private repository."
        ) from exc
    except HfHubHTTPError as exc:
        raise ModelNotFoundError(f"Could not download 'hf-hub:{repo}' from the hub: {exc}") from exc
    path = Path(folder)
    # snapshot folders are named by commit hash: that is the exact version served.
    return path, path.name


def list_bundled_models() -> list[str]:
    """Short names of the bundled classifiers (folders with a config.json under the models directory).

    The lung segmentation model folder (`models/lungs`, `xray.inference.segmentation`) is not a classifier and is
    left out.
    """
    from xray.inference.segmentation import is_segmentation_dir

    root = get_settings().models_dir
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file() and not is_segmentation_dir(p))


#: config.json key: JPEG quality every input passes through after the resize
#: (`xray.imaging.transforms.build_transform`).
INPUT_JPEG_KEY = "input_jpeg_quality"


def config_caveat(config: dict[str, Any]) -> str | None:
    """The `caveat` of a config.json (e.g. a confound measured on the model's data), or None when absent or blank."""
    return str(config.get("caveat") or "").strip() or None


def read_config(path: Path) -> dict[str, Any]:
    """Read and check a model folder's config.json."""
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"Cannot read {path / CONFIG_NAME}: {exc}") from exc
    for key in ("architecture", "num_classes", "label_names"):
        if key not in config:
            raise ModelConfigError(
                f"{path / CONFIG_NAME} lacks '{key}'; it needs architecture, num_classes and label_names."
            )
    if len(config["label_names"]) != config["num_classes"]:
        raise ModelConfigError(
            f"{path / CONFIG_NAME} has {len(config['label_names'])} label_names for {config['num_classes']} classes."
        )
    from xray.imaging.transforms import check_jpeg_quality

    try:
        check_jpeg_quality(config.get(INPUT_JPEG_KEY))
    except ValueError as exc:
        raise ModelConfigError(f"{path / CONFIG_NAME}: {exc}") from exc
    return config


def read_metrics(path: Path) -> dict[str, Any]:
    """A model folder's metrics.json, or {} when it has none."""
    metrics_path = path / METRICS_NAME
    return json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}


def weights_version(weights: Path) -> str:
    """A local folder's version: the first 12 hex digits of its weights' SHA-256 (hub folders use the revision)."""
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:12]


def onnx_by_default() -> bool:
    """Whether a model runs on ONNX Runtime unless told: the `XRAY_ONNX` setting, when onnxruntime is installed."""
    from xray.inference.accel import onnx_available

    return get_settings().onnx and onnx_available()


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Create the timm network a config.json describes, without weights."""
    import timm

    kwargs = dict(config.get("model_args") or {})
    kwargs.setdefault("num_classes", config["num_classes"])
    if "global_pool" in config:
        kwargs.setdefault("global_pool", config["global_pool"])
    pretrained_cfg = config.get("pretrained_cfg") or {}
    try:
        return timm.create_model(
            config["architecture"], pretrained=False, pretrained_cfg_overlay=pretrained_cfg, **kwargs
        )
    except RuntimeError as exc:
        raise ModelConfigError(f"timm cannot build '{config['architecture']}': {exc}") from exc


def load_model_dir(
    path: Path, *, name: str | None = None, version: str | None = None, accelerated: bool | None = None
) -> LoadedModel:
    """Load a model folder (config.json + model.safetensors) into an eval-mode float32 `LoadedModel`.

    Args:
        path: the folder.
        name: the name it was asked for (default `local-dir:PATH`).
        version: hub revision when known (default: a hash of the weights).
        accelerated: use ONNX Runtime for the feature extractor (default: `XRAY_ONNX` when onnxruntime exists).
    """
    from safetensors.torch import load_file

    from xray.imaging.transforms import data_config_for

    config = read_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelConfigError(f"Model folder '{path}' has no {WEIGHTS_NAME}.")
    model = build_model(config)
    state = load_file(str(weights))
    # Weights may be stored in fp16 to keep bundled models small; compute stays in float32.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelConfigError(f"{weights} does not match architecture '{config['architecture']}': {exc}") from exc
    model.eval().to(memory_format=torch.channels_last)
    # Inference never needs weight gradients; Grad-CAM attaches its own gradient at the target layer.
    model.requires_grad_(False)
    labels = list(config["label_names"])
    binary = len(labels) == 2
    positive = config.get("positive_label") or (labels[1] if binary else None)
    metrics = read_metrics(path)
    if version is None:
        version = weights_version(weights)
    if accelerated is None:
        accelerated = onnx_by_default()
    return LoadedModel(
        name=name or f"{LOCAL_PREFIX}{path}",
        model=model,
        architecture=config["architecture"],
        label_names=labels,
        data_config=data_config_for(model),
        temperature=float(config.get("temperature") or 1.0),
        threshold=float(config.get("threshold", 0.5)) if binary else None,
        positive_label=positive,
        path=path,
        version=version,
        config=config,
        metrics=metrics,
        accelerated=accelerated,
    )


@lru_cache(maxsize=8)
def load_model(name: str) -> LoadedModel:
    """Load a model by name once per process (later calls return the cached instance).

    Args:
        name: `hf-hub:org/repo[@revision]`, `local-dir:PATH` or the short name of a bundled model.

    Raises:
        ModelNotFoundError: the name cannot be resolved (message says how to make it available).
        ModelConfigError: the folder's config or weights are unusable.
    """
    path, revision = resolve_model_dir(name)
    loaded = load_model_dir(path, name=name, version=revision)
    logger.info("loaded model %s (%s, %s)", name, loaded.architecture, loaded.version)
    return loaded


def save_model(
    model: torch.nn.Module,
    out_dir: str | Path,
    *,
    label_names: list[str],
    extra_config: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Save a timm classifier in the hub layout timm's `save_for_hf` writes, with our keys in config.json.

    Args:
        model: a timm classifier whose head has `len(label_names)` outputs.
        out_dir: destination folder (created).
        label_names: class names in output order.
        extra_config: more keys for config.json, e.g. temperature, threshold, positive_label, ood statistics.
        half: store floating-point weights as fp16 (halves the file; they are loaded back as float32).

    Returns:
        The folder written.
    """
    from timm.models import save_for_hf

    out = Path(out_dir)
    model_config = {"label_names": list(label_names), **(extra_config or {})}
    if half:
        # save_for_hf saves the module's own state dict, so cast a copy rather than the caller's model.
        import copy

        model = copy.deepcopy(model).half()
    save_for_hf(model, str(out), model_config=model_config, safe_serialization=True)
    return out


def update_config(path: str | Path, **values: Any) -> None:
    """Merge keys into an existing model folder's config.json (e.g. temperature and threshold after calibration)."""
    config_path = Path(path) / CONFIG_NAME
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(values)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- publishing

#: Files a model folder may hold that never go to the hub: training checkpoints and logs.
UNPUBLISHED = ("checkpoint.pt", "*.log", ".*")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class PublishPlan:
    """What `publish_model` uploads: the repository, the files (name -> bytes) and where it will live."""

    repo_id: str
    folder: Path
    files: dict[str, int]
    private: bool = False

    @property
    def url(self) -> str:
        """The model's page on the hub."""
        return f"https://huggingface.co/{self.repo_id}"

    @property
    def model_name(self) -> str:
        """How the app and the CLI load it once published (`XRAY_DEFAULT_MODEL`, `--model`)."""
        return f"{HF_PREFIX}{self.repo_id}"

    def describe(self) -> str:
        """A few lines for the terminal: target, files with sizes, total."""
        lines = [f"{self.folder} -> {self.url} ({'private' if self.private else 'public'})"]
        lines += [f"  {name:<24} {size / 1e6:8.2f} MB" for name, size in self.files.items()]
        total = sum(self.files.values()) / 1e6
        lines.append(f"  {len(self.files)} files, {total:.2f} MB; load it as {self.model_name}")
        return "\n".join(lines)


def publish_plan(folder: str | Path, repo_id: str, *, private: bool = False) -> PublishPlan:
    """Check that a model folder loads as a model and list what would be uploaded (no network).

    Raises:
        ModelConfigError / ModelNotFoundError: the folder is not a loadable model (config.json with label_names
            and weights), or the repository id is not `org/name`.
    """
    from fnmatch import fnmatch

    if not _REPO_ID.match(repo_id):
        raise ModelConfigError(f"Hub repository '{repo_id}' is not of the form org/name (e.g. my-lab/pneumonia-cxr).")
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ModelNotFoundError(f"Model folder '{folder}' does not exist.")
    from xray.inference.segmentation import is_segmentation_dir, load_segmenter_dir

    if is_segmentation_dir(path):
        load_segmenter_dir(path)  # the lung model (models/lungs) loads, or a specific error
    else:
        read_config(path)  # label_names and architecture present, or a specific error
    if not (path / WEIGHTS_NAME).is_file():
        raise ModelNotFoundError(f"Model folder '{path}' has no {WEIGHTS_NAME}; nothing to publish.")
    files = {
        p.name: p.stat().st_size
        for p in sorted(path.iterdir())
        if p.is_file() and not any(fnmatch(p.name, pattern) for pattern in UNPUBLISHED)
    }
    return PublishPlan(repo_id=repo_id, folder=path, files=files, private=private)


def publish_model(plan: PublishPlan, *, message: str = "Upload chest X-ray classifier") -> str:
    """Upload a checked folder to the hub with `huggingface_hub` (token from `hf auth login` or HF_TOKEN).

    Returns:
        The commit URL.

    Raises:
        ModelNotFoundError: the hub cannot be reached or refused the upload, with what to do about it.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(plan.repo_id, repo_type="model", private=plan.private, exist_ok=True)
        info = api.upload_folder(
            repo_id=plan.repo_id,
            folder_path=str(plan.folder),
            repo_type="model",
            allow_patterns=list(plan.files),
            commit_message=message,
        )
    except Exception as exc:  # huggingface_hub raises HTTP, offline-mode and auth errors of many types
        raise ModelNotFoundError(
            f"Could not publish to {plan.url}: {exc}. Check the network, HF_HUB_OFFLINE, and that you are signed in "
            f"with write access (`hf auth login` or HF_TOKEN)."
        ) from exc
    logger.info("published %s to %s", plan.folder, plan.url)
    return str(getattr(info, "commit_url", info))
