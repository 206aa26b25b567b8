"""Database tables (SQLModel) and the engine: SQLite by default (WAL), PostgreSQL through psycopg.

Four tables: `doctor` (accounts), `record` (one saved prediction each, owned by one doctor), `signinevent`
(every sign-in attempt, for throttling and audit) and `signinsession` (signed-in browsers, by token hash, so
that a restart signs nobody out and replicas on one database accept each other's sessions). Nothing touches the
database at import; call `make_engine` and `init_db` at start-up.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, Engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Field, SQLModel, create_engine

logger = logging.getLogger(__name__)

#: How long a SQLite writer waits for another writer's lock before giving up (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 30_000


def utcnow() -> datetime:
    """The current time in UTC (timezone-aware; SQLModel stores and returns datetimes in UTC)."""
    return datetime.now(UTC)


class Doctor(SQLModel, table=True):
    """A doctor account. Passwords are stored only as Argon2 hashes (see `xray.records.auth`)."""

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=64, description="lower-case sign-in name")
    display_name: str = Field(max_length=200, description="how the app greets the doctor")
    password_hash: str | None = Field(default=None, description="Argon2 hash; None for hub-only accounts")
    hf_username: str | None = Field(
        default=None, index=True, unique=True, max_length=100, description="lower-case Hugging Face user name"
    )
    is_active: bool = Field(default=True, description="disabled accounts cannot sign in or use the API")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Record(SQLModel, table=True):
    """One prediction saved for one doctor: patient fields, the stored image, the model and its output.

    The model output (probabilities, predicted label, model id) is never edited after creation. The patient
    fields can be corrected; the `final_*` fields hold the doctor's own final read, set later and kept apart
    from the model's output.

    Record numbers are never given twice: a number printed on a PDF or a CSV must keep meaning that patient after
    the record is deleted. PostgreSQL sequences never go back; SQLite needs AUTOINCREMENT (without it, deleting
    the newest record makes its number the next one). Databases made before are migrated by `init_db`.
    """

    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    doctor_id: int = Field(foreign_key="doctor.id", index=True)
    patient_name: str = Field(index=True, max_length=200)
    exam_date: date = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime | None = Field(default=None)
    # The uploaded file, stored in the data directory under its SHA-256 (see xray.records.storage).
    image_sha256: str = Field(index=True, max_length=64)
    image_filename: str = Field(default="", max_length=255)
    image_format: str = Field(default="", max_length=32)
    image_width: int = 0
    image_height: int = 0
    # The model and its output, as served.
    model_name: str = Field(max_length=300)
    model_version: str = Field(max_length=100)
    architecture: str = Field(default="", max_length=100)
    label_names: list[str] = Field(sa_column=Column(JSON, nullable=False))
    probabilities: dict[str, float] = Field(sa_column=Column(JSON, nullable=False))
    predicted_label: str = Field(index=True, max_length=100)
    positive_label: str | None = Field(default=None, max_length=100)
    threshold: float | None = None
    # Models with one threshold per population: the population whose threshold `threshold` is, and why it was
    # chosen ("from the DICOM age 45 years", "chosen by the doctor"); None for a model's pooled threshold.
    population: str | None = Field(default=None, max_length=20)
    population_reason: str | None = Field(default=None, max_length=100)
    cam_method: str = Field(default="gradcam", max_length=20)
    cam_target_label: str = Field(default="", max_length=100)
    heatmap_sha256: str | None = Field(default=None, max_length=64)
    latency_ms: float = 0.0
    # The doctor's own read, set later (trust features); never changes the model's output above.
    final_read: str | None = Field(default=None, max_length=100)
    final_note: str | None = Field(default=None, max_length=2000)
    final_read_at: datetime | None = None
    # Trust checks at prediction time: the input gate's reasons (JSON list; empty list = in scope, None = not
    # checked) and the share of Grad-CAM heat over the estimated lung fields (None = not measured).
    gate_reasons: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    heat_in_lungs: float | None = None
    heat_in_chest: float | None = None


class SignInEvent(SQLModel, table=True):
    """One sign-in attempt: who, from where, when and how it ended (success, bad_credentials, throttled, ...)."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    username: str = Field(index=True, max_length=200)
    address: str = Field(default="", index=True, max_length=100)
    outcome: str = Field(max_length=20)


class SignInSession(SQLModel, table=True):
    """A signed-in browser. Only the SHA-256 of its cookie token is stored, so a database leak yields no session."""

    id: int | None = Field(default=None, primary_key=True)
    token_sha256: str = Field(index=True, unique=True, max_length=64)
    doctor_id: int = Field(foreign_key="doctor.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
    revoked_at: datetime | None = Field(default=None)


def normalize_database_url(url: str) -> str:
    """Pick the installed PostgreSQL driver (psycopg 3) for plain `postgresql://` / `postgres://` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers work while a prediction is being written; NORMAL sync is durable enough with WAL.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create the engine for a database URL (SQLite file folders are created; WAL is switched on).

    Args:
        url: SQLAlchemy URL, e.g. `sqlite:///data/xray.db` or `postgresql+psycopg://user@host/db`.
    """
    url = normalize_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pool_pre_ping drops connections the server closed while the app was idle.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def init_db(engine: Engine) -> None:
    """Create missing tables and nullable columns, and make SQLite record numbers AUTOINCREMENT.

    Existing rows are kept, ids included. Safe to run from several replicas at once.
    """
    SQLModel.metadata.create_all(engine)
    _add_missing_nullable_columns(engine)
    if engine.dialect.name == "sqlite":
        _make_sqlite_autoincrement(engine, Record.__table__)
    logger.info("database ready: %s", engine.url.render_as_string(hide_password=True))


def _add_missing_nullable_columns(engine: Engine) -> None:
    """`ALTER TABLE ... ADD COLUMN` for nullable columns added to a table after its database was created.

    Only nullable columns without a server default are added this way (existing rows read them as NULL);
    anything else needs a real migration, and is logged.
    """
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable or column.primary_key:
                logger.error("table %s lacks column %s, which cannot be added automatically", table.name, column.name)
                continue
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))
            logger.info("added column %s.%s (%s) to an existing database", table.name, column.name, kind)


_AUTOINCREMENT = re.compile(r"\bAUTOINCREMENT\b", re.IGNORECASE)


def _make_sqlite_autoincrement(engine: Engine, table: Any) -> None:
    """Rebuild a SQLite table made without AUTOINCREMENT (before ids had to stay unique forever), keeping every row.

    The whole rebuild runs in one `BEGIN IMMEDIATE` transaction: a replica starting at the same time waits for the
    write lock, then finds the table already rebuilt and does nothing; a crash leaves the old table as it was.
    Nothing references the table, so dropping the old copy breaks no foreign key. SQLite sets the AUTOINCREMENT
    counter to the highest id copied, so no id in use or in the table's past (while the old table had it) returns.
    """
    from sqlalchemy.schema import CreateIndex, CreateTable

    name = table.name
    old = f"_{name}_before_autoincrement"
    raw = engine.raw_connection()
    try:
        connection = raw.driver_connection
        previous = connection.isolation_level
        connection.isolation_level = None  # we issue BEGIN/COMMIT ourselves: DDL inside one transaction
        cursor = connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                row = cursor.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
                if row is None or _AUTOINCREMENT.search(row[0] or ""):
                    cursor.execute("COMMIT")
                    return
                columns = [c[1] for c in cursor.execute(f'PRAGMA table_info("{name}")')]
                wanted = [c for c in (col.name for col in table.columns) if c in columns]
                count = cursor.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                indexes = [r[0] for r in cursor.execute(
                    "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=? AND sql IS NOT NULL", (name,)
                )]  # fmt: skip
                cursor.execute(f'ALTER TABLE "{name}" RENAME TO "{old}"')
                for index in indexes:  # their names are needed by the new table's indexes
                    cursor.execute(f'DROP INDEX "{index}"')
                cursor.execute(str(CreateTable(table).compile(dialect=engine.dialect)))
                for index in table.indexes:
                    cursor.execute(str(CreateIndex(index).compile(dialect=engine.dialect)))
                listed = ", ".join(f'"{c}"' for c in wanted)
                cursor.execute(f'INSERT INTO "{name}" ({listed}) SELECT {listed} FROM "{old}" ORDER BY rowid')
                copied = cursor.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                if copied != count:
                    raise RuntimeError(f"copied {copied} of {count} rows of table {name}; nothing was changed")
                cursor.execute(f'DROP TABLE "{old}"')
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            logger.warning("table %s rebuilt with AUTOINCREMENT (%d rows kept): its ids are never reused", name, count)
        finally:
            cursor.close()
            connection.isolation_level = previous
    finally:
        raw.close()
