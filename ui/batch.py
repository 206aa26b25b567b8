"""Batch tab: several files or a zip through `xray.web.batch`; the results table, the caveats and a CSV."""

from __future__ import annotations

from typing import Any

import gradio as gr
from sqlmodel import Session

from ui.common import AppContext, quiet, today
from xray.web import batch, forms


def batch_tab(ctx: AppContext) -> None:
    """Several files or a zip, one exam date and model; the results table, the model's caveat and a CSV."""
    with gr.Tab("Batch", id="batch"):
        gr.Markdown(
            "Analyse several X-rays at once: choose files or a zip of them. Each file is checked and saved "
            "like a single upload (patient = file name, or the DICOM patient fields); the exam date is the "
            "DICOM study date when the file has one, else the date below."
        )
        with gr.Row():
            files = quiet(gr.File(
                label="X-rays (PNG, JPEG, DICOM) or a .zip", file_count="multiple",
                file_types=[*ctx.upload_types, ".zip"], type="filepath", scale=2,
            ))  # fmt: skip
            with gr.Column(scale=1):
                exam_date = quiet(gr.DateTime(value=today, include_time=False, type="string", label="Exam date"))
                population = gr.Radio(
                    list(forms.PATIENT_GROUPS), value=forms.PATIENT_GROUPS[0], label="Patients",
                    info=forms.PATIENT_GROUP_INFO, elem_id="xray-batch-population",
                )  # fmt: skip
                model = gr.Dropdown(
                    choices=ctx.model_choices, value=ctx.default_model, label="Model",
                    info=ctx.model_info,
                )
                run = gr.Button("Run batch and save", variant="primary")
        caveat = gr.Markdown(elem_id="xray-batch-caveat")
        table = gr.Dataframe(
            headers=batch.BATCH_COLUMNS, interactive=False, wrap=True, elem_id="xray-batch",
            column_widths=batch.BATCH_COLUMN_WIDTHS,
        )
        csv_file = gr.File(label="Results (CSV)", interactive=False, visible=False)
    # the form's cheap checks first, on an event without outputs: one message, no error badge on the table
    run.click(ctx.handler(check_batch_form), [files, exam_date, model], None, api_visibility="private").success(
        ctx.handler(run_batch),
        [files, exam_date, model, population],  # the patient group last: older API clients keep working
        [table, caveat, csv_file],
        api_name="batch",
        concurrency_id="inference",
    ).success(lambda: gr.update(visible=True), None, csv_file, api_name="show_batch_csv", api_visibility="private")


def check_batch_form(ctx: AppContext, files: list[str] | None, exam: str | None, model_name: str | None) -> None:
    """`xray.web.batch.check_batch_form` with this server's models."""
    batch.check_batch_form(files, exam, model_name, ctx.models)


def run_batch(
    ctx: AppContext,
    files: list[str] | None,
    exam: str | None,
    model_name: str | None,
    population: str | None = None,
    request: gr.Request = None,
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
            population=population,
        )
    table_value = {"headers": batch.BATCH_COLUMNS, "data": batch.batch_table(rows)}
    caveats = "\n\n".join(f"⚠️ {w}" for w in batch.batch_caveats(rows))
    return table_value, caveats, str(batch.batch_csv(rows))
