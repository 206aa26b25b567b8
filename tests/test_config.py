"""Settings: the platform's listen address and storage are honoured, XRAY_ variables override them."""

from __future__ import annotations

from pathlib import Path

import pytest

from xray import config
from xray.config import Settings

SPACE_ENV = {"SYSTEM": "spaces", "SPACE_ID": "org/xray", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"}


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name in ["SYSTEM", "SPACE_ID", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "XRAY_HOST", "XRAY_PORT",
                 "XRAY_DATA_DIR", "XRAY_DATABASE_URL"]:  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    monkeypatch.setattr(config, "SPACE_STORAGE", tmp_path / "no-storage")
    return monkeypatch


def test_local_defaults(clean_env):
    settings = Settings()
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 7860, Path("data"))
    assert settings.records_survive_restart and "SQLite file" in settings.records_location


def test_space_environment_is_honoured_and_xray_overrides_it(clean_env):
    for name, value in SPACE_ENV.items():
        clean_env.setenv(name, value)
    settings = Settings()
    assert (settings.host, settings.port) == ("0.0.0.0", 7861)
    clean_env.setenv("XRAY_HOST", "127.0.0.2")
    clean_env.setenv("XRAY_PORT", "9000")
    assert (Settings().host, Settings().port) == ("127.0.0.2", 9000)


def test_space_without_persistent_storage_warns(clean_env):
    for name, value in SPACE_ENV.items():
        clean_env.setenv(name, value)
    settings = Settings()
    assert settings.data_dir == Path("data") and not settings.records_survive_restart
    assert "NOT persistent" in settings.records_location
    clean_env.setenv("XRAY_DATABASE_URL", "postgresql+psycopg://doc:secret@db.example/xray")
    assert not Settings().records_survive_restart  # the records survive, the images in data/images do not
    clean_env.setenv("XRAY_STORAGE_URL", "s3://bucket/xray")
    external = Settings()
    assert external.records_survive_restart
    assert external.records_location == "postgresql database xray on db.example"


def test_space_with_persistent_storage_keeps_records_there(clean_env, tmp_path: Path):
    storage = tmp_path / "data"
    storage.mkdir()
    clean_env.setattr(config, "SPACE_STORAGE", storage)
    for name, value in SPACE_ENV.items():
        clean_env.setenv(name, value)
    settings = Settings()
    assert settings.data_dir == storage / "xray" and settings.records_survive_restart
    assert settings.resolved_database_url == f"sqlite:///{(storage / 'xray' / 'xray.db').as_posix()}"
    clean_env.setenv("XRAY_DATA_DIR", str(tmp_path / "elsewhere"))
    assert not Settings().records_survive_restart  # a data folder outside /data is lost at restart


def test_records_location_names_the_sqlite_file_of_xray_database_url(clean_env, tmp_path: Path):
    other = tmp_path / "elsewhere" / "clinic.db"
    clean_env.setenv("XRAY_DATABASE_URL", f"sqlite:///{other.as_posix()}")
    location = Settings(data_dir=tmp_path / "data").records_location
    assert location == f"SQLite file {other.resolve()}" and "xray.db" not in location
    clean_env.setenv("XRAY_DATABASE_URL", "sqlite://")
    assert "in memory" in Settings().records_location
    clean_env.delenv("XRAY_DATABASE_URL")
    default = Settings(data_dir=tmp_path / "data").records_location
    assert default == f"SQLite file {(tmp_path / 'data' / 'xray.db').resolve()}"
