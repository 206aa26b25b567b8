"""About tab: the model card of the model chosen on the Diagnose tab (or here), the version and where data is kept."""

from __future__ import annotations

import gradio as gr
from sqlmodel import Session

import xray
from ui.common import AppContext
from xray.web import models_page, views


def about_tab(ctx: AppContext, demo: gr.Blocks, diagnose_model: gr.Dropdown) -> None:
    """The model card of the model chosen on the Diagnose tab (or here), and the app version."""
    with gr.Tab("About", id="about"):
        model = gr.Dropdown(
            choices=ctx.model_choices, value=ctx.default_model, label="Model",
            info=ctx.model_info,
        )
        card = gr.HTML(elem_id="xray-about-card")
        gr.Markdown(
            f"App version **{xray.__version__}** · Gradio {gr.__version__}. {views.NOTICE} "
            "Images and records stay on this server; see the README for data handling.\n\n"
            f"Records are kept in: {views.md_escape(ctx.settings.records_location)}. Images: "
            f"{views.md_escape(str(ctx.settings.storage_url or (ctx.settings.data_dir / 'images').resolve()))}."
        )
    show_card = ctx.handler(model_card)
    demo.load(show_card, model, card, api_name="model_card_on_load", api_visibility="private")
    diagnose_model.change(
        lambda name: name, diagnose_model, model, api_name="sync_about_model", api_visibility="private"
    )
    model.change(show_card, model, card, api_name="model_card")


def model_card(ctx: AppContext, name: str | None, request: gr.Request) -> str:
    """The registered model's version, test AUC per population and card, as HTML."""
    with Session(ctx.engine) as session:
        ctx.doctor(session, request)
    if not name:
        return "No model is installed."
    if name not in ctx.models:
        raise gr.Error(f"Unknown model '{name}'.")
    return models_page.about_html(ctx.infos[name])
