"""Diagnose tab: upload, patient fields and model; result, heatmap, input check and operating point.

The handlers call `xray.web.diagnose` and `xray.web.operating` with the signed-in doctor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from sqlmodel import Session

from ui.common import DISPLAY_FORMAT, NOTICE_HTML, AppContext, change_opacity, decision_label, friendly, quiet, today
from xray.errors import XrayError
from xray.web import diagnose, forms, history, operating, registry, views
from xray.web.views import HeatmapView


def diagnose_tab(ctx: AppContext) -> gr.Dropdown:
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
                upload, patient, exam_date, model, method, run, population = _diagnose_form(ctx)
            with gr.Column(scale=2):
                probabilities = decision_label(
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
        gate_note = gr.State(None)  # the input check's note, kept for the box shown after "Show the prediction"

    show_operating = ctx.handler(operating_text)
    op_inputs = [model, op_threshold, op_prevalence, shown_state]
    # a new result starts the panel at the threshold that decided it (a child's 0.772, not the pooled one)
    start_operating = ctx.handler(operating_for_result)
    start_inputs, start_outputs = [model, op_prevalence, shown_state], [op_threshold, op_text]
    # The form's cheap checks first, on an event without outputs: a mistake in the form gets one message and no
    # error badge on every result pane. /diagnose checks them again for API clients.
    run.click(
        ctx.handler(check_form), [upload, patient, exam_date, model, method], None, api_visibility="private"
    ).success(
        ctx.handler(run_diagnose),
        # the patient group last: API clients written before it keep working (its default is Adult)
        [upload, patient, exam_date, model, method, opacity, population],
        [
            probabilities, summary, original, overlay, target, model_info, heat_info, gate_box, reveal_btn,
            view_state, shown_state, record_id_out, gate_note,
        ],
        api_name="diagnose",
        concurrency_limit=ctx.settings.inference_concurrency,
        concurrency_id="inference",
    ).then(start_operating, start_inputs, start_outputs, api_name="operating_after_diagnose", api_visibility="private")
    reveal_btn.click(
        ctx.handler(reveal),
        [record_id_out, opacity, gate_note],
        [probabilities, summary, overlay, target, heat_info, gate_box, reveal_btn, view_state, shown_state],
        api_name="show_prediction",
    ).then(start_operating, start_inputs, start_outputs, api_name="operating_after_reveal", api_visibility="private")
    # `input`: dragging the knob and typing into the number box alike (`release` missed typing).
    op_threshold.input(show_operating, op_inputs, op_text, api_name="operating_point", trigger_mode="always_last")
    op_prevalence.change(show_operating, op_inputs, op_text, api_name="operating_prevalence", api_visibility="private")
    model.change(
        ctx.handler(operating_start), model, [op_group, op_threshold, op_prevalence], api_visibility="private"
    ).then(show_operating, op_inputs, op_text, api_name="operating_on_model", api_visibility="private")
    opacity.change(friendly(change_opacity), [view_state, opacity], overlay, api_visibility="private")
    target.input(
        ctx.handler(change_target),
        [view_state, target, method, opacity],
        [overlay, view_state],
        api_visibility="private",
        concurrency_id="inference",
    )
    method.input(
        ctx.handler(change_method),
        [view_state, method, opacity],
        [overlay, view_state],
        api_visibility="private",
        concurrency_id="inference",
    )
    return model


def _diagnose_form(
    ctx: AppContext,
) -> tuple[gr.File, gr.Textbox, gr.DateTime, gr.Dropdown, gr.Radio, gr.Button, gr.Radio]:
    """The upload with its preview, patient fields, model, CAM method, the run button and the sample X-rays.

    Also the patient group (Adult / Child), returned last.
    """
    upload = quiet(gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", file_types=ctx.upload_types, type="filepath"))
    preview_image = gr.Image(
        label="Uploaded image", interactive=False, height=260, elem_id="xray-preview", format=DISPLAY_FORMAT
    )
    patient = gr.Textbox(label="Patient name or ID")
    population = gr.Radio(
        list(forms.PATIENT_GROUPS), value=forms.PATIENT_GROUPS[0], label="Patient", info=forms.PATIENT_GROUP_INFO,
        elem_id="xray-population",
    )  # fmt: skip
    exam_date = quiet(gr.DateTime(
        value=today,
        include_time=False,
        type="string",
        label="Exam date (YYYY-MM-DD; filled from the DICOM file when it says)",
    ))  # fmt: skip
    model = gr.Dropdown(
        choices=ctx.model_choices, value=ctx.default_model, label="Model (test metrics)",
        info=ctx.model_info,
    )
    with gr.Accordion("Heatmap method", open=False):
        method = gr.Radio(list(diagnose.CAM_METHODS), value="gradcam", label="CAM method")
    run = gr.Button("Analyse and save", variant="primary")
    examples = registry.example_files()
    if examples:
        gr.Examples(
            # the samples are Kermany's children: their patient group is Child
            examples=[[str(p), f"Sample patient {i}", "Child"] for i, p in enumerate(examples, 1)],
            inputs=[upload, patient, population],
            example_labels=[_example_label(i, p) for i, p in enumerate(examples, 1)],
            label="Sample X-rays (Kermany et al. 2018, CC BY 4.0): click one, then Analyse",
        )
    upload.change(
        ctx.handler(preview), upload, [preview_image, patient, exam_date, upload], api_visibility="private"
    )
    return upload, patient, exam_date, model, method, run, population


def _operating_panel(ctx: AppContext) -> tuple[gr.Accordion, gr.Slider, gr.Number, gr.Markdown]:
    """The operating-point accordion (threshold, prevalence, expected metrics), set for the default model."""
    info = ctx.infos.get(ctx.default_model) if ctx.default_model else None
    start = operating.operating_defaults(info)
    with gr.Accordion("Operating point", open=False, visible=start.available) as group:
        with gr.Row():
            threshold = gr.Slider(
                0.0, 1.0, value=start.threshold, step=0.001, label="Threshold", elem_id="xray-threshold",
                info="Positive when its probability is at least this (starts at the threshold that decided the result)",
            )  # fmt: skip
            prevalence = gr.Number(
                value=start.prevalence, minimum=0.0, maximum=1.0, step=0.01,
                label="Prevalence (0-1)", info=operating.PREVALENCE_INFO,
            )  # fmt: skip
        # the expected metrics at the start, already there when the panel is opened (nothing to wait for)
        text = gr.Markdown(
            operating.operating_markdown(info, start.threshold, start.prevalence) if start.available else "",
            elem_id="xray-operating",
        )
    return group, threshold, prevalence, text


def preview(ctx: AppContext, file: str | None) -> tuple[Any, Any, Any, Any]:
    """The uploaded image at display size, and the patient fields from its DICOM tags.

    A file that is not a readable image gets one warning and is taken out of the form (an error would mark the
    preview and the patient fields with error badges, and Analyse would repeat it).
    """
    if not file:
        return None, gr.skip(), gr.skip(), gr.skip()
    try:
        data = forms.read_upload(file, max_bytes=ctx.max_bytes)
        image = forms.load_image(data, filename=Path(file).name, max_pixels=ctx.max_pixels)
    except XrayError as exc:
        gr.Warning(str(exc))
        return None, gr.skip(), gr.skip(), None
    prefill = forms.prefill_from_metadata(image.metadata)
    patient = gr.update(value=prefill.patient) if prefill.patient else gr.skip()
    exam = gr.update(value=prefill.exam_date.isoformat()) if prefill.exam_date else gr.skip()
    return views.display_pixels(image), patient, exam, gr.skip()


def check_form(
    ctx: AppContext,
    file: str | None,
    patient: str | None,
    exam_date: str | None,
    model_name: str | None,
    method: str | None,
) -> None:
    """The form's checks that need neither the file's content nor the model (`xray.web.diagnose.check_form`)."""
    diagnose.check_form(file, patient, exam_date, model_name, ctx.models, method)


def run_diagnose(
    ctx: AppContext,
    file: str | None,
    patient: str | None,
    exam_date: str | None,
    model_name: str | None,
    method: str | None,
    alpha: float,
    population: str | None = None,
    request: gr.Request = None,
) -> tuple[Any, ...]:
    """Analyse and save the upload; an out-of-scope image gets the gate's reasons, its prediction hidden.

    `population` (Adult / Child) picks a per-population threshold when the file has no DICOM PatientAge.
    """
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
            population=population,
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
                result.gate_note,
            )  # fmt: skip
        return (
            views.label_value(record.predicted_label, result.probabilities),
            summary,
            result.view.pixels,
            result.view.overlay(alpha),
            gr.update(choices=list(record.label_names), value=result.view.target_label, interactive=True),
            info,
            views.heat_markdown(
                record.heat_in_lungs, record.heat_in_chest, result.heatmap_check.note if result.heatmap_check else None
            ),
            gr.update(value=gate_text, visible=bool(gate_text)),
            gr.update(visible=False),
            result.view,
            record.id,
            record.id,
            result.gate_note,
        )


def reveal(
    ctx: AppContext, record_id: Any, alpha: float, gate_note: str | None, request: gr.Request
) -> tuple[Any, ...]:
    """The hidden prediction of an out-of-scope record, under the input warning (which now says it is shown)."""
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
            views.label_value(record.predicted_label, record.probabilities),
            summary,
            detail.view.overlay(alpha),
            gr.update(choices=list(record.label_names), value=detail.view.target_label, interactive=True),
            views.heat_markdown(record.heat_in_lungs, record.heat_in_chest),
            gr.update(value=views.gate_markdown(record.gate_reasons, gate_note, shown=True), visible=True),
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


def operating_for_result(
    ctx: AppContext, model_name: str | None, prevalence: Any, shown: Any, request: gr.Request
) -> tuple[Any, str]:
    """The slider at the threshold that decided the record on screen, and the expected metrics there."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        threshold, text = operating.start_for_record(
            session, doctor=doctor, info=ctx.infos.get(model_name or ""), prevalence=prevalence, record_id=shown
        )
    return gr.update(value=threshold), text


def operating_start(ctx: AppContext, model_name: str | None) -> tuple[Any, Any, Any]:
    """Show the operating point for a newly chosen model, starting at its own threshold and prevalence."""
    start = operating.operating_defaults(ctx.infos.get(model_name or ""))
    return gr.update(visible=start.available), gr.update(value=start.threshold), gr.update(value=start.prevalence)


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
    new_view = _redraw(ctx, view, target, method or view.method, request)
    return new_view.overlay(alpha), new_view


def _redraw(ctx: AppContext, view: HeatmapView, target: str, method: str, request: gr.Request) -> HeatmapView:
    """The signed-in doctor's record on screen explained again (`xray.web.diagnose.reexplain`); nothing saved."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        return diagnose.reexplain(
            session,
            ctx.store,
            doctor=doctor,
            record_id=view.record_id,
            target_label=target,
            method=method,
            allowed_models=ctx.models,
            max_pixels=ctx.max_pixels,
        )


def change_method(
    ctx: AppContext, view: HeatmapView | None, method: str | None, alpha: float, request: gr.Request
) -> tuple[Any, Any]:
    """The record on screen's heatmap redrawn with another CAM method, named above it; no record changed or added."""
    label = f"{diagnose.CAM_NAMES.get(method or '', 'Grad-CAM')} heatmap"
    if view is None or view.record_id is None or not method or method == view.method:
        return gr.update(label=label), view  # nothing on screen: the method applies to the next analysis
    new_view = _redraw(ctx, view, view.target_label, method, request)
    return gr.update(value=new_view.overlay(alpha), label=label), new_view


def _example_label(number: int, path: Path) -> str:
    """`Sample 1 (dataset label: NORMAL)`: the Kermany file names start with NORMAL or personN_bacteria/virus."""
    label = "NORMAL" if path.name.upper().startswith("NORMAL") else "PNEUMONIA"
    return f"Sample {number} (dataset label: {label})"
