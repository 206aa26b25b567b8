"""Settings from the environment (prefix `XRAY_`), with defaults that run a local demo."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository root: bundled models live in `models/` beside the `xray/` package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Application settings. Every field can be set as `XRAY_<FIELD>` in the environment or a `.env` file."""

    model_config = SettingsConfigDict(env_prefix="XRAY_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Folder for the SQLite file and stored uploads.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/xray.db. PostgreSQL: postgresql+psycopg://"
    )
    models_dir: Path = Field(default=PROJECT_ROOT / "models", description="Folder of bundled model folders.")
    default_model: str = Field(default="pneumonia", description="Model name preselected in the app.")
    extra_models: str = Field(default="", description="Comma-separated extra model names (hf-hub:..., local-dir:...).")
    max_image_pixels: int = Field(default=80_000_000, description="Largest accepted image, in pixels.")
    max_upload_mb: float = Field(default=50.0, description="Largest accepted upload, in MiB.")
    num_threads: int | None = Field(default=None, description="torch intra-op threads; default: torch's choice.")
    onnx: bool = Field(default=True, description="Run the feature extractor with ONNX Runtime (exported once, cached).")
    cache_dir: Path | None = Field(default=None, description="Cache for exported ONNX graphs; default ~/.cache/xray.")
    admin_username: str | None = Field(default=None, description="Bootstrap a doctor account at start (hosted Space).")
    admin_password: str | None = Field(default=None, description="Its password, from a secret; never in code.")
    host: str = "127.0.0.1"
    port: int = 7860

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'xray.db').as_posix()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process from the environment."""
    return Settings()
