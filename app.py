"""Chest X-ray decision support web app: the entry point (`python app.py`, `make run`, a Hugging Face Space).

Doctors sign in with accounts from `python -m xray users add NAME`; every handler takes the doctor from the
server-side session (`gr.Request.username`), never from a form field. The logic lives in `xray.web`; the Gradio
interface lives in the `ui` package, one module per surface (the public demo, the Models page, each doctors' tab,
the server assembly). This file only starts the server.

Two Gradio apps share one server (`create_app`): with the public demo on (`XRAY_PUBLIC_DEMO`, default on a
Hugging Face Space) `build_public` (demo and Models page, no sign-in, no database) is mounted at `/` and the
doctors' app (`build_demo`) at `/doctor/`; with it off the doctors' app alone is served at `/`, as before. The
doctors' app is always mounted with the keyword arguments of `doctor_app_options` (sign-in, routes, middleware,
limits).
"""

from __future__ import annotations

import logging
import os

from ui.common import DOCTOR_PATH, STORAGE_WARNING, TITLE, doctor_path
from ui.doctors import build_demo
from ui.public import build_public, public_upload_root
from ui.server import create_app, doctor_app_options, public_app_options, serve
from xray.config import get_settings
from xray.web import startup

__all__ = [
    "TITLE",
    "build_demo",
    "build_public",
    "create_app",
    "doctor_app_options",
    "doctor_path",
    "main",
    "public_app_options",
    "public_upload_root",
]

logger = logging.getLogger("xray.app")


def main() -> None:
    """Start the app on the settings from the environment (creates the data folder and tables).

    SIGTERM (a Space restart, a rolling update) stops it within seconds, after the events still running (a record
    being saved) have finished: `ui.server.serve`.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    settings = get_settings()
    # Concurrent inferences share the cores: measured with scripts/load_test.py (README, Performance).
    startup.serving_threads(settings)
    engine = startup.open_database(settings)
    if not settings.records_survive_restart:
        logger.warning("%s", STORAGE_WARNING)
    logger.info("records: %s", settings.records_location)
    server = create_app(settings, engine=engine)
    url = f"http://{'localhost' if settings.host == '0.0.0.0' else settings.host}:{settings.port}"
    if settings.public_demo_enabled:
        logger.info("public demo and Models page at %s/, doctors' app at %s%s/", url, url, DOCTOR_PATH)
    else:
        logger.info("doctors' app at %s/ (public demo off: XRAY_PUBLIC_DEMO=1 serves it)", url)
    serve(server, settings)


if __name__ == "__main__":
    main()
