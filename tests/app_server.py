"""Launch the real app (app.py) on a free port with a temporary SQLite database, for API and browser tests."""

from __future__ import annotations

import os
import socket
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
def running_app(root: Path, *, model_names: list[str], doctors: dict[str, str], **settings: Any) -> Iterator[dict]:
    """Start `app.build_demo` + `app.launch_options` exactly as `main()` does, with the given doctor accounts.

    Yields:
        {"url", "engine", "settings", "root"} of the running app.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from sqlmodel import Session

    import app
    from xray.config import Settings
    from xray.records import auth
    from xray.web import startup

    config = Settings(data_dir=root / "data", port=free_port(), extra_models="", **settings)
    engine = startup.open_database(config)
    with Session(engine) as session:
        for name, password in doctors.items():
            if auth.active_doctor(session, name) is None:  # a restarted app keeps its accounts
                auth.add_doctor(
                    session, username=name, password=password, display_name=f"Dr {name.split('.')[-1].title()}"
                )
    demo = app.build_demo(config, engine=engine, model_names=model_names)
    demo.queue(default_concurrency_limit=8)
    demo.launch(**app.launch_options(config, engine), prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{config.port}/", "engine": engine, "settings": config, "root": root}
    finally:
        demo.close()
        engine.dispose()
