"""Settings from the environment (prefix `XRAY_`), with defaults that run a local demo or a Hugging Face Space.

Where the platform says where to listen or where data survives, its word is the default: `GRADIO_SERVER_NAME` and
`GRADIO_SERVER_PORT` (set by a Space) give the host and port, and on a Space with persistent storage mounted at
`/data` records and images go there. `XRAY_HOST`, `XRAY_PORT` and `XRAY_DATA_DIR` override both.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository root: bundled models live in `models/` beside the `xray/` package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Where a Hugging Face Space mounts its persistent storage (https://huggingface.co/docs/hub/spaces-storage).
SPACE_STORAGE = Path("/data")


def on_space() -> bool:
    """True inside a Hugging Face Space (the test Gradio itself uses: `SYSTEM=spaces` and a `SPACE_ID`)."""
    return os.environ.get("SYSTEM") == "spaces" and bool(os.environ.get("SPACE_ID"))


def persistent_storage() -> Path | None:
    """The Space's persistent storage folder when one is mounted and writable, else None."""
    if on_space() and SPACE_STORAGE.is_dir() and os.access(SPACE_STORAGE, os.W_OK):
        return SPACE_STORAGE
    return None


def _default_data_dir() -> Path:
    storage = persistent_storage()
    return storage / "xray" if storage is not None else Path("data")


def _default_host() -> str:
    return os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"


def _default_port() -> int:
    return int(os.environ.get("GRADIO_SERVER_PORT") or 7860)


class Settings(BaseSettings):
    """Application settings. Every field can be set as `XRAY_<FIELD>` in the environment or a `.env` file."""

    model_config = SettingsConfigDict(env_prefix="XRAY_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Folder for the SQLite file and stored uploads; default data/, or /data/xray on a Space with "
        "persistent storage.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/xray.db. PostgreSQL: postgresql+psycopg://",
    )
    storage_url: str | None = Field(
        default=None,
        description="Where uploads and heatmaps are stored: a folder shared by replicas or an fsspec URL "
        "(s3://bucket/prefix with s3fs installed); default <data_dir>/images.",
    )
    models_dir: Path = Field(default=PROJECT_ROOT / "models", description="Folder of bundled model folders.")
    default_model: str = Field(default="pneumonia", description="Model name preselected in the app.")
    lung_model: str = Field(
        default="lungs", description="Lung segmentation model for the heat check (bundled name, local-dir:, hf-hub:)."
    )
    extra_models: str = Field(default="", description="Comma-separated extra model names (hf-hub:..., local-dir:...).")
    max_image_pixels: int = Field(default=80_000_000, description="Largest accepted image, in pixels.")
    max_upload_mb: float = Field(default=50.0, description="Largest accepted upload, in MiB.")
    inference_concurrency: int = Field(
        default=2, ge=1, description="Model requests (diagnose, batch, compare) the app runs at once; others queue."
    )
    num_threads: int | None = Field(
        default=None,
        description="torch intra-op threads per request; default: twice the cores' share of each concurrent request.",
    )
    onnx: bool = Field(default=True, description="Run the feature extractor with ONNX Runtime (exported once, cached).")
    cache_dir: Path | None = Field(default=None, description="Cache for exported ONNX graphs; default ~/.cache/xray.")
    admin_username: str | None = Field(default=None, description="Bootstrap a doctor account at start (hosted Space).")
    admin_password: str | None = Field(default=None, description="Its password, from a secret; never in code.")
    session_hours: float = Field(default=12.0, description="How long a doctor's sign-in lasts (hours).")
    host: str = Field(default_factory=_default_host, description="Listen address; default GRADIO_SERVER_NAME or local.")
    port: int = Field(default_factory=_default_port, description="Listen port; default GRADIO_SERVER_PORT or 7860.")
    public_demo: bool | None = Field(
        default=None,
        description="Serve the public demo and Models page at / without sign-in, the doctors' app at /doctor/ "
        "(XRAY_PUBLIC_DEMO=0|1); default on on a Hugging Face Space, off elsewhere (doctors' app at /).",
    )
    demo_max_upload_mb: float = Field(default=10.0, gt=0, description="Largest upload the public demo takes, in MiB.")
    demo_rate: int = Field(
        default=10, ge=1, description="Analyses per minute the public demo allows one client address."
    )

    @property
    def public_demo_enabled(self) -> bool:
        """Whether the public demo is served: `public_demo` when set, else only on a Hugging Face Space."""
        return on_space() if self.public_demo is None else self.public_demo

    @property
    def records_survive_restart(self) -> bool:
        """False on a Space where records or images would be lost at restart.

        Records survive in an external database or on the Space's persistent storage; images in an fsspec store
        (`XRAY_STORAGE_URL=s3://...`) or on the persistent storage. Elsewhere the data folder is on the machine's
        own disk, which a restart keeps.
        """
        if not on_space():
            return True
        storage = persistent_storage()
        kept = storage is not None and _inside(self.data_dir, storage)
        records = kept or bool(self.database_url and not self.database_url.startswith("sqlite"))
        if self.storage_url:
            images = "://" in self.storage_url or (storage is not None and _inside(Path(self.storage_url), storage))
        else:
            images = kept
        return records and images

    @property
    def records_location(self) -> str:
        """Where records are kept, in words for the About tab (no credentials)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.resolved_database_url)
        if url.get_backend_name() != "sqlite":
            return f"{url.get_backend_name()} database {url.database or ''} on {url.host or 'localhost'}"
        # XRAY_DATABASE_URL may name any SQLite file, not only the one in the data folder.
        where = (
            f"SQLite file {Path(url.database).resolve()}"
            if url.database not in (None, "", ":memory:")
            else "SQLite database in memory (lost when the app stops)"
        )
        return where + ("" if self.records_survive_restart else " (NOT persistent: lost when the Space restarts)")

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'xray.db').as_posix()}"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process from the environment."""
    return Settings()
