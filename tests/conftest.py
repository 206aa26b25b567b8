"""Shared fixtures: real data from ../shared/data (skipped when absent) and tiny real timm models on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared chest X-ray folder (README.md there); tests using it skip when it is absent."""
    if not (SHARED_DATA / "kermany-224").is_dir():
        pytest.skip(f"real chest X-rays not found at {SHARED_DATA} (see DEVELOPERS.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kermany_fullres(shared_data: Path) -> list[Path]:
    """The 16 full-resolution Kermany validation images (8 NORMAL, 8 PNEUMONIA)."""
    return sorted((shared_data / "kermany-val-fullres").rglob("*.jpeg"))


def _save_tiny(tmp_root: Path, arch: str, labels: list[str], **extra) -> Path:
    import timm
    import torch

    from xray.models import save_model

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=len(labels))
    return save_model(model, tmp_root / arch, label_names=labels, extra_config=extra or None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (randomly initialised) binary mobilenetv3_small_100 saved in the hub layout."""
    return _save_tiny(tmp_path_factory.mktemp("models"), "mobilenetv3_small_100", ["NORMAL", "PNEUMONIA"])


@pytest.fixture(scope="session")
def tiny_model_dir_3class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (randomly initialised) three-class resnet18 saved in the hub layout."""
    return _save_tiny(tmp_path_factory.mktemp("models3"), "resnet18", ["NORMAL", "PNEUMONIA", "COVID-19"])
