"""Chest X-ray decision support web app (Gradio Blocks): builds the interface and binds events to `xray`.

Run `python app.py` (or `make run`). Doctors sign in with accounts from `python -m xray users add NAME`;
every handler takes the doctor from the server-side session (`gr.Request.username`), never from a form field.
The logic lives in `xray.web.service`; this file only lays out components and turns exceptions into messages.
"""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import os
import secrets
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import gradio as gr
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

import xray
from xray.config import Settings, get_settings
from xray.errors import XrayError
from xray.records import auth
from xray.web import review, service

logger = logging.getLogger("xray.app")

TITLE = "Chest X-ray decision support"
CSS = """
.xray-notice {border-left: 4px solid #d97706; background: #fffbeb; padding: 8px 12px; border-radius: 4px;}
.xray-notice p {margin: 0; color: #78350f;}
.xray-gate {border: 2px solid #b91c1c; background: #fef2f2; padding: 8px 12px; border-radius: 4px;}
"""
NOTICE_HTML = f'<div class="xray-notice" role="note"><p><strong>{service.NOTICE}</strong></p></div>'


def _on_space() -> bool:
    # The test Gradio itself uses (gradio.utils.get_space) to tell a Hugging Face Space.
    return os.environ.get("SYSTEM") == "spaces" and bool(os.environ.get("SPACE_ID"))


def _oauth_enabled() -> bool:
    # A Space with `hf_oauth: true` in its README metadata gets OAUTH_CLIENT_ID and friends.
    return _on_space() and bool(os.environ.get("OAUTH_CLIENT_ID"))


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


def build_demo(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    model_names: list[str] | None = None,
) -> gr.Blocks:
    """Build the Blocks app.

    Args:
        settings: application settings (default: from the environment).
        engine: database engine with tables created (default: `service.open_database(settings)`).
        model_names: the models offered (default: bundled models plus XRAY_EXTRA_MODELS).
    """
    settings = settings or get_settings()
    engine = engine or service.open_database(settings)
    store = service.image_store(settings)
    models = list(model_names) if model_names is not None else service.registered_models(settings)
    infos = {name: service.describe_model(name) for name in models}
    if not models:
        logger.warning(
            "No model is installed in %s and XRAY_EXTRA_MODELS is empty; Diagnose will say so.", settings.models_dir
        )
    default_model = models[0] if models else None
    max_bytes = int(settings.max_upload_mb * 2**20)
    max_pixels = settings.max_image_pixels
    model_choices = [(infos[n].choice_label, n) for n in models]
    label_choices = ["Any"] + sorted({label for info in infos.values() for label in info.label_names})
    upload_types = sorted(service.IMAGE_EXTENSIONS)
    all_labels = sorted({label for info in infos.values() for label in info.label_names})
    op_start = review.operating_defaults(infos.get(default_model) if default_model else None)

    def doctor_of(session: Session, request: gr.Request | None) -> Any:
        return service.require_doctor(session, getattr(request, "username", None))

    # ------------------------------------------------------------------------------------------ handlers

    @_friendly
    def greet(request: gr.Request) -> str:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            return f"Signed in as **{service.md_escape(doctor.display_name)}** (`{doctor.username}`)"

    @_friendly
    def preview(file: str | None) -> tuple[Any, Any, Any]:
        if not file:
            return None, gr.update(), gr.update()
        data = service.read_upload(file, max_bytes=max_bytes)
        image = service.load_image(data, filename=Path(file).name, max_pixels=max_pixels)
        prefill = service.prefill_from_metadata(image.metadata)
        patient = gr.update(value=prefill.patient) if prefill.patient else gr.update()
        exam = gr.update(value=prefill.exam_date.isoformat()) if prefill.exam_date else gr.update()
        return service.shrink(image.pixels), patient, exam

    @_friendly
    def diagnose(
        file: str | None,
        patient: str | None,
        exam_date: str | None,
        model_name: str | None,
        method: str | None,
        alpha: float,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            result = service.diagnose(
                session,
                store,
                doctor=doctor,
                source=file,
                filename=Path(file).name if file else None,
                patient_name=patient,
                exam_date=exam_date,
                model_name=model_name,
                allowed_models=models,
                method=method,
                max_upload_bytes=max_bytes,
                max_pixels=max_pixels,
            )
            record = result.record
            summary = service.result_summary(record)
            if result.warnings:
                summary += "\n\n" + "\n".join(f"⚠️ {w}" for w in result.warnings)
            patient_text = service.md_escape(record.patient_name)
            info = (
                f"{service.model_line(record)} · saved as record **{record.id}** for patient "
                f"{patient_text} ({record.exam_date.isoformat()}) · {result.latency_ms:.0f} ms"
            )
            gate_text = service.gate_markdown(record.gate_reasons, result.gate_note)
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
                service.heat_markdown(record.heat_in_lungs, record.heat_in_chest),
                gr.update(value=gate_text, visible=bool(gate_text)),
                gr.update(visible=False),
                result.view,
                record.id,
                record.id,
            )

    @_friendly
    def reveal(record_id: Any, alpha: float, request: gr.Request) -> tuple[Any, ...]:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            detail = service.open_record(session, store, doctor=doctor, record_id=record_id, max_pixels=max_pixels)
            record = detail.record
            summary = service.result_summary(record)
            if record.gate_reasons:
                summary = "⚠️ **Shown on request despite the input warning above: unreliable.**\n\n" + summary
            info = infos.get(record.model_name)
            summary += "".join(f"\n\n⚠️ {w}" for w in service.caveat_warnings(info.caveat if info else None))
            return (
                record.probabilities,
                summary,
                detail.view.overlay(alpha),
                gr.update(choices=list(record.label_names), value=detail.view.target_label, interactive=True),
                service.heat_markdown(record.heat_in_lungs, record.heat_in_chest),
                gr.update(visible=False),
                detail.view,
                record.id,
            )

    @_friendly
    def operating(model_name: str | None, threshold: Any, prevalence: Any, shown: Any, request: gr.Request) -> str:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            return review.operating_for_record(
                session, doctor=doctor, info=infos.get(model_name or ""), threshold=threshold, prevalence=prevalence,
                record_id=shown,
            )  # fmt: skip

    def operating_start(model_name: str | None) -> tuple[Any, Any, Any]:
        start = review.operating_defaults(infos.get(model_name or ""))
        return gr.update(visible=start.available), gr.update(value=start.threshold), gr.update(value=start.prevalence)

    @_friendly
    def change_opacity(view: service.HeatmapView | None, alpha: float) -> Any:
        return view.overlay(alpha) if view is not None else None

    @_friendly
    def change_target(
        view: service.HeatmapView | None, target: str | None, method: str | None, alpha: float, request: gr.Request
    ) -> tuple[Any, Any]:
        if view is None or view.record_id is None or not target or target == view.target_label:
            return gr.update(), view
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            new_view = service.reexplain(
                session,
                store,
                doctor=doctor,
                record_id=view.record_id,
                target_label=target,
                method=method or view.method,
                allowed_models=models,
                max_pixels=max_pixels,
            )
        return new_view.overlay(alpha), new_view

    @_friendly
    def history(
        patient: str | None, date_from: str | None, date_to: str | None, label: str | None, page: Any,
        request: gr.Request,
    ) -> tuple[Any, str, int]:  # fmt: skip
        filters = service.parse_filters(patient, date_from, date_to, label)
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            result = service.history_page(session, doctor=doctor, filters=filters, page=page)
            rows = service.history_rows(result.records)
        return {"headers": service.HISTORY_COLUMNS, "data": rows}, result.caption, result.page

    def history_step(step: int) -> Callable[..., Any]:
        def turn(patient: Any, date_from: Any, date_to: Any, label: Any, page: Any, request: gr.Request) -> Any:
            return history(patient, date_from, date_to, label, int(page or 1) + step, request)

        return turn

    @_friendly
    def open_record(record_id: Any, alpha: float, request: gr.Request) -> tuple[Any, ...]:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            detail = service.open_record(session, store, doctor=doctor, record_id=record_id, max_pixels=max_pixels)
            record = detail.record
            if record.final_read is None:
                current = None
            else:
                current = review.CONFIRM if record.final_read == record.predicted_label else record.final_read
            return (
                service.record_markdown(record),
                detail.view.pixels,
                detail.view.overlay(alpha),
                record.patient_name,
                record.exam_date.isoformat(),
                gr.update(choices=review.final_read_choices(record), value=current),
                record.final_note or "",
                detail.view,
                gr.update(visible=False),
            )

    @_friendly
    def save_final_read(record_id: Any, choice: str | None, note: str | None, request: gr.Request) -> tuple[str, str]:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            record = review.save_final_read(session, doctor=doctor, record_id=record_id, choice=choice, note=note)
            message = (
                f"Saved your final read of record {record.id}: **{record.final_read}**."
                if record.final_read
                else f"Cleared your final read of record {record.id}."
            )
            return message, service.record_markdown(record)

    @_friendly
    def agreement(request: gr.Request) -> str:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            return review.agreement_markdown(review.agreement(session, doctor=doctor))

    @_friendly
    def report(record_id: Any, request: gr.Request) -> str:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            return str(review.record_report(session, store, doctor=doctor, record_id=record_id, max_pixels=max_pixels))

    @_friendly
    def batch(
        files: list[str] | None,
        exam: str | None,
        model_name: str | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress tracker
    ) -> tuple[Any, str, Any]:
        def tick(done: int, total: int, name: str) -> None:
            progress((done, total), desc=f"{name}" if done < total else "done", unit="files")

        with Session(engine) as session:
            doctor = doctor_of(session, request)
            rows = review.diagnose_batch(
                session,
                store,
                doctor=doctor,
                files=files,
                exam_date=exam,
                model_name=model_name,
                allowed_models=models,
                max_upload_bytes=max_bytes,
                max_pixels=max_pixels,
                progress=tick,
            )
        table_value = {"headers": review.BATCH_COLUMNS, "data": review.batch_table(rows)}
        caveats = "\n\n".join(f"⚠️ {w}" for w in review.batch_caveats(rows))
        return table_value, caveats, str(review.batch_csv(rows))

    def select_row(evt: gr.SelectData) -> Any:
        row = evt.row_value or []
        return row[0] if row else gr.update()

    @_friendly
    def update_record(record_id: Any, patient: str | None, exam_date: str | None, request: gr.Request) -> str:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            record = service.update_patient(
                session, doctor=doctor, record_id=record_id, patient_name=patient, exam_date=exam_date
            )
            patient_text = service.md_escape(record.patient_name)
            return f"Saved: record {record.id} is now {patient_text}, exam date {record.exam_date.isoformat()}."

    @_friendly
    def ask_delete(record_id: Any) -> Any:
        rid = service.parse_record_id(record_id)
        return gr.update(visible=True), f"Delete record {rid} and its image for good? This cannot be undone."

    @_friendly
    def delete_record(record_id: Any, request: gr.Request) -> tuple[str, Any, Any, Any, Any]:
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            record = service.delete_record(session, store, doctor=doctor, record_id=record_id)
        message = f"Deleted record {record.id} ({service.md_escape(record.patient_name)})."
        return message, gr.update(visible=False), None, None, None

    @_friendly
    def export_csv(
        patient: str | None, date_from: str | None, date_to: str | None, label: str | None, request: gr.Request
    ) -> str:
        filters = service.parse_filters(patient, date_from, date_to, label)
        with Session(engine) as session:
            doctor = doctor_of(session, request)
            return str(service.export_csv(session, doctor=doctor, filters=filters))

    @_friendly
    def compare(file: str | None, method: str | None, request: gr.Request) -> tuple[Any, Any]:
        with Session(engine) as session:
            doctor_of(session, request)
        results = service.compare_models(
            file,
            filename=Path(file).name if file else None,
            model_names=models,
            method=method,
            max_upload_bytes=max_bytes,
            max_pixels=max_pixels,
        )
        gallery = [
            (c.view.overlay(0.4), f"{c.info.name}: {c.label} ({c.probabilities.get(c.label or '', 0):.3f})")
            for c in results
            if c.view is not None
        ]
        return {"headers": service.COMPARE_COLUMNS, "data": service.comparison_rows(results)}, gallery

    @_friendly
    def model_card(name: str | None, request: gr.Request) -> str:
        with Session(engine) as session:
            doctor_of(session, request)
        if not name:
            return "No model is installed."
        if name not in models:
            raise gr.Error(f"Unknown model '{name}'.")
        info = infos[name]
        if info.error:
            return f"**{name}** cannot be loaded: {info.error}"
        from xray.inference.models import load_model

        loaded = load_model(name)
        card = service.strip_front_matter(loaded.card) or "_This model has no model card (README.md)._"
        headline = service.format_headline(info.headline) or "no test metrics (metrics.json missing)"
        return f"**{name}** · {loaded.architecture} · version `{loaded.version}` · test: {headline}\n\n---\n\n{card}"

    # ------------------------------------------------------------------------------------------ layout

    with gr.Blocks(title=TITLE) as demo:
        with gr.Row():
            gr.Markdown(f"# {TITLE}", scale=4)
            with gr.Column(scale=2, min_width=220):
                greeting = gr.Markdown()
                gr.Button("Log out", link="/logout", size="sm", variant="secondary")
            if _oauth_enabled():
                # Its presence makes Gradio add the Hugging Face OAuth routes used by the sign-in page link.
                gr.LoginButton(visible=False)
        gr.HTML(NOTICE_HTML)

        with gr.Tabs():
            with gr.Tab("Diagnose", id="diagnose"):
                if not models:
                    gr.Markdown(
                        "⚠️ **No model is installed.** Train one with `train.py` (see the README), copy a model "
                        "folder into `models/`, or set `XRAY_EXTRA_MODELS=local-dir:PATH`; then restart the app."
                    )
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(
                            label="Chest X-ray (PNG, JPEG or DICOM)", file_types=upload_types, type="filepath"
                        )
                        preview_image = gr.Image(
                            label="Uploaded image", interactive=False, height=260, elem_id="xray-preview"
                        )
                        patient = gr.Textbox(label="Patient name or ID", max_length=service.MAX_PATIENT_LENGTH)
                        exam_date = gr.DateTime(
                            value=_today,
                            include_time=False,
                            type="string",
                            label="Exam date",
                            info="YYYY-MM-DD; filled from the DICOM file when it says",
                        )
                        model = gr.Dropdown(choices=model_choices, value=default_model, label="Model (test metrics)")
                        with gr.Accordion("Heatmap method", open=False):
                            method = gr.Radio(list(service.CAM_METHODS), value="gradcam", label="CAM method")
                        run = gr.Button("Analyse and save", variant="primary")
                        examples = service.example_files()
                        if examples:
                            gr.Examples(
                                examples=[[str(p), f"Sample patient {i}"] for i, p in enumerate(examples, 1)],
                                inputs=[upload, patient],
                                example_labels=[_example_label(i, p) for i, p in enumerate(examples, 1)],
                                label="Sample X-rays (Kermany et al. 2018, CC BY 4.0): click one, then Analyse",
                            )
                    with gr.Column(scale=2):
                        probabilities = gr.Label(
                            label="Probabilities (calibrated)", num_top_classes=5, elem_id="xray-probabilities"
                        )
                        gate_box = gr.Markdown(visible=False, elem_classes="xray-gate", elem_id="xray-gate")
                        reveal_btn = gr.Button("Show the prediction anyway", visible=False, variant="secondary")
                        summary = gr.Markdown()
                        with gr.Row():
                            original = gr.Image(label="Original", interactive=False)
                            overlay = gr.Image(label="Grad-CAM heatmap", interactive=False, elem_id="xray-heatmap")
                        heat_info = gr.Markdown(elem_id="xray-heat-in-lungs")
                        with gr.Row():
                            opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Heatmap opacity")
                            target = gr.Radio(choices=[], label="Heatmap for class", interactive=False)
                        with gr.Accordion("Operating point", open=False, visible=op_start.available) as op_group:
                            with gr.Row():
                                op_threshold = gr.Slider(
                                    0.0, 1.0, value=op_start.threshold, step=0.01, label="Threshold",
                                    info="Positive when its probability is at least this (model default shown)",
                                )  # fmt: skip
                                op_prevalence = gr.Number(
                                    value=op_start.prevalence, minimum=0.0, maximum=1.0, step=0.01,
                                    label="Prevalence (0-1)", info="How common the condition is among your patients",
                                )  # fmt: skip
                            op_text = gr.Markdown()
                        model_info = gr.Markdown()
                        gr.HTML(NOTICE_HTML)
                record_id_out = gr.Number(visible=False, precision=0)
                view_state = gr.State(None)
                shown_state = gr.State(None)  # the record whose prediction is on screen (None while hidden)

            with gr.Tab("History", id="history") as history_tab:
                agreement_text = gr.Markdown(elem_id="xray-agreement")
                with gr.Row():
                    f_patient = gr.Textbox(label="Patient contains", scale=2)
                    f_from = gr.DateTime(include_time=False, type="string", label="Exam date from", value=None)
                    f_to = gr.DateTime(include_time=False, type="string", label="Exam date to", value=None)
                    f_label = gr.Dropdown(choices=label_choices, value="Any", label="Model output")
                with gr.Row(equal_height=True):
                    search = gr.Button("Search", variant="primary", scale=2)
                    prev_page = gr.Button("◀ Newer", scale=1)
                    page = gr.Number(value=1, precision=0, label="Page", minimum=1, scale=1, min_width=80)
                    next_page = gr.Button("Older ▶", scale=1)
                    export = gr.Button("Export CSV", scale=1)
                caption = gr.Markdown()
                table = gr.Dataframe(
                    headers=service.HISTORY_COLUMNS, interactive=False, wrap=True, elem_id="xray-history"
                )
                csv_file = gr.File(label="CSV export (the filtered list)", interactive=False, visible=False)
                with gr.Row(equal_height=True):
                    h_record = gr.Number(value=None, label="Record ID (click a row)", precision=0, minimum=1)
                    open_btn = gr.Button("Open record")
                with gr.Row():
                    with gr.Column(scale=1):
                        h_details = gr.Markdown()
                        h_patient = gr.Textbox(label="Patient name or ID", max_length=service.MAX_PATIENT_LENGTH)
                        h_date = gr.DateTime(include_time=False, type="string", label="Exam date", value=None)
                        save_btn = gr.Button("Save patient fields")
                        delete_btn = gr.Button("Delete record…", variant="stop")
                        with gr.Group(visible=False) as confirm_box:
                            confirm_text = gr.Markdown()
                            with gr.Row():
                                confirm_btn = gr.Button("Yes, delete", variant="stop")
                                cancel_btn = gr.Button("Cancel")
                        with gr.Group():
                            final_choice = gr.Radio(
                                choices=review.final_read_choices(None, all_labels), label="Your final read"
                            )
                            final_note = gr.Textbox(label="Note (optional)", max_lines=4, max_length=2000)
                            final_btn = gr.Button("Save final read")
                        report_btn = gr.Button("Download PDF report")
                        report_file = gr.File(label="PDF report", interactive=False, visible=False)
                        h_message = gr.Markdown()
                    with gr.Column(scale=2):
                        with gr.Row():
                            h_original = gr.Image(label="Image", interactive=False)
                            h_overlay = gr.Image(label="Saved heatmap", interactive=False, elem_id="xray-saved-heatmap")
                        h_opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Heatmap opacity")
                h_view = gr.State(None)

            with gr.Tab("Batch", id="batch"):
                gr.Markdown(
                    "Analyse several X-rays at once: choose files or a zip of them. Each file is checked and saved "
                    "like a single upload (patient = file name, or the DICOM patient fields); the exam date is the "
                    "DICOM study date when the file has one, else the date below."
                )
                with gr.Row():
                    b_files = gr.File(
                        label="X-rays (PNG, JPEG, DICOM) or a .zip", file_count="multiple",
                        file_types=[*upload_types, ".zip"], type="filepath", scale=2,
                    )  # fmt: skip
                    with gr.Column(scale=1):
                        b_date = gr.DateTime(value=_today, include_time=False, type="string", label="Exam date")
                        b_model = gr.Dropdown(choices=model_choices, value=default_model, label="Model")
                        b_run = gr.Button("Run batch and save", variant="primary")
                b_caveat = gr.Markdown(elem_id="xray-batch-caveat")
                b_table = gr.Dataframe(headers=review.BATCH_COLUMNS, interactive=False, wrap=True, elem_id="xray-batch")
                b_csv = gr.File(label="Results (CSV)", interactive=False, visible=False)

            with gr.Tab("Compare", id="compare"):
                gr.Markdown(
                    "Run every installed model on one image: probabilities, heatmaps and latency side by side, "
                    "with each model's test metrics. For research; comparisons are not saved to History."
                )
                with gr.Row():
                    c_upload = gr.File(label="Chest X-ray", file_types=upload_types, type="filepath", scale=2)
                    c_method = gr.Radio(list(service.CAM_METHODS), value="gradcam", label="CAM method", scale=1)
                c_run = gr.Button("Compare models", variant="primary")
                c_table = gr.Dataframe(headers=service.COMPARE_COLUMNS, interactive=False, wrap=True)
                c_gallery = gr.Gallery(label="Heatmaps (predicted class)", columns=3, height="auto")

            with gr.Tab("About", id="about"):
                a_model = gr.Dropdown(choices=model_choices, value=default_model, label="Model")
                a_card = gr.Markdown()
                gr.Markdown(
                    f"App version **{xray.__version__}** · Gradio {gr.__version__}. {service.NOTICE} "
                    "Images and records stay on this server; see the README for data handling."
                )

        # -------------------------------------------------------------------------------------- events
        demo.load(greet, None, greeting, api_visibility="private")
        demo.load(model_card, a_model, a_card, api_name="model_card_on_load", api_visibility="private")
        upload.change(preview, upload, [preview_image, patient, exam_date], api_visibility="private")
        op_inputs = [model, op_threshold, op_prevalence, shown_state]
        run.click(
            diagnose,
            [upload, patient, exam_date, model, method, opacity],
            [
                probabilities, summary, original, overlay, target, model_info, heat_info, gate_box, reveal_btn,
                view_state, shown_state, record_id_out,
            ],
            api_name="diagnose",
            concurrency_limit=4,
            concurrency_id="inference",
        ).then(operating, op_inputs, op_text, api_name="operating_after_diagnose", api_visibility="private")
        reveal_btn.click(
            reveal,
            [record_id_out, opacity],
            [probabilities, summary, overlay, target, heat_info, reveal_btn, view_state, shown_state],
            api_name="show_prediction",
        ).then(operating, op_inputs, op_text, api_name="operating_after_reveal", api_visibility="private")
        op_threshold.release(operating, op_inputs, op_text, api_name="operating_point")
        op_prevalence.change(operating, op_inputs, op_text, api_name="operating_prevalence", api_visibility="private")
        model.change(
            operating_start, model, [op_group, op_threshold, op_prevalence], api_visibility="private"
        ).then(operating, op_inputs, op_text, api_name="operating_on_model", api_visibility="private")
        opacity.change(change_opacity, [view_state, opacity], overlay, api_visibility="private")
        target.input(
            change_target,
            [view_state, target, method, opacity],
            [overlay, view_state],
            api_visibility="private",
            concurrency_id="inference",
        )
        model.change(lambda name: name, model, a_model, api_name="sync_about_model", api_visibility="private")

        filters = [f_patient, f_from, f_to, f_label]
        page_outputs = [table, caption, page]
        search.click(_first_page(history), [*filters, page], page_outputs, api_name="history")
        prev_page.click(history_step(-1), [*filters, page], page_outputs, api_name="newer", api_visibility="private")
        next_page.click(history_step(+1), [*filters, page], page_outputs, api_name="older", api_visibility="private")
        export.click(export_csv, filters, csv_file, api_name="export_csv").success(
            lambda: gr.update(visible=True), None, csv_file, api_name="show_export", api_visibility="private"
        )
        record_outputs = [
            h_details, h_original, h_overlay, h_patient, h_date, final_choice, final_note, h_view, confirm_box,
        ]  # fmt: skip
        table.select(select_row, None, h_record, api_visibility="private").then(
            open_record,
            [h_record, h_opacity],
            record_outputs,
            api_name="open_record_from_table",
            api_visibility="private",
        ).then(lambda: gr.update(visible=False), None, report_file, api_name="hide_report", api_visibility="private")
        open_btn.click(open_record, [h_record, h_opacity], record_outputs, api_name="open_record").then(
            lambda: gr.update(visible=False), None, report_file, api_name="hide_report_2", api_visibility="private"
        )
        final_btn.click(
            save_final_read, [h_record, final_choice, final_note], [h_message, h_details], api_name="final_read"
        ).then(agreement, None, agreement_text, api_name="agreement_after_read", api_visibility="private")
        report_btn.click(report, h_record, report_file, api_name="report").success(
            lambda: gr.update(visible=True), None, report_file, api_name="show_report", api_visibility="private"
        )
        demo.load(agreement, None, agreement_text, api_name="agreement")
        history_tab.select(agreement, None, agreement_text, api_name="agreement_on_tab", api_visibility="private")
        b_run.click(
            batch, [b_files, b_date, b_model], [b_table, b_caveat, b_csv], api_name="batch", concurrency_id="inference"
        ).success(lambda: gr.update(visible=True), None, b_csv, api_name="show_batch_csv", api_visibility="private")
        h_opacity.change(
            change_opacity, [h_view, h_opacity], h_overlay, api_name="history_opacity", api_visibility="private"
        )
        save_btn.click(update_record, [h_record, h_patient, h_date], h_message, api_name="update_record").then(
            history, [*filters, page], page_outputs, api_name="history_after_edit", api_visibility="private"
        )
        delete_btn.click(ask_delete, h_record, [confirm_box, confirm_text], api_visibility="private")
        cancel_btn.click(
            lambda: gr.update(visible=False), None, confirm_box, api_name="cancel_delete", api_visibility="private"
        )
        confirm_btn.click(
            delete_record,
            h_record,
            [h_message, confirm_box, h_original, h_overlay, h_details],
            api_name="delete_record",
        ).then(history, [*filters, page], page_outputs, api_name="history_after_delete", api_visibility="private")
        # The History tab shows fresh records each time it is opened.
        history_tab.select(history, [*filters, page], page_outputs, api_name="history_on_tab", api_visibility="private")
        demo.load(
            _first_page(history), [*filters, page], page_outputs, api_name="history_on_load", api_visibility="private"
        )

        c_run.click(compare, [c_upload, c_method], [c_table, c_gallery], api_name="compare", concurrency_id="inference")
        a_model.change(model_card, a_model, a_card, api_name="model_card")

    return demo


def _example_label(number: int, path: Path) -> str:
    """`Sample 1 (dataset label: NORMAL)`: the Kermany file names start with NORMAL or personN_bacteria/virus."""
    label = "NORMAL" if path.name.upper().startswith("NORMAL") else "PNEUMONIA"
    return f"Sample {number} (dataset label: {label})"


def _today() -> str:
    """Today's date for the exam date field (evaluated when the page loads, not when the app starts)."""
    return date.today().isoformat()


def _first_page(history: Callable[..., Any]) -> Callable[..., Any]:
    """The history handler started from page 1 (a new search resets the page)."""

    def first(patient: Any, date_from: Any, date_to: Any, label: Any, page: Any, request: gr.Request) -> Any:
        return history(patient, date_from, date_to, label, 1, request)

    return first


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
        response = RedirectResponse(url="./", status_code=302)
        # The same cookies Gradio's own /login sets, so gr.Request.username is the doctor's name.
        response.set_cookie(f"access-token-{app.cookie_id}", token, httponly=True, samesite="none", secure=True)
        response.set_cookie(f"access-token-unsecure-{app.cookie_id}", token, httponly=True)
        logger.info("hub sign-in: %s as %s", hub_user, doctor.username)
        return response

    return handler


def launch_options(settings: Settings, engine: Engine) -> dict[str, Any]:
    """Keyword arguments for `demo.launch`: database-backed sign-in, upload limit, routes, theme."""
    check = auth.make_password_checker(engine)

    async def password_check(username: str, password: str) -> bool:
        # Argon2 is deliberately slow: keep it off the event loop (the context carries the client address).
        return await asyncio.to_thread(check, username, password)

    oauth = _oauth_enabled()
    message = (
        "Sign in with your doctor account. Accounts are created by the administrator "
        "(<code>python -m xray users add NAME</code>). Repeated failed attempts are paused for 15 minutes."
    )
    routes = [Route("/logout", _logout, methods=["GET"])]
    if oauth:
        message += ' Or <a href="/login/huggingface?_target_url=/xray/hub-signin">sign in with Hugging Face</a>.'
        routes.append(Route("/xray/hub-signin", _hub_signin(engine), methods=["GET"]))
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
        },
        "footer_links": ["api", "settings"],
        "css": CSS,
        "theme": gr.themes.Soft(),
    }


def main() -> None:
    """Start the app on the settings from the environment (creates the data folder and tables)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    settings = get_settings()
    if settings.num_threads:
        import torch

        torch.set_num_threads(settings.num_threads)
    engine = service.open_database(settings)
    demo = build_demo(settings, engine=engine)
    demo.queue(default_concurrency_limit=8)
    demo.launch(**launch_options(settings, engine))


if __name__ == "__main__":
    main()
