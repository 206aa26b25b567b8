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
