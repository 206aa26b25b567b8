"""The doctors' app: the header (who is signed in, log-out, notices) above the tabs, each from its own module.

Diagnose (`ui.diagnose`), History with the record panel (`ui.history`), Batch, Compare and About.
"""

from __future__ import annotations

import html

import gradio as gr
from sqlalchemy import Engine
from sqlmodel import Session

from ui import common
from ui.about import about_tab
from ui.batch import batch_tab
from ui.common import NOTICE_HTML, STORAGE_WARNING, TITLE, AppContext, app_context, doctor_path
from ui.compare import compare_tab
from ui.diagnose import diagnose_tab
from ui.history import history_tab
from xray.config import Settings
from xray.web import views


def build_demo(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    model_names: list[str] | None = None,
) -> gr.Blocks:
    """Build the Blocks app: the header with the sign-in, then the Diagnose, History, Batch, Compare and About tabs.

    Args:
        settings: application settings (default: from the environment).
        engine: database engine with tables created (default: `startup.open_database(settings)`).
        model_names: the models offered (default: bundled models plus XRAY_EXTRA_MODELS).
    """
    ctx = app_context(settings, engine, model_names)
    with gr.Blocks(title=TITLE) as demo:
        header(ctx, demo)
        with gr.Tabs():
            model = diagnose_tab(ctx)
            history_tab(ctx, demo)
            batch_tab(ctx)
            compare_tab(ctx)
            about_tab(ctx, demo, model)
    return demo


def header(ctx: AppContext, demo: gr.Blocks) -> None:
    """Title, who is signed in, the log-out button, and the decision-support notice."""
    with gr.Row():
        gr.Markdown(f"# {TITLE}", scale=4)
        with gr.Column(scale=2, min_width=220):
            greeting = gr.Markdown()
            gr.Button("Log out", link=f"{doctor_path(ctx.settings)}/logout", size="sm", variant="secondary")
        if common.oauth_enabled():
            # Its presence makes Gradio add the Hugging Face OAuth routes used by the sign-in page link.
            gr.LoginButton(visible=False)
    gr.HTML(NOTICE_HTML)
    if not ctx.settings.records_survive_restart:
        gr.HTML(f'<div class="xray-gate" role="alert"><p><strong>{html.escape(STORAGE_WARNING)}</strong></p></div>')
    demo.load(ctx.handler(greet), None, greeting, api_visibility="private")


def greet(ctx: AppContext, request: gr.Request) -> str:
    """`Signed in as **Dr Grey** (dr.grey)`."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        return f"Signed in as **{views.md_escape(doctor.display_name)}** (`{doctor.username}`)"
