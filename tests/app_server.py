"""Launch the real app (app.py) on a free port with a temporary SQLite database, for API and browser tests."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(server_app: Any, port: int, *, timeout: float = 120.0) -> Iterator[None]:
    """Run an ASGI app with uvicorn (lifespan included, as `app.main` does) in a thread until the block ends."""
    import uvicorn
    from gradio.http_server import Server  # uvicorn's server without signal handlers, fit for a thread

    server = Server(uvicorn.Config(server_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - started > timeout:
            raise RuntimeError(f"the app did not start on port {port}")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def running_app(root: Path, *, model_names: list[str], doctors: dict[str, str], **settings: Any) -> Iterator[dict]:
    """Start `app.create_app` as `main()` does (uvicorn, same mounts and options), with the given doctor accounts.

    `public_demo` defaults to off (a local clinic install: the doctors' app at `/`); with `public_demo=True` the
    public app is at `/` and the doctors' app at `/doctor/`.

    Yields:
        {"url" (the doctors' app), "public_url" (None when off), "base", "engine", "settings", "root"}.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from sqlmodel import Session

    import app
    from xray.config import Settings
    from xray.records import auth
    from xray.web import startup

    settings.setdefault("public_demo", False)
    config = Settings(data_dir=root / "data", port=free_port(), extra_models="", **settings)
    engine = startup.open_database(config)
    with Session(engine) as session:
        for name, password in doctors.items():
            if auth.active_doctor(session, name) is None:  # a restarted app keeps its accounts
                auth.add_doctor(
                    session, username=name, password=password, display_name=f"Dr {name.split('.')[-1].title()}"
                )
    server_app = app.create_app(config, engine=engine, model_names=model_names)
    base = f"http://127.0.0.1:{config.port}/"
    try:
        with serving(server_app, config.port):
            yield {
                "url": base + app.doctor_path(config).lstrip("/") + ("/" if app.doctor_path(config) else ""),
                "public_url": base if config.public_demo_enabled else None,
                "base": base,
                "engine": engine,
                "settings": config,
                "root": root,
            }
    finally:
        engine.dispose()


@contextmanager
def app_process(root: Path, *, model_names: list[str], doctors: dict[str, str], **env: str) -> Iterator[dict]:
    """`python app.py` as its own process (as `make run` or a Space starts it) on a free port, until the block ends.

    The models are offered through XRAY_EXTRA_MODELS (an empty models folder keeps the bundled ones out); `env`
    adds XRAY_* variables. The process is killed at the end of the block if it still runs.

    Yields:
        {"process" (the `subprocess.Popen`), "url" (the server's root), "settings", "log" (its output file)}.
    """
    import subprocess
    import sys

    import httpx
    from sqlmodel import Session

    from xray.config import Settings
    from xray.records import auth
    from xray.web import startup

    port = free_port()
    environ = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "XRAY_DATA_DIR": str(root / "data"),
        "XRAY_PORT": str(port),
        "XRAY_HOST": "127.0.0.1",
        "XRAY_MODELS_DIR": str(root / "no-bundled-models"),
        "XRAY_EXTRA_MODELS": ",".join(model_names),
        **env,
    }
    settings = Settings(data_dir=root / "data", port=port)
    engine = startup.open_database(settings, hint_first_account=False)
    with Session(engine) as session:
        for name, password in doctors.items():
            auth.add_doctor(session, username=name, password=password, display_name=name)
    engine.dispose()
    log = root / "app.log"
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent.parent / "app.py")],
        env=environ,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}: {log.read_text()[-3000:]}")
            if time.monotonic() - started > 180:
                raise RuntimeError(f"app.py did not answer on port {port} within 180 s")
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.25)
        yield {"process": process, "url": url, "settings": settings, "log": log}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
