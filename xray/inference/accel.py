"""ONNX Runtime forward pass for the feature extractor, exported once per model and cached on disk.

The network is split at `forward_features`: ONNX Runtime computes the last spatial feature map (2-3x faster
than eager PyTorch on a small CPU), and PyTorch runs only the classifier head on it. Grad-CAM needs gradients
at that feature map only, so it keeps working from the same single forward pass.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_SESSIONS: dict[str, Any] = {}
_LOCK = threading.Lock()


class _Features(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def onnx_available() -> bool:
    """True when onnxruntime and the exporter's `onnx` package are installed.

    Looked up, not imported: importing `onnx` took 0.9 s, which every model load paid although only an export
    (once per model version, then cached) needs it.
    """
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def cache_dir() -> Path:
    """Where exported ONNX graphs are kept: `XRAY_CACHE_DIR`, else `$XDG_CACHE_HOME/xray` or `~/.cache/xray`."""
    from xray.config import get_settings

    configured = get_settings().cache_dir
    if configured is not None:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xray"


def export_features(model: torch.nn.Module, input_size: tuple[int, int, int], path: Path) -> Path:
    """Export `model.forward_features` to ONNX with a dynamic batch dimension (written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    module = _Features(model).eval()
    # The TorchScript exporter is deprecated but needs no extra packages; the warning is not the user's business.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (torch.zeros(1, *input_size),), str(tmp), input_names=["pixels"], output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
    tmp.replace(path)
    return path


def feature_session(loaded: Any) -> Any:
    """The ONNX Runtime session computing `forward_features` for a loaded model (exported on first use)."""
    key = f"{loaded.architecture}-{loaded.version}-{'x'.join(map(str, loaded.data_config['input_size']))}"
    with _LOCK:
        if key in _SESSIONS:
            return _SESSIONS[key]
        path = cache_dir() / "onnx" / f"{key}.onnx"
        if not path.is_file():
            logger.info("exporting %s to ONNX (once; cached at %s)", loaded.name, path)
            export_features(loaded.model, tuple(loaded.data_config["input_size"]), path)
        session = cpu_session(str(path), threads=torch.get_num_threads())
        _SESSIONS[key] = session
        return session


def cpu_session(model: str | bytes, *, threads: int) -> Any:
    """An ONNX Runtime CPU session of an ONNX file path or bytes, with `threads` intra-op threads that sleep when idle.

    Idle workers sleep instead of spinning: the app's requests interleave ONNX Runtime with torch and numpy work on
    few cores, and a spinning pool takes the core the next step needs (README, Performance).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def forward_features(loaded: Any, batch: torch.Tensor) -> torch.Tensor:
    """`loaded.model.forward_features(batch)` computed by ONNX Runtime (float32, NCHW)."""
    pixels = np.ascontiguousarray(batch.detach().contiguous().numpy(), dtype=np.float32)
    (features,) = feature_session(loaded).run(None, {"pixels": pixels})
    return torch.from_numpy(features)
