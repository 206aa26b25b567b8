"""Shared fixtures: real data from ../shared/data (skipped when absent) and tiny real timm models on disk."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

# Exported ONNX graphs of the tests' throwaway models go to a temporary cache, not the user's ~/.cache/xray.
os.environ.setdefault("XRAY_CACHE_DIR", tempfile.mkdtemp(prefix="xray-test-cache-"))

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


def load_script(name: str) -> ModuleType:
    """Import `scripts/<name>.py` (the scripts are not a package) for its tests."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_tiny(tmp_root: Path, arch: str, labels: list[str], **extra) -> Path:
    import timm
    import torch

    from xray.inference.models import save_model

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


@pytest.fixture(scope="session")
def split_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny binary model with per-population thresholds: children 0.0 (always positive), adults 1.0 (never)."""
    import shutil

    from xray.inference.models import update_config

    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("split") / "model")
    update_config(folder, threshold=0.5, thresholds={"children": 0.0, "adults": 1.0, "rule": "test"})
    return folder


@pytest.fixture(scope="session")
def aged_folder(kermany_fullres: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real X-ray three times: a DICOM aged 7 years, one aged 45 and the JPEG without an age (sorted so)."""
    import shutil

    import numpy as np
    from PIL import Image

    from tests.dicom_files import make_dicom

    folder = tmp_path_factory.mktemp("aged")
    with Image.open(kermany_fullres[0]) as image:
        pixels = np.asarray(image.convert("L").resize((256, 256)))
    (folder / "a-child.dcm").write_bytes(make_dicom(pixels, PatientAge="007Y"))
    (folder / "b-adult.dcm").write_bytes(make_dicom(pixels, PatientAge="045Y"))
    shutil.copy(kermany_fullres[0], folder / "c-no-age.jpeg")
    return folder


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of an empty database on a throwaway PostgreSQL server started for this test session (tests/pg_server.py).

    Skips (with the server's own error) only when no PostgreSQL binaries exist or the server cannot start.
    """
    from tests.pg_server import PostgresUnavailable, running_postgres

    try:
        server = running_postgres()
        url = server.__enter__()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL server unavailable: {exc}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, and (marked `postgres`) a new database on the test server."""
    if request.param == "sqlite":
        yield f"sqlite:///{(tmp_path / 'xray.db').as_posix()}"
        return
    from tests.pg_server import drop_database, fresh_database

    server = request.getfixturevalue("postgres_url")
    url, name = fresh_database(server)
    yield url
    drop_database(server, name)


@pytest.fixture
def engine(db_url: str) -> Iterator:
    """An engine on `db_url` with the tables created; disposed after the test."""
    from xray.records.db import init_db, make_engine

    engine = make_engine(db_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine) -> Iterator:
    """A SQLModel session on `engine` (SQLite, and PostgreSQL where marked)."""
    from sqlmodel import Session

    with Session(engine) as session:
        yield session


@pytest.fixture
def doctors(session) -> tuple:
    """Two doctor accounts without passwords, alice ("Alice Äsk") and bob, for the `xray.web` tests."""
    from xray.records import crud

    alice = crud.create_doctor(session, username="alice", display_name="Alice Äsk", password_hash=None)
    bob = crud.create_doctor(session, username="bob", display_name="Bob", password_hash=None)
    return alice, bob


@pytest.fixture
def model_name(tiny_model_dir: Path) -> str:
    """The tiny binary model as the app names it (`local-dir:PATH`)."""
    return f"local-dir:{tiny_model_dir}"


@pytest.fixture
def store(tmp_path: Path):
    """An empty content-addressed image store in a temporary folder."""
    from xray.records.storage import ImageStore

    return ImageStore(tmp_path / "images")
