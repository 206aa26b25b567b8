"""Chest X-ray decision support web app (Gradio Blocks): builds the interface and binds events to `xray.web`.

Run `python app.py` (or `make run`). Doctors sign in with accounts from `python -m xray users add NAME`;
every handler takes the doctor from the server-side session (`gr.Request.username`), never from a form field.
The logic lives in `xray.web` (one module per tab); this file only lays out components, binds events and turns
exceptions into messages. `build_demo` assembles the doctors' tabs; each `_..._tab` function builds one tab's
components and events; the handlers below take the `AppContext` first and the components' values after it.

Two Gradio apps share one server (`create_app`): with the public demo on (`XRAY_PUBLIC_DEMO`, default on a
Hugging Face Space) `build_public` (demo and Models page, no sign-in, no database) is mounted at `/` and the
doctors' app at `/doctor/`; with it off the doctors' app alone is served at `/`, as before. The doctors' app is
always mounted with the keyword arguments of `doctor_app_options` (sign-in, routes, middleware, limits).
"""

from __future__ import annotations

import asyncio
import functools
import html
import inspect
import logging
import os
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

import xray
from xray.config import Settings, get_settings, on_space
from xray.errors import XrayError
from xray.imaging.io import IMAGE_EXTENSIONS
from xray.records import auth
from xray.records.db import Doctor
from xray.records.storage import ImageStore
from xray.web import (
    batch,
    compare,
    demo,
    diagnose,
    forms,
    history,
    models_page,
    operating,
    registry,
    review,
    startup,
    views,
)
from xray.web.registry import ModelInfo
from xray.web.views import HeatmapView

logger = logging.getLogger("xray.app")

TITLE = "Chest X-ray decision support"
STORAGE_WARNING = (
    "Records and images on this Space are NOT kept: it has no persistent storage and no external database, so "
    "everything saved here is lost when the Space restarts. Ask the administrator to attach persistent storage "
    "(/data), or set XRAY_DATABASE_URL and XRAY_STORAGE_URL."
)
CSS = """
.xray-notice {border-left: 4px solid #d97706; background: #fffbeb; padding: 8px 12px; border-radius: 4px;}
.xray-notice p {margin: 0; color: #78350f;}
.xray-gate {border: 2px solid #b91c1c; background: #fef2f2; padding: 8px 12px; border-radius: 4px;}
.xray-thumbs {display: flex; gap: 8px; flex-wrap: wrap;}
.xray-thumbs figure {margin: 0; width: 110px; text-align: center; font-size: 0.75em; line-height: 1.2;}
.xray-thumbs img {width: 100%; height: 90px; object-fit: cover; border-radius: 4px;}
.xray-demo-images {display: flex; gap: 12px; flex-wrap: wrap;}
.xray-demo-images figure {margin: 0; flex: 1 1 300px; text-align: center; font-size: 0.85em;}
.xray-demo-images img {max-width: 100%; border-radius: 4px;}
"""
NOTICE_HTML = f'<div class="xray-notice" role="note"><p><strong>{views.NOTICE}</strong></p></div>'
#: Where the doctors' app is served while the public demo has `/`.
DOCTOR_PATH = "/doctor"
#: How Gradio encodes the display copies it sends to the browser. Its default, WebP, cost 130 ms of CPU per
#: 1024-px image (two per Diagnose result) against 5 ms for JPEG, at 43-46 dB PSNR on X-ray display copies; the
#: stored upload is never re-encoded (README, Performance).
DISPLAY_FORMAT = "jpeg"
#: Where the public demo's uploads go, inside Gradio's upload folder (which its checks require) but apart from
#: the doctors' uploads, so that deleting a visitor's file can never touch a doctor's.
PUBLIC_UPLOAD_FOLDER = "xray-public-demo"


def _on_space() -> bool:
    # The test Gradio itself uses (gradio.utils.get_space) to tell a Hugging Face Space.
    return on_space()


def _oauth_enabled() -> bool:
    # A Space with `hf_oauth: true` in its README metadata gets OAUTH_CLIENT_ID and friends.
    return _on_space() and bool(os.environ.get("OAUTH_CLIENT_ID"))


def doctor_path(settings: Settings) -> str:
    """The doctors' app's URL prefix: `/doctor` while the public demo is served at `/`, else `` (the root)."""
    return DOCTOR_PATH if settings.public_demo_enabled else ""


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show `XrayError` messages as they are and anything else as a short message with a log reference."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except XrayError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception:
            reference = uuid.uuid4().hex[:8]
            logger.exception("unexpected error in %s (reference %s)", fn.__name__, reference)
            raise gr.Error(
                f"Something went wrong on the server (reference {reference}); it has been logged. "
                "Try again, or tell the administrator the reference.",
                print_exception=False,
            ) from None

    return wrapper


# ---------------------------------------------------------------------------------------------- context


@dataclass
class ModelsContext:
    """What the doctors' and the public app share: settings and the registered models."""

    settings: Settings
    models: list[str]
    infos: dict[str, ModelInfo]

    @property
    def max_pixels(self) -> int:
        """Decoded image size limit in pixels."""
        return self.settings.max_image_pixels

    @property
    def default_model(self) -> str | None:
        """The model preselected in every selector (the first registered one)."""
        return self.models[0] if self.models else None

    @property
    def model_choices(self) -> list[tuple[str, str]]:
        """(shown, name) pairs for a model dropdown, with each model's headline test metrics."""
        return [(self.infos[n].choice_label, n) for n in self.models]

    @property
    def all_labels(self) -> list[str]:
        """Every class any registered model has, sorted."""
        return sorted({label for info in self.infos.values() for label in info.label_names})

    @property
    def upload_types(self) -> list[str]:
        """File extensions the upload fields accept."""
        return sorted(IMAGE_EXTENSIONS)

    def handler(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(ctx, *inputs)` as an event handler on the inputs alone, with errors shown as messages.

        The handler keeps `fn`'s name and its signature without the first parameter, so Gradio still finds the
        `gr.Request` and `gr.Progress` parameters.
        """
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return fn(self, *args, **kwargs)

        bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
        return _friendly(bound)


@dataclass
class AppContext(ModelsContext):
    """The doctors' app: the shared context plus the database and the image store."""

    engine: Engine
    store: ImageStore

    @property
    def max_bytes(self) -> int:
        """Upload size limit in bytes."""
        return int(self.settings.max_upload_mb * 2**20)

    def doctor(self, session: Session, request: gr.Request | None) -> Doctor:
        """The signed-in doctor of this request (`NotSignedInError` without an enabled account)."""
        return startup.require_doctor(session, getattr(request, "username", None))


@dataclass
class PublicContext(ModelsContext):
    """The public demo: the shared context, the samples and the rate limit. No database, no image store."""

    samples: list[demo.Sample]
    limiter: demo.RateLimiter
    upload_root: str

    @property
    def max_bytes(self) -> int:
        """The demo's upload size limit in bytes (XRAY_DEMO_MAX_UPLOAD_MB)."""
        return int(self.settings.demo_max_upload_mb * 2**20)

    def address(self, request: gr.Request | None) -> str:
        """The caller's address for the rate limit (X-Forwarded-For only behind a Space's proxy)."""
        client = getattr(request, "client", None)
        headers = getattr(request, "headers", None) or {}
        return demo.client_address(
            getattr(client, "host", None), headers.get("x-forwarded-for"), trust_forwarded=_on_space()
        )


def _models(settings: Settings, model_names: list[str] | None) -> tuple[list[str], dict[str, ModelInfo]]:
    models = list(model_names) if model_names is not None else registry.registered_models(settings)
    if not models:
        logger.warning(
            "No model is installed in %s and XRAY_EXTRA_MODELS is empty; the app will say so.", settings.models_dir
        )
    return models, {name: registry.describe_model(name) for name in models}


def _context(settings: Settings | None, engine: Engine | None, model_names: list[str] | None) -> AppContext:
    settings = settings or get_settings()
    engine = engine or startup.open_database(settings)
    models, infos = _models(settings, model_names)
    return AppContext(
        settings=settings, models=models, infos=infos, engine=engine, store=startup.image_store(settings)
    )


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
    ctx = _context(settings, engine, model_names)
    with gr.Blocks(title=TITLE) as demo:
        _header(ctx, demo)
        with gr.Tabs():
            model = _diagnose_tab(ctx)
            _history_tab(ctx, demo)
            _batch_tab(ctx)
            _compare_tab(ctx)
            _about_tab(ctx, demo, model)
    return demo


def build_public(settings: Settings | None = None, *, model_names: list[str] | None = None) -> gr.Blocks:
    """Build the public app: the demo (samples or an upload, nothing stored) and the Models page; no sign-in.

    It has no database engine and no image store, so nothing it does can create a record. Its images go back
    inline, so `public_app_options` can refuse every file download, and its uploads are deleted once read.

    Args:
        settings: application settings (default: from the environment).
        model_names: the models offered (default: bundled models plus XRAY_EXTRA_MODELS).
    """
    settings = settings or get_settings()
    models, infos = _models(settings, model_names)
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
                _public_demo_tab(pctx)
            with gr.Tab("Models", id="models"):
                _models_tab(models)
    return public


def public_upload_root() -> str:
    """The public demo's upload folder: a folder of its own inside Gradio's upload folder."""
    from gradio.utils import get_upload_folder

    return str(Path(get_upload_folder()) / PUBLIC_UPLOAD_FOLDER)


def _public_demo_tab(pctx: PublicContext) -> None:
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


def _models_tab(names: list[str]) -> None:
    """Every registered model side by side from its metrics.json: table, chart, per-source figures, cards."""
    entries = models_page.read_entries(names)
    gr.Markdown(
        "Every model this server offers, side by side. Every figure is read from the model folder's "
        "`metrics.json` (written by the evaluation) and its `README.md` card; 95% confidence intervals in "
        "parentheses; calibration as expected calibration error (ECE, test set) before and after temperature "
        "scaling."
    )
    gr.Dataframe(
        value={"headers": models_page.OVERVIEW_COLUMNS, "data": models_page.overview_rows(entries)},
        interactive=False, wrap=True, elem_id="xray-models-overview", label="Models",
    )  # fmt: skip
    gr.Plot(value=models_page.auc_latency_figure(entries), format="png", label="Test AUC against CPU latency")
    gr.Dataframe(
        value={"headers": models_page.METRIC_COLUMNS, "data": models_page.metric_rows(entries)},
        interactive=False, wrap=True, elem_id="xray-models-metrics", label="Test metrics, pooled and per data source",
    )  # fmt: skip
    notes = models_page.missing_notes(entries)
    if notes:
        gr.Markdown("Not recorded:\n" + "\n".join(f"- {note}" for note in notes))
    for entry in entries:
        with gr.Accordion(f"Model card: {entry.name}", open=False):
            gr.Markdown(entry.card if not entry.error else f"**{entry.name}** cannot be read: {entry.error}")


# ---------------------------------------------------------------------------------------------- sign-in


def _header(ctx: AppContext, demo: gr.Blocks) -> None:
    """Title, who is signed in, the log-out button, and the decision-support notice."""
    with gr.Row():
        gr.Markdown(f"# {TITLE}", scale=4)
        with gr.Column(scale=2, min_width=220):
            greeting = gr.Markdown()
            gr.Button("Log out", link=f"{doctor_path(ctx.settings)}/logout", size="sm", variant="secondary")
        if _oauth_enabled():
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


# ---------------------------------------------------------------------------------------------- Diagnose


def _diagnose_tab(ctx: AppContext) -> gr.Dropdown:
    """Upload, patient fields and model on the left; result, heatmap and operating point on the right.

    Returns:
        the model selector (the About tab follows it).
    """
    with gr.Tab("Diagnose", id="diagnose"):
        if not ctx.models:
            gr.Markdown(
                "⚠️ **No model is installed.** Train one with `train.py` (see the README), copy a model "
                "folder into `models/`, or set `XRAY_EXTRA_MODELS=local-dir:PATH`; then restart the app."
            )
        with gr.Row():
            with gr.Column(scale=1):
                upload, patient, exam_date, model, method, run = _diagnose_form(ctx)
            with gr.Column(scale=2):
                probabilities = gr.Label(
                    label="Probabilities (calibrated)", num_top_classes=5, elem_id="xray-probabilities"
                )
                gate_box = gr.Markdown(visible=False, elem_classes="xray-gate", elem_id="xray-gate")
                reveal_btn = gr.Button("Show the prediction anyway", visible=False, variant="secondary")
                summary = gr.Markdown()
                with gr.Row():
                    original = gr.Image(label="Original", interactive=False, format=DISPLAY_FORMAT)
                    overlay = gr.Image(
                        label="Grad-CAM heatmap", interactive=False, elem_id="xray-heatmap", format=DISPLAY_FORMAT
                    )
                heat_info = gr.Markdown(elem_id="xray-heat-in-lungs")
                with gr.Row():
                    opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Heatmap opacity")
                    target = gr.Radio(choices=[], label="Heatmap for class", interactive=False)
                op_group, op_threshold, op_prevalence, op_text = _operating_panel(ctx)
                model_info = gr.Markdown()
                gr.HTML(NOTICE_HTML)
        record_id_out = gr.Number(visible=False, precision=0)
        view_state = gr.State(None)
        shown_state = gr.State(None)  # the record whose prediction is on screen (None while hidden)

    show_operating = ctx.handler(operating_text)
    op_inputs = [model, op_threshold, op_prevalence, shown_state]
    run.click(
        ctx.handler(run_diagnose),
        [upload, patient, exam_date, model, method, opacity],
        [
            probabilities, summary, original, overlay, target, model_info, heat_info, gate_box, reveal_btn,
            view_state, shown_state, record_id_out,
        ],
        api_name="diagnose",
        concurrency_limit=ctx.settings.inference_concurrency,
        concurrency_id="inference",
    ).then(show_operating, op_inputs, op_text, api_name="operating_after_diagnose", api_visibility="private")
    reveal_btn.click(
        ctx.handler(reveal),
        [record_id_out, opacity],
        [probabilities, summary, overlay, target, heat_info, reveal_btn, view_state, shown_state],
        api_name="show_prediction",
    ).then(show_operating, op_inputs, op_text, api_name="operating_after_reveal", api_visibility="private")
    op_threshold.release(show_operating, op_inputs, op_text, api_name="operating_point")
    op_prevalence.change(show_operating, op_inputs, op_text, api_name="operating_prevalence", api_visibility="private")
    model.change(
        ctx.handler(operating_start), model, [op_group, op_threshold, op_prevalence], api_visibility="private"
    ).then(show_operating, op_inputs, op_text, api_name="operating_on_model", api_visibility="private")
    opacity.change(_friendly(change_opacity), [view_state, opacity], overlay, api_visibility="private")
    target.input(
        ctx.handler(change_target),
        [view_state, target, method, opacity],
        [overlay, view_state],
        api_visibility="private",
        concurrency_id="inference",
    )
    return model


def _diagnose_form(ctx: AppContext) -> tuple[gr.File, gr.Textbox, gr.DateTime, gr.Dropdown, gr.Radio, gr.Button]:
    """The upload with its preview, patient fields, model, CAM method, the run button and the sample X-rays."""
    upload = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", file_types=ctx.upload_types, type="filepath")
    preview_image = gr.Image(
        label="Uploaded image", interactive=False, height=260, elem_id="xray-preview", format=DISPLAY_FORMAT
    )
    patient = gr.Textbox(label="Patient name or ID", max_length=forms.MAX_PATIENT_LENGTH)
    exam_date = gr.DateTime(
        value=_today,
        include_time=False,
        type="string",
        label="Exam date",
        info="YYYY-MM-DD; filled from the DICOM file when it says",
    )
    model = gr.Dropdown(choices=ctx.model_choices, value=ctx.default_model, label="Model (test metrics)")
    with gr.Accordion("Heatmap method", open=False):
        method = gr.Radio(list(diagnose.CAM_METHODS), value="gradcam", label="CAM method")
    run = gr.Button("Analyse and save", variant="primary")
    examples = registry.example_files()
    if examples:
        gr.Examples(
            examples=[[str(p), f"Sample patient {i}"] for i, p in enumerate(examples, 1)],
            inputs=[upload, patient],
            example_labels=[_example_label(i, p) for i, p in enumerate(examples, 1)],
            label="Sample X-rays (Kermany et al. 2018, CC BY 4.0): click one, then Analyse",
        )
    upload.change(ctx.handler(preview), upload, [preview_image, patient, exam_date], api_visibility="private")
    return upload, patient, exam_date, model, method, run


def _operating_panel(ctx: AppContext) -> tuple[gr.Accordion, gr.Slider, gr.Number, gr.Markdown]:
    """The operating-point accordion (threshold, prevalence, expected metrics), set for the default model."""
    start = operating.operating_defaults(ctx.infos.get(ctx.default_model) if ctx.default_model else None)
    with gr.Accordion("Operating point", open=False, visible=start.available) as group:
        with gr.Row():
            threshold = gr.Slider(
                0.0, 1.0, value=start.threshold, step=0.01, label="Threshold",
                info="Positive when its probability is at least this (model default shown)",
            )  # fmt: skip
            prevalence = gr.Number(
                value=start.prevalence, minimum=0.0, maximum=1.0, step=0.01,
                label="Prevalence (0-1)", info="How common the condition is among your patients",
            )  # fmt: skip
        text = gr.Markdown()
    return group, threshold, prevalence, text


def preview(ctx: AppContext, file: str | None) -> tuple[Any, Any, Any]:
    """The uploaded image at display size, and the patient fields from its DICOM tags."""
    if not file:
        return None, gr.update(), gr.update()
    data = forms.read_upload(file, max_bytes=ctx.max_bytes)
    image = forms.load_image(data, filename=Path(file).name, max_pixels=ctx.max_pixels)
    prefill = forms.prefill_from_metadata(image.metadata)
    patient = gr.update(value=prefill.patient) if prefill.patient else gr.update()
    exam = gr.update(value=prefill.exam_date.isoformat()) if prefill.exam_date else gr.update()
    return views.display_pixels(image), patient, exam


def run_diagnose(
    ctx: AppContext,
    file: str | None,
    patient: str | None,
    exam_date: str | None,
    model_name: str | None,
    method: str | None,
    alpha: float,
    request: gr.Request,
) -> tuple[Any, ...]:
    """Analyse and save the upload; an out-of-scope image gets the gate's reasons, its prediction hidden."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        result = diagnose.diagnose(
            session,
            ctx.store,
            doctor=doctor,
            source=file,
            filename=Path(file).name if file else None,
            patient_name=patient,
            exam_date=exam_date,
            model_name=model_name,
            allowed_models=ctx.models,
            method=method,
            max_upload_bytes=ctx.max_bytes,
            max_pixels=ctx.max_pixels,
        )
        record = result.record
        summary = views.result_summary(record)
        if result.warnings:
            summary += "\n\n" + "\n".join(f"⚠️ {w}" for w in result.warnings)
        patient_text = views.md_escape(record.patient_name)
        info = (
            f"{views.model_line(record)} · saved as record **{record.id}** for patient "
            f"{patient_text} ({record.exam_date.isoformat()}) · {result.latency_ms:.0f} ms"
        )
        gate_text = views.gate_markdown(record.gate_reasons, result.gate_note)
        if not result.in_scope:
            # Out of scope: the prediction (probabilities, verdict, heatmap) stays hidden until asked for.
            gr.Warning("This image looks out of scope for the model; the prediction is hidden. See why below.")
            hidden_target = gr.update(choices=[], value=None, interactive=False)
            return (
                None, "", result.view.pixels, None, hidden_target, info, "",
                gr.update(value=gate_text, visible=True), gr.update(visible=True), None, None, record.id,
            )  # fmt: skip
        return (
            result.probabilities,
            summary,
            result.view.pixels,
            result.view.overlay(alpha),
            gr.update(choices=list(record.label_names), value=result.view.target_label, interactive=True),
            info,
            views.heat_markdown(record.heat_in_lungs, record.heat_in_chest),
            gr.update(value=gate_text, visible=bool(gate_text)),
            gr.update(visible=False),
            result.view,
            record.id,
            record.id,
        )


def reveal(ctx: AppContext, record_id: Any, alpha: float, request: gr.Request) -> tuple[Any, ...]:
    """The hidden prediction of an out-of-scope record, under the input warning."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        detail = history.open_record(session, ctx.store, doctor=doctor, record_id=record_id, max_pixels=ctx.max_pixels)
        record = detail.record
        summary = views.result_summary(record)
        if record.gate_reasons:
            summary = "⚠️ **Shown on request despite the input warning above: unreliable.**\n\n" + summary
        info = ctx.infos.get(record.model_name)
        summary += "".join(f"\n\n⚠️ {w}" for w in registry.caveat_warnings(info.caveat if info else None))
        return (
            record.probabilities,
            summary,
            detail.view.overlay(alpha),
            gr.update(choices=list(record.label_names), value=detail.view.target_label, interactive=True),
            views.heat_markdown(record.heat_in_lungs, record.heat_in_chest),
            gr.update(visible=False),
            detail.view,
            record.id,
        )


def operating_text(
    ctx: AppContext, model_name: str | None, threshold: Any, prevalence: Any, shown: Any, request: gr.Request
) -> str:
    """Expected metrics at the threshold, and the verdict of the record on screen under it."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        return operating.operating_for_record(
            session, doctor=doctor, info=ctx.infos.get(model_name or ""), threshold=threshold, prevalence=prevalence,
            record_id=shown,
        )  # fmt: skip


def operating_start(ctx: AppContext, model_name: str | None) -> tuple[Any, Any, Any]:
    """Show the operating point for a newly chosen model, starting at its own threshold and prevalence."""
    start = operating.operating_defaults(ctx.infos.get(model_name or ""))
    return gr.update(visible=start.available), gr.update(value=start.threshold), gr.update(value=start.prevalence)


def change_opacity(view: HeatmapView | None, alpha: float) -> Any:
    """The overlay redrawn at another opacity (no model call)."""
    return view.overlay(alpha) if view is not None else None


def change_target(
    ctx: AppContext,
    view: HeatmapView | None,
    target: str | None,
    method: str | None,
    alpha: float,
    request: gr.Request,
) -> tuple[Any, Any]:
    """A new heatmap for another class of the record on screen."""
    if view is None or view.record_id is None or not target or target == view.target_label:
        return gr.update(), view
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        new_view = diagnose.reexplain(
            session,
            ctx.store,
            doctor=doctor,
            record_id=view.record_id,
            target_label=target,
            method=method or view.method,
            allowed_models=ctx.models,
            max_pixels=ctx.max_pixels,
        )
    return new_view.overlay(alpha), new_view


# ---------------------------------------------------------------------------------------------- History


@dataclass
class _HistoryList:
    """The History list's components that the record panel refreshes after an edit, a delete or a final read."""

    agreement: gr.Markdown
    table: gr.Dataframe
    inputs: list[Any]  # the filters and the page number
    outputs: list[Any]  # table, caption, page


def _history_tab(ctx: AppContext, demo: gr.Blocks) -> None:
    """Agreement with the model, filters, paging, the records table and CSV export; then one record's panel."""
    with gr.Tab("History", id="history") as tab:
        agreement_text = gr.Markdown(elem_id="xray-agreement")
        with gr.Row():
            f_patient = gr.Textbox(label="Patient contains", scale=2)
            f_from = gr.DateTime(include_time=False, type="string", label="Exam date from", value=None)
            f_to = gr.DateTime(include_time=False, type="string", label="Exam date to", value=None)
            f_label = gr.Dropdown(choices=["Any", *ctx.all_labels], value="Any", label="Model output")
        with gr.Row(equal_height=True):
            search = gr.Button("Search", variant="primary", scale=2)
            prev_page = gr.Button("◀ Newer", scale=1)
            page = gr.Number(value=1, precision=0, label="Page", minimum=1, scale=1, min_width=80)
            next_page = gr.Button("Older ▶", scale=1)
            export = gr.Button("Export CSV", scale=1)
        caption = gr.Markdown()
        table = gr.Dataframe(headers=history.HISTORY_COLUMNS, interactive=False, wrap=True, elem_id="xray-history")
        csv_file = gr.File(label="CSV export (the filtered list)", interactive=False, visible=False)
        listing = _HistoryList(agreement_text, table, [f_patient, f_from, f_to, f_label, page], [table, caption, page])
        _record_panel(ctx, listing)

    filters, show_agreement = [f_patient, f_from, f_to, f_label], ctx.handler(agreement)
    search.click(ctx.handler(first_page), listing.inputs, listing.outputs, api_name="history")
    prev_page.click(
        ctx.handler(newer_page), listing.inputs, listing.outputs, api_name="newer", api_visibility="private"
    )
    next_page.click(
        ctx.handler(older_page), listing.inputs, listing.outputs, api_name="older", api_visibility="private"
    )
    export.click(ctx.handler(export_csv), filters, csv_file, api_name="export_csv").success(
        lambda: gr.update(visible=True), None, csv_file, api_name="show_export", api_visibility="private"
    )
    demo.load(show_agreement, None, agreement_text, api_name="agreement")
    tab.select(show_agreement, None, agreement_text, api_name="agreement_on_tab", api_visibility="private")
    # The History tab shows fresh records each time it is opened.
    tab.select(
        ctx.handler(list_history), listing.inputs, listing.outputs, api_name="history_on_tab", api_visibility="private"
    )
    demo.load(
        ctx.handler(first_page), listing.inputs, listing.outputs, api_name="history_on_load", api_visibility="private"
    )


def _record_panel(ctx: AppContext, listing: _HistoryList) -> None:
    """One record: details, image and saved heatmap; patient fields, delete, final read and PDF report."""
    with gr.Row(equal_height=True):
        record_id = gr.Number(value=None, label="Record ID (click a row)", precision=0, minimum=1)
        open_btn = gr.Button("Open record")
    with gr.Row():
        with gr.Column(scale=1):
            details = gr.Markdown()
            patient = gr.Textbox(label="Patient name or ID", max_length=forms.MAX_PATIENT_LENGTH)
            exam_date = gr.DateTime(include_time=False, type="string", label="Exam date", value=None)
            save_btn = gr.Button("Save patient fields")
            delete_btn = gr.Button("Delete record…", variant="stop")
            with gr.Group(visible=False) as confirm_box:
                confirm_text = gr.Markdown()
                with gr.Row():
                    confirm_btn = gr.Button("Yes, delete", variant="stop")
                    cancel_btn = gr.Button("Cancel")
            with gr.Group():
                choices = review.final_read_choices(None, ctx.all_labels)
                final_choice = gr.Radio(choices=choices, label="Your final read")
                final_note = gr.Textbox(label="Note (optional)", max_lines=4, max_length=2000)
                final_btn = gr.Button("Save final read")
            report_btn = gr.Button("Download PDF report")
            report_file = gr.File(label="PDF report", interactive=False, visible=False)
            message = gr.Markdown()
        with gr.Column(scale=2):
            with gr.Row():
                original = gr.Image(label="Image", interactive=False, format=DISPLAY_FORMAT)
                overlay = gr.Image(
                    label="Saved heatmap", interactive=False, elem_id="xray-saved-heatmap", format=DISPLAY_FORMAT
                )
            opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Heatmap opacity")
    view = gr.State(None)

    show_page, show_record = ctx.handler(list_history), ctx.handler(open_record)
    outputs = [details, original, overlay, patient, exam_date, final_choice, final_note, view, confirm_box]
    listing.table.select(select_row, None, record_id, api_visibility="private").then(
        show_record, [record_id, opacity], outputs, api_name="open_record_from_table", api_visibility="private"
    ).then(lambda: gr.update(visible=False), None, report_file, api_name="hide_report", api_visibility="private")
    open_btn.click(show_record, [record_id, opacity], outputs, api_name="open_record").then(
        lambda: gr.update(visible=False), None, report_file, api_name="hide_report_2", api_visibility="private"
    )
    final_btn.click(
        ctx.handler(save_final_read), [record_id, final_choice, final_note], [message, details], api_name="final_read"
    ).then(ctx.handler(agreement), None, listing.agreement, api_name="agreement_after_read", api_visibility="private")
    report_btn.click(ctx.handler(report), record_id, report_file, api_name="report").success(
        lambda: gr.update(visible=True), None, report_file, api_name="show_report", api_visibility="private"
    )
    opacity.change(
        _friendly(change_opacity), [view, opacity], overlay, api_name="history_opacity", api_visibility="private"
    )
    save_btn.click(ctx.handler(update_record), [record_id, patient, exam_date], message, api_name="update_record").then(
        show_page, listing.inputs, listing.outputs, api_name="history_after_edit", api_visibility="private"
    )
    delete_btn.click(_friendly(ask_delete), record_id, [confirm_box, confirm_text], api_visibility="private")
    cancel_btn.click(
        lambda: gr.update(visible=False), None, confirm_box, api_name="cancel_delete", api_visibility="private"
    )
    confirm_btn.click(
        ctx.handler(delete_record),
        record_id,
        [message, confirm_box, original, overlay, details],
        api_name="delete_record",
    ).then(show_page, listing.inputs, listing.outputs, api_name="history_after_delete", api_visibility="private")


def list_history(
    ctx: AppContext, patient: str | None, date_from: str | None, date_to: str | None, label: str | None, page: Any,
    request: gr.Request,
) -> tuple[Any, str, int]:  # fmt: skip
    """One page of the doctor's records matching the filters."""
    filters = forms.parse_filters(patient, date_from, date_to, label)
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        result = history.history_page(session, doctor=doctor, filters=filters, page=page)
        rows = history.history_rows(result.records)
    return {"headers": history.HISTORY_COLUMNS, "data": rows}, result.caption, result.page


def first_page(
    ctx: AppContext, patient: Any, date_from: Any, date_to: Any, label: Any, page: Any, request: gr.Request
) -> Any:
    """The first page (a new search resets the page)."""
    return list_history(ctx, patient, date_from, date_to, label, 1, request)


def newer_page(
    ctx: AppContext, patient: Any, date_from: Any, date_to: Any, label: Any, page: Any, request: gr.Request
) -> Any:
    """The page before this one."""
    return list_history(ctx, patient, date_from, date_to, label, int(page or 1) - 1, request)


def older_page(
    ctx: AppContext, patient: Any, date_from: Any, date_to: Any, label: Any, page: Any, request: gr.Request
) -> Any:
    """The page after this one."""
    return list_history(ctx, patient, date_from, date_to, label, int(page or 1) + 1, request)


def export_csv(
    ctx: AppContext, patient: str | None, date_from: str | None, date_to: str | None, label: str | None,
    request: gr.Request,
) -> str:  # fmt: skip
    """A CSV file of every record matching the filters (all pages)."""
    filters = forms.parse_filters(patient, date_from, date_to, label)
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        return str(history.export_csv(session, doctor=doctor, filters=filters))


def select_row(evt: gr.SelectData) -> Any:
    """The record id of the clicked table row."""
    row = evt.row_value or []
    return row[0] if row else gr.update()


def open_record(ctx: AppContext, record_id: Any, alpha: float, request: gr.Request) -> tuple[Any, ...]:
    """The record's details, image, saved heatmap, editable fields and final read."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        detail = history.open_record(session, ctx.store, doctor=doctor, record_id=record_id, max_pixels=ctx.max_pixels)
        record = detail.record
        return (
            history.record_markdown(record),
            detail.view.pixels,
            detail.view.overlay(alpha),
            record.patient_name,
            record.exam_date.isoformat(),
            gr.update(choices=review.final_read_choices(record), value=review.final_read_value(record)),
            record.final_note or "",
            detail.view,
            gr.update(visible=False),
        )


def update_record(
    ctx: AppContext, record_id: Any, patient: str | None, exam_date: str | None, request: gr.Request
) -> str:
    """Save corrected patient fields."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        record = history.update_patient(
            session, doctor=doctor, record_id=record_id, patient_name=patient, exam_date=exam_date
        )
        patient_text = views.md_escape(record.patient_name)
        return f"Saved: record {record.id} is now {patient_text}, exam date {record.exam_date.isoformat()}."


def ask_delete(record_id: Any) -> Any:
    """Show the delete confirmation for a valid record id."""
    rid = forms.parse_record_id(record_id)
    return gr.update(visible=True), f"Delete record {rid} and its image for good? This cannot be undone."


def delete_record(ctx: AppContext, record_id: Any, request: gr.Request) -> tuple[str, Any, Any, Any, Any]:
    """Delete the record (confirmed) and clear the panel."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        record = history.delete_record(session, ctx.store, doctor=doctor, record_id=record_id)
    message = f"Deleted record {record.id} ({views.md_escape(record.patient_name)})."
    return message, gr.update(visible=False), None, None, None


def save_final_read(
    ctx: AppContext, record_id: Any, choice: str | None, note: str | None, request: gr.Request
) -> tuple[str, str]:
    """Store the doctor's final read; the record's details show it."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        record = review.save_final_read(session, doctor=doctor, record_id=record_id, choice=choice, note=note)
        message = (
            f"Saved your final read of record {record.id}: **{record.final_read}**."
            if record.final_read
            else f"Cleared your final read of record {record.id}."
        )
        return message, history.record_markdown(record)


def agreement(ctx: AppContext, request: gr.Request) -> str:
    """The doctor's agreement with the model and the disagreements."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        return review.agreement_markdown(review.agreement(session, doctor=doctor))


def report(ctx: AppContext, record_id: Any, request: gr.Request) -> str:
    """The record's one-page PDF report."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        return str(
            review.record_report(session, ctx.store, doctor=doctor, record_id=record_id, max_pixels=ctx.max_pixels)
        )


# ---------------------------------------------------------------------------------------------- Batch


def _batch_tab(ctx: AppContext) -> None:
    """Several files or a zip, one exam date and model; the results table, the model's caveat and a CSV."""
    with gr.Tab("Batch", id="batch"):
        gr.Markdown(
            "Analyse several X-rays at once: choose files or a zip of them. Each file is checked and saved "
            "like a single upload (patient = file name, or the DICOM patient fields); the exam date is the "
            "DICOM study date when the file has one, else the date below."
        )
        with gr.Row():
            files = gr.File(
                label="X-rays (PNG, JPEG, DICOM) or a .zip", file_count="multiple",
                file_types=[*ctx.upload_types, ".zip"], type="filepath", scale=2,
            )  # fmt: skip
            with gr.Column(scale=1):
                exam_date = gr.DateTime(value=_today, include_time=False, type="string", label="Exam date")
                model = gr.Dropdown(choices=ctx.model_choices, value=ctx.default_model, label="Model")
                run = gr.Button("Run batch and save", variant="primary")
        caveat = gr.Markdown(elem_id="xray-batch-caveat")
        table = gr.Dataframe(headers=batch.BATCH_COLUMNS, interactive=False, wrap=True, elem_id="xray-batch")
        csv_file = gr.File(label="Results (CSV)", interactive=False, visible=False)
    run.click(
        ctx.handler(run_batch),
        [files, exam_date, model],
        [table, caveat, csv_file],
        api_name="batch",
        concurrency_id="inference",
    ).success(lambda: gr.update(visible=True), None, csv_file, api_name="show_batch_csv", api_visibility="private")


def run_batch(
    ctx: AppContext,
    files: list[str] | None,
    exam: str | None,
    model_name: str | None,
    request: gr.Request,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress tracker
) -> tuple[Any, str, Any]:
    """Diagnose and save every file, with a progress bar; the table, the caveats and the CSV."""

    def tick(done: int, total: int, name: str) -> None:
        progress((done, total), desc=f"{name}" if done < total else "done", unit="files")

    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        rows = batch.diagnose_batch(
            session,
            ctx.store,
            doctor=doctor,
            files=files,
            exam_date=exam,
            model_name=model_name,
            allowed_models=ctx.models,
            max_upload_bytes=ctx.max_bytes,
            max_pixels=ctx.max_pixels,
            progress=tick,
        )
    table_value = {"headers": batch.BATCH_COLUMNS, "data": batch.batch_table(rows)}
    caveats = "\n\n".join(f"⚠️ {w}" for w in batch.batch_caveats(rows))
    return table_value, caveats, str(batch.batch_csv(rows))


# ---------------------------------------------------------------------------------------------- Compare, About


def _compare_tab(ctx: AppContext) -> None:
    """Every model on one image: the comparison table and a gallery of heatmaps."""
    with gr.Tab("Compare", id="compare"):
        gr.Markdown(
            "Run every installed model on one image: probabilities, heatmaps and latency side by side, "
            "with each model's test metrics. For research; comparisons are not saved to History."
        )
        with gr.Row():
            upload = gr.File(label="Chest X-ray", file_types=ctx.upload_types, type="filepath", scale=2)
            method = gr.Radio(list(diagnose.CAM_METHODS), value="gradcam", label="CAM method", scale=1)
        run = gr.Button("Compare models", variant="primary")
        table = gr.Dataframe(headers=compare.COMPARE_COLUMNS, interactive=False, wrap=True)
        gallery = gr.Gallery(label="Heatmaps (predicted class)", columns=3, height="auto", format=DISPLAY_FORMAT)
    run.click(
        ctx.handler(run_compare), [upload, method], [table, gallery], api_name="compare", concurrency_id="inference"
    )


def run_compare(ctx: AppContext, file: str | None, method: str | None, request: gr.Request) -> tuple[Any, Any]:
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
    return table, compare.comparison_gallery(results)


def _about_tab(ctx: AppContext, demo: gr.Blocks, diagnose_model: gr.Dropdown) -> None:
    """The model card of the model chosen on the Diagnose tab (or here), and the app version."""
    with gr.Tab("About", id="about"):
        model = gr.Dropdown(choices=ctx.model_choices, value=ctx.default_model, label="Model")
        card = gr.Markdown()
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
    """The registered model's headline and card."""
    with Session(ctx.engine) as session:
        ctx.doctor(session, request)
    if not name:
        return "No model is installed."
    if name not in ctx.models:
        raise gr.Error(f"Unknown model '{name}'.")
    return registry.model_card_markdown(ctx.infos[name])


def _example_label(number: int, path: Path) -> str:
    """`Sample 1 (dataset label: NORMAL)`: the Kermany file names start with NORMAL or personN_bacteria/virus."""
    label = "NORMAL" if path.name.upper().startswith("NORMAL") else "PNEUMONIA"
    return f"Sample {number} (dataset label: {label})"


def _today() -> str:
    """Today's date for the exam date field (evaluated when the page loads, not when the app starts)."""
    return date.today().isoformat()


# ---------------------------------------------------------------------------------------------- serving


def _logout(request: Request) -> Response:
    """Forget this browser's sign-in (password cookie and, on a Space, the Hugging Face session)."""
    app = request.app
    response = RedirectResponse(url="./", status_code=302)
    cookie_id = getattr(app, "cookie_id", "")
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        token = request.cookies.get(name)
        if token:
            getattr(app, "tokens", {}).pop(token, None)
        response.delete_cookie(key=name, path="/")
    if "session" in request.scope:
        request.session.pop("oauth_info", None)
    return response


def _hub_signin(engine: Engine) -> Callable[[Request], Response]:
    """After "Sign in with Hugging Face": map the hub user to a doctor account and start a normal session."""

    def handler(request: Request) -> Response:
        info = request.session.get("oauth_info") if "session" in request.scope else None
        hub_user = ((info or {}).get("userinfo") or {}).get("preferred_username")
        with Session(engine) as session:
            doctor = auth.doctor_for_hub_user(session, hub_user)
        if doctor is None:
            logger.warning("hub sign-in refused: %r has no enabled doctor account", hub_user)
            shown = html.escape(str(hub_user or "unknown"))
            return HTMLResponse(
                f"<p>The Hugging Face account <b>{shown}</b> is not linked to an enabled doctor "
                "account. Ask the administrator to run <code>python -m xray users add NAME --hf-username "
                "HUB_NAME</code>.</p><p><a href='./'>Back</a></p>",
                status_code=403,
            )
        app = request.app
        token = secrets.token_urlsafe(16)
        app.tokens[token] = doctor.username
        # ../ is the doctors' app from <app>/xray/hub-signin, at / or at /doctor/ alike
        response = RedirectResponse(url="../", status_code=302)
        # The same cookies Gradio's own /login sets, so gr.Request.username is the doctor's name.
        response.set_cookie(f"access-token-{app.cookie_id}", token, httponly=True, samesite="none", secure=True)
        response.set_cookie(f"access-token-unsecure-{app.cookie_id}", token, httponly=True)
        logger.info("hub sign-in: %s as %s", hub_user, doctor.username)
        return response

    return handler


def doctor_app_options(settings: Settings, engine: Engine) -> dict[str, Any]:
    """Keyword arguments for `gr.mount_gradio_app` of the doctors' app: the one place they are built.

    Database-backed sign-in (every route of the doctors' app refuses a caller without a session), the sign-in
    page's message, /logout, the Hugging Face sign-in route on a Space, the client-address middleware for sign-in
    throttling, the upload limit and the data folder kept out of file downloads.
    """
    check = auth.make_password_checker(engine)

    async def password_check(username: str, password: str) -> bool:
        # Argon2 is deliberately slow: keep it off the event loop (the context carries the client address).
        return await asyncio.to_thread(check, username, password)

    prefix = doctor_path(settings)
    message = (
        "Sign in with your doctor account. Accounts are created by the administrator "
        "(<code>python -m xray users add NAME</code>). Repeated failed attempts are paused for 15 minutes."
    )
    routes = [Route("/logout", _logout, methods=["GET"])]
    if _oauth_enabled():
        message += (
            f' Or <a href="{prefix}/login/huggingface?_target_url={prefix}/xray/hub-signin">sign in with Hugging '
            "Face</a>."
        )
        routes.append(Route("/xray/hub-signin", _hub_signin(engine), methods=["GET"]))
    if settings.public_demo_enabled:
        message += ' No account? The <a href="/">public demo</a> needs none.'
    return {
        "auth": password_check,
        "auth_message": message,
        "max_file_size": int(settings.max_upload_mb * 2**20),
        "server_name": settings.host,
        "server_port": settings.port,
        "blocked_paths": [str(settings.data_dir.resolve())],
        "app_kwargs": {
            # Routes given here are matched before Gradio's own, so /logout clears both kinds of session.
            "routes": routes,
            "middleware": [Middleware(auth.ClientAddressMiddleware, trust_forwarded=_on_space())],
            "lifespan": sessions_in_database(settings, engine),
        },
        "footer_links": ["api", "settings"],
        "css": CSS,
        "theme": gr.themes.Soft(),
        "show_error": False,
        "ssr_mode": False,
    }


def sessions_in_database(settings: Settings, engine: Engine) -> Callable[[Any], Any]:
    """A lifespan for the doctors' app that keeps its sign-ins in the database instead of process memory.

    Gradio keeps sign-in tokens in `app.tokens` (a dict) under a cookie named with a random id per process, so a
    restart signs every doctor out and a second replica knows nobody. At start-up, before the first request, the
    tokens become `xray.records.auth.DatabaseTokens` (hashed, expiring, revoked at log-out) and the cookie name one
    derived from the database URL: every process on one database accepts the same cookie.
    """
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        app.tokens = auth.DatabaseTokens(engine, hours=settings.session_hours)
        app.cookie_id = auth.session_cookie_id(settings.resolved_database_url)
        yield

    return lifespan


def _no_files(request: Request) -> Response:
    """The public app's file route: it sends every image inline, so it serves no file at all."""
    return PlainTextResponse("The public demo serves no files.", status_code=403)


def public_app_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `gr.mount_gradio_app` of the public app: its upload limits, no file downloads.

    Gradio's file route would serve anything in Gradio's shared temporary folders (where the doctors' app also
    keeps its heatmaps, reports and exports); the public app sends its images inline and refuses that route.
    """
    trust = _on_space()
    return {
        "max_file_size": int(settings.demo_max_upload_mb * 2**20),
        "server_name": settings.host,
        "server_port": settings.port,
        "blocked_paths": [str(settings.data_dir.resolve())],
        "app_kwargs": {
            "routes": [Route("/gradio_api/file={path:path}", _no_files, methods=["GET", "HEAD"])],
            "middleware": [
                Middleware(demo.UploadRateLimit, limiter=demo.RateLimiter(settings.demo_rate), trust_forwarded=trust)
            ],
        },
        "footer_links": ["api", "settings"],
        "css": CSS,
        "theme": gr.themes.Soft(),
        "show_error": False,
        "ssr_mode": False,
    }


def _mounted(server: FastAPI, path: str) -> Any:
    """The Gradio app `gr.mount_gradio_app` mounted at `path` ("" for the root)."""
    for route in server.router.routes:
        if isinstance(route, Mount) and route.path == path.rstrip("/"):
            return route.app
    raise LookupError(f"nothing is mounted at {path!r}")


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    model_names: list[str] | None = None,
    warm_up: bool = True,
) -> FastAPI:
    """The web server: the doctors' app alone at `/`, or with the public demo on, the public app there too.

    With the public demo on, the public app is at `/` and the doctors' app at `/doctor/`. Both are Gradio apps
    mounted with `gr.mount_gradio_app`, each with its own queue, upload folder and sign-in rule.

    Args:
        settings: application settings (default: from the environment).
        engine: database engine with tables created (default: `startup.open_database(settings)`).
        model_names: the models offered (default: bundled models plus XRAY_EXTRA_MODELS).
        warm_up: with the public demo on, run the default model once on a sample before serving.
    """
    settings = settings or get_settings()
    engine = engine or startup.open_database(settings)
    models = list(model_names) if model_names is not None else registry.registered_models(settings)
    doctors = build_demo(settings, engine=engine, model_names=models)
    doctors.queue(default_concurrency_limit=8)
    server = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    prefix = doctor_path(settings)
    if not prefix:
        return gr.mount_gradio_app(server, doctors, "/", **doctor_app_options(settings, engine))

    def to_doctors(request: Request) -> Response:
        return RedirectResponse(url=f"{prefix}/", status_code=307)

    server.add_route(prefix, to_doctors, methods=["GET", "HEAD"])
    gr.mount_gradio_app(server, doctors, prefix, **doctor_app_options(settings, engine))
    if _oauth_enabled():
        # A Space sends every Hugging Face sign-in back to /login/callback at its root (gradio.oauth): pass it to
        # the doctors' app, whose session it belongs to. Matched before the public app's mount below.
        server.add_route("/login/callback", _mounted(server, prefix), methods=["GET"])
    public = build_public(settings, model_names=models)
    public.queue(default_concurrency_limit=2)
    gr.mount_gradio_app(server, public, "/", **public_app_options(settings))
    _mounted(server, "").uploaded_file_dir = public_upload_root()
    if warm_up:
        demo.warm_up(models[0] if models else None, models, demo.samples(), settings.max_image_pixels)
    return server


def main() -> None:
    """Start the app on the settings from the environment (creates the data folder and tables)."""
    import uvicorn

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
    uvicorn.run(server, host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
