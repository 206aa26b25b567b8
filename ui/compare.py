"""Compare tab: every model on one image through `xray.web.compare`, side by side; nothing saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from sqlmodel import Session

from ui.common import DISPLAY_FORMAT, AppContext, quiet
from xray.web import compare, diagnose


def compare_tab(ctx: AppContext) -> None:
    """Every model on one image: the side-by-side view (the table and gallery stay for API clients)."""
    with gr.Tab("Compare", id="compare"):
        gr.Markdown(
            "Run every installed model on one image: probabilities, heatmaps and latency side by side, "
            "with each model's test metrics. For research; comparisons are not saved to History."
        )
        with gr.Row():
            upload = quiet(gr.File(label="Chest X-ray", file_types=ctx.upload_types, type="filepath", scale=2))
            method = gr.Radio(list(diagnose.CAM_METHODS), value="gradcam", label="CAM method", scale=1)
        run = gr.Button("Compare models", variant="primary")
        view = gr.HTML(elem_id="xray-compare-view")
        table = gr.Dataframe(headers=compare.COMPARE_COLUMNS, interactive=False, visible=False)
        gallery = gr.Gallery(visible=False, format=DISPLAY_FORMAT)
    # the form's cheap checks first, on an event without outputs: a missing file is one message, no error badge
    # on the result panes (/compare checks again for API clients)
    run.click(ctx.handler(check_compare_form), [upload, method], None, api_visibility="private").success(
        ctx.handler(run_compare), [upload, method], [table, gallery, view], api_name="compare",
        concurrency_id="inference",
    )  # fmt: skip


def check_compare_form(ctx: AppContext, file: str | None, method: str | None) -> None:
    """`xray.web.compare.check_compare_form` with this server's models."""
    compare.check_compare_form(file, ctx.models, method)


def run_compare(ctx: AppContext, file: str | None, method: str | None, request: gr.Request) -> tuple[Any, Any, str]:
    """Every registered model on the upload (signed-in doctors only; nothing is saved)."""
    with Session(ctx.engine) as session:
        ctx.doctor(session, request)
    results = compare.compare_models(
        file,
        filename=Path(file).name if file else None,
        model_names=ctx.models,
        method=method,
        max_upload_bytes=ctx.max_bytes,
        max_pixels=ctx.max_pixels,
    )
    table = {"headers": compare.COMPARE_COLUMNS, "data": compare.comparison_rows(results)}
    return table, compare.comparison_gallery(results), compare.comparison_html(results)
