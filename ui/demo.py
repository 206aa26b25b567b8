"""Public demo tab: a sample or an upload in; probabilities, Grad-CAM, input check and caveat out. No sign-in.

Nothing is stored: the handlers call `xray.web.demo` with the `PublicContext` (no database, no image store).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ui.common import NOTICE_HTML, PublicContext
from xray.web import demo


def demo_tab(pctx: PublicContext) -> None:
    """A sample or an upload in; probabilities, Grad-CAM, input check and caveat out."""
    limit_mb = f"{pctx.settings.demo_max_upload_mb:g}"
    gr.Markdown(
        "Try the model without an account: pick a sample X-ray, or upload a frontal chest X-ray of your own "
        f"(PNG, JPEG or DICOM, up to {limit_mb} MiB). **Nothing is stored**: no record is made, the upload is deleted "
        "as soon as it is read, and the result exists only in this page. Please do not upload identifiable patient "
        f"images. Each address may run {pctx.settings.demo_rate} analyses per minute."
    )
    if not pctx.models:
        gr.Markdown("⚠️ **No model is installed** on this server, so the demo cannot answer.")
    with gr.Row():
        with gr.Column(scale=1):
            if pctx.samples:
                gr.HTML(demo.thumbnails_html(pctx.samples))
            sample = gr.Radio(
                choices=[(s.label, s.name) for s in pctx.samples], value=None, elem_id="xray-demo-samples",
                label="Sample X-rays (Kermany et al. 2018, CC BY 4.0): pick one to analyse it",
            )  # fmt: skip
            upload = gr.File(
                label=f"Or upload a chest X-ray (up to {limit_mb} MiB)", file_types=pctx.upload_types, type="filepath"
            )
            run = gr.Button("Analyse the upload", variant="primary")
            model = gr.Dropdown(choices=pctx.model_choices, value=pctx.default_model, label="Model (test metrics)")
        with gr.Column(scale=2):
            probabilities = gr.Label(
                label="Probabilities (calibrated)", num_top_classes=5, elem_id="xray-demo-probabilities"
            )
            summary = gr.Markdown(elem_id="xray-demo-summary")
            check = gr.Markdown(elem_id="xray-demo-check")
            caveat = gr.Markdown(elem_id="xray-demo-caveat")
            images = gr.HTML(elem_id="xray-demo-images")
            heat = gr.Markdown()
            info = gr.Markdown()
            gr.HTML(NOTICE_HTML)
    outputs = [probabilities, summary, check, caveat, images, heat, info]
    sample.input(
        pctx.handler(run_demo_sample), [sample, model], outputs, api_name="demo_sample",
        concurrency_limit=2, concurrency_id="demo",
    )  # fmt: skip
    run.click(
        pctx.handler(run_demo_upload), [upload, model], outputs, api_name="demo", concurrency_limit=2,
        concurrency_id="demo",
    )  # fmt: skip


def run_demo_sample(pctx: PublicContext, name: str | None, model_name: str | None, request: gr.Request) -> tuple:
    """Analyse a bundled sample (counted against the caller's rate limit)."""
    demo.find_sample(name, pctx.samples)
    pctx.limiter.hit(pctx.address(request))
    result = demo.analyse_sample(
        name, offered=pctx.samples, model_name=model_name, allowed_models=pctx.models, max_pixels=pctx.max_pixels
    )
    return _demo_outputs(result)


def run_demo_upload(pctx: PublicContext, file: str | None, model_name: str | None, request: gr.Request) -> tuple:
    """Analyse an upload (counted against the caller's rate limit); its temporary copy is deleted first."""
    demo.check_own_upload(file, pctx.upload_root)
    try:
        data = demo.read_demo_upload(file, max_bytes=pctx.max_bytes)
    finally:
        demo.discard_upload(file, pctx.upload_root)
    pctx.limiter.hit(pctx.address(request))
    result = demo.analyse_bytes(
        data, filename=Path(str(file)).name, model_name=model_name, allowed_models=pctx.models,
        max_pixels=pctx.max_pixels,
    )  # fmt: skip
    return _demo_outputs(result)


def _demo_outputs(result: demo.DemoResult) -> tuple:
    """Probabilities, summary, input check, caveat, images, heat check, model line; out of scope: no prediction."""
    if not result.in_scope:
        return None, "", result.gate_text, result.caveat_text, result.images_html(), "", result.model_text
    return (
        result.probabilities, result.summary, result.gate_text, result.caveat_text, result.images_html(),
        result.heat_text, result.model_text,
    )  # fmt: skip
