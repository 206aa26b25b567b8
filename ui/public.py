"""The public app (no sign-in, no database): the header, the demo tab and the Models tab."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ui.common import DOCTOR_PATH, NOTICE_HTML, PUBLIC_UPLOAD_FOLDER, TITLE, PublicContext, offered_models
from ui.demo import demo_tab
from ui.models import models_tab
from xray.config import Settings, get_settings
from xray.web import demo


def build_public(settings: Settings | None = None, *, model_names: list[str] | None = None) -> gr.Blocks:
    """Build the public app: the demo (samples or an upload, nothing stored) and the Models page; no sign-in.

    It has no database engine and no image store, so nothing it does can create a record. Its images go back
    inline, so `public_app_options` can refuse every file download, and its uploads are deleted once read.

    Args:
        settings: application settings (default: from the environment).
        model_names: the models offered (default: bundled models plus XRAY_EXTRA_MODELS).
    """
    settings = settings or get_settings()
    models, infos = offered_models(settings, model_names)
    pctx = PublicContext(
        settings=settings, models=models, infos=infos, samples=demo.samples(),
        limiter=demo.RateLimiter(settings.demo_rate), upload_root=public_upload_root(),
    )  # fmt: skip
    # abandoned uploads (uploaded, never analysed) are swept after two minutes
    with gr.Blocks(title=f"{TITLE}: public demo", delete_cache=(60, 120)) as public:
        with gr.Row():
            gr.Markdown(f"# {TITLE}: public demo", scale=4)
            with gr.Column(scale=1, min_width=200):
                gr.Button(
                    "Doctors: sign in", link=f"{DOCTOR_PATH}/", size="sm", variant="secondary",
                    elem_id="xray-doctor-link",
                )  # fmt: skip
        gr.HTML(NOTICE_HTML)
        with gr.Tabs():
            with gr.Tab("Try the model", id="demo"):
                demo_tab(pctx)
            with gr.Tab("Models", id="models"):
                models_tab(models)
    return public


def public_upload_root() -> str:
    """The public demo's upload folder: a folder of its own inside Gradio's upload folder."""
    from gradio.utils import get_upload_folder

    return str(Path(get_upload_folder()) / PUBLIC_UPLOAD_FOLDER)
