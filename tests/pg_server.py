"""Start a throwaway PostgreSQL server for tests: initdb in a temporary folder, unix socket only, no TCP.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the `postgres` user if the
system has one, else as `nobody`; the temporary folder is handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or the server would not start (the message says why)."""


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, /usr/local/bin, or the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb") or shutil.which("initdb", path="/usr/local/bin")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists to run the server")


def _run(command: list[str], user: pwd.struct_passwd | None) -> subprocess.CompletedProcess[str]:
    if user is not None:
        runuser = shutil.which("runuser")
        if runuser:
            command = [runuser, "-u", user.pw_name, "--", *command]
        else:
            command = ["su", user.pw_name, "-s", "/bin/sh", "-c", " ".join(map(_quote, command))]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


@contextmanager
def running_postgres() -> Iterator[str]:
    """Run a PostgreSQL server for the duration of the block.

    Yields:
        A SQLAlchemy URL of an empty `xray` database on the server (psycopg driver, unix socket).

    Raises:
        PostgresUnavailable: binaries missing or the server failed to start (with its log).
    """
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or /usr/lib/postgresql"
        )
    user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="xray-pg-"))
    data = base / "data"
    log = base / "server.log"
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    os.chmod(base, 0o700)
    started = False
    try:
        init = _run(
            [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "xray", "-E", "UTF8", "--no-sync"], user
        )
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {init.stderr or init.stdout}")
        options = f"-k {base} -c listen_addresses='' -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        start = _run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"], user
        )
        if start.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {start.stderr or start.stdout}\n{server_log}")
        started = True
        create_database(f"postgresql+psycopg://xray@/postgres?host={base}", "xray")
        yield f"postgresql+psycopg://xray@/xray?host={base}"
    finally:
        if started:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user)
        shutil.rmtree(base, ignore_errors=True)


def _connect(url: str):  # noqa: ANN202 - psycopg connection
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return psycopg.connect(host=parsed.query.get("host"), user=parsed.username, dbname=parsed.database, autocommit=True)


def create_database(server_url: str, name: str) -> None:
    """CREATE DATABASE `name` through a connection to `server_url`."""
    with _connect(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def fresh_database(server_url: str) -> tuple[str, str]:
    """Create an empty database on the server; returns (its URL, its name)."""
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    create_database(server_url, name)
    return make_url(server_url).set(database=name).render_as_string(hide_password=False), name


def drop_database(server_url: str, name: str) -> None:
    """DROP DATABASE `name` (forcing out leftover connections)."""
    with _connect(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
