"""Public demo tab: a sample or an upload in; probabilities, Grad-CAM, input check and caveat out. No sign-in.

Nothing is stored: the handlers call `xray.web.demo` with the `PublicContext` (no database, no image store).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui.common import NOTICE_HTML, PublicContext, decision_label, quiet
from xray.web import demo


def demo_tab(pctx: PublicContext) -> None:
    """A sample or an upload in; probabilities, Grad-CAM, input check and caveat out."""
    limit_mb = f"{pctx.settings.demo_max_upload_mb:g}"
    gr.Markdown(
        "Try the model without an account: pick a sample X-ray, or upload a frontal chest X-ray of your own "
        f"(PNG, JPEG or DICOM, up to {limit_mb} MiB). **Nothing is stored**: no record is made, the upload is deleted "
        "as soon as it is read, and the result exists only in this page. Please do not upload identifiable patient "
        f"images. {demo.rate_text(pctx.settings.demo_rate)}"
    )
    if not pctx.models:
        gr.Markdown("⚠️ **No model is installed** on this server, so the demo cannot answer.")
    with gr.Row():
        with gr.Column(scale=1):
            thumbnails = None
            if pctx.samples:
                thumbnails = gr.HTML(
                    demo.thumbnails_html(pctx.samples), css_template=demo.THUMBNAILS_CSS,
                    js_on_load=demo.THUMBNAILS_JS, elem_id="xray-demo-thumbnails",
                )  # fmt: skip
            sample = gr.Radio(
                choices=[(s.label, s.name) for s in pctx.samples], value=None, elem_id="xray-demo-samples",
                label="Sample X-rays (Kermany et al. 2018, CC BY 4.0): click a thumbnail or pick one to analyse it",
            )  # fmt: skip
            upload = quiet(gr.File(
                label=f"Or upload a chest X-ray (up to {limit_mb} MiB)", file_types=pctx.upload_types, type="filepath"
            ))  # fmt: skip
            run = gr.Button("Analyse the upload", variant="primary")
            model = gr.Dropdown(
                choices=pctx.model_choices, value=pctx.default_model, label="Model (test metrics)",
                info=pctx.model_info,
            )
        with gr.Column(scale=2):
            probabilities = decision_label(
                label="Probabilities (calibrated)", num_top_classes=5, elem_id="xray-demo-probabilities"
            )
            summary = gr.Markdown(elem_id="xray-demo-summary")
            check = gr.Markdown(elem_id="xray-demo-check")
            caveat = gr.Markdown(elem_id="xray-demo-caveat")
            images = gr.HTML(elem_id="xray-demo-images")
            heat = gr.Markdown()
            info = gr.Markdown(elem_id="xray-demo-info")
            gr.HTML(NOTICE_HTML)
    outputs = [probabilities, summary, check, caveat, images, heat, info]  # demo.DEMO_OUTPUTS order
    sample.input(
        pctx.handler(run_demo_sample), [sample, model], outputs, api_name="demo_sample",
        concurrency_limit=2, concurrency_id="demo",
    )  # fmt: skip
    if thumbnails is not None:
        # every click, the same thumbnail again too; it also selects the sample in the list
        thumbnails.click(
            pctx.handler(run_demo_thumbnail), [model], [sample, *outputs], api_visibility="private",
            concurrency_limit=2, concurrency_id="demo",
        )  # fmt: skip
    # another model never leaves the old model's answer: the selected sample again, or an empty result area
    model.input(
        pctx.handler(run_demo_model_change), [sample, model], outputs, api_visibility="private",
        concurrency_limit=2, concurrency_id="demo",
    )  # fmt: skip
    run.click(
        pctx.handler(run_demo_upload), [upload, model], outputs, api_name="demo", concurrency_limit=2,
        concurrency_id="demo",
    ).success(lambda: None, None, sample, api_visibility="private", queue=False)  # an upload's result: no sample


def _sample_options(pctx: PublicContext, request: gr.Request) -> dict[str, Any]:
    """`demo.show_sample`'s keyword arguments for this request (the model name aside)."""
    return {
        "offered": pctx.samples, "allowed_models": pctx.models, "max_pixels": pctx.max_pixels,
        "limiter": pctx.limiter, "address": pctx.address(request), "cache": demo.SAMPLE_RESULTS,
    }  # fmt: skip


def run_demo_sample(pctx: PublicContext, name: str | None, model_name: str | None, request: gr.Request) -> tuple:
    """A bundled sample: shown at once when already analysed with this model, else analysed and counted."""
    return demo.show_sample(name, model_name=model_name, **_sample_options(pctx, request))


def run_demo_thumbnail(pctx: PublicContext, model_name: str | None, event: gr.EventData, request: gr.Request) -> tuple:
    """A thumbnail click: that sample, selected in the list, then its result."""
    name = demo.clicked_sample(event)
    return (name, *demo.show_sample(name, model_name=model_name, **_sample_options(pctx, request)))


def run_demo_model_change(pctx: PublicContext, name: str | None, model_name: str | None, request: gr.Request) -> tuple:
    """Another model: the selected sample with it, else an empty result area (never the old answer)."""
    return demo.model_changed(name, model_name, **_sample_options(pctx, request))


def run_demo_upload(pctx: PublicContext, file: str | None, model_name: str | None, request: gr.Request) -> tuple:
    """An upload (always counted; its copy deleted once read)."""
    return demo.show_upload(
        file, upload_root=pctx.upload_root, max_bytes=pctx.max_bytes, model_name=model_name,
        allowed_models=pctx.models, max_pixels=pctx.max_pixels, limiter=pctx.limiter, address=pctx.address(request),
    )  # fmt: skip
