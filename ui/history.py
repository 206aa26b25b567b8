"""History tab: agreement with the model, filters, pages of records and CSV export; then one record's panel.

The panel shows the record's details and saved heatmap, and edits its patient fields, deletes it, stores the
doctor's final read and makes its PDF report.

The handlers call `xray.web.history` and `xray.web.review` with the signed-in doctor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from sqlmodel import Session

from ui.common import DISPLAY_FORMAT, AppContext, change_opacity, friendly, needs_record, quiet
from xray.web import forms, history, review, views


@dataclass
class _HistoryList:
    """The History list's components that the record panel refreshes after an edit, a delete or a final read."""

    agreement: gr.Markdown
    table: gr.Dataframe
    inputs: list[Any]  # the filters and the page number
    outputs: list[Any]  # table, caption, page


def history_tab(ctx: AppContext, demo: gr.Blocks) -> None:
    """Agreement with the model, filters, paging, the records table and CSV export; then one record's panel."""
    with gr.Tab("History", id="history") as tab:
        agreement_text = gr.Markdown(elem_id="xray-agreement")
        with gr.Row():
            f_patient = gr.Textbox(label="Patient contains", scale=2)
            f_from = quiet(gr.DateTime(include_time=False, type="string", label="Exam date from", value=None))
            f_to = quiet(gr.DateTime(include_time=False, type="string", label="Exam date to", value=None))
            f_label = gr.Dropdown(choices=["Any", *ctx.all_labels], value="Any", label="Model output")
        with gr.Row(equal_height=True):
            search = gr.Button("Search", variant="primary", scale=2)
            prev_page = gr.Button("◀ Newer", scale=1)
            page = gr.Number(value=1, precision=0, label="Page", minimum=1, scale=1, min_width=80)
            next_page = gr.Button("Older ▶", scale=1)
            export = gr.Button("Export CSV", scale=1)
        caption = gr.Markdown()
        table = gr.Dataframe(
            headers=history.HISTORY_COLUMNS, interactive=False, wrap=True, elem_id="xray-history",
            column_widths=history.HISTORY_COLUMN_WIDTHS,
        )
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
        # No `minimum`: Gradio refuses an empty field (sent as 0) with "Value 0 is less than minimum value 1" and an
        # error badge on every output; `needs_record` says "Open a record first" instead.
        record_id = gr.Number(value=None, label="Record ID (click a row)", precision=0)
        open_btn = gr.Button("Open record")
    with gr.Row():
        with gr.Column(scale=1):
            details = gr.Markdown(elem_id="xray-record-details")
            patient = gr.Textbox(label="Patient name or ID")
            exam_date = quiet(gr.DateTime(include_time=False, type="string", label="Exam date", value=None))
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

    show_page = ctx.handler(list_history)
    outputs = [details, original, overlay, patient, exam_date, final_choice, final_note, view, confirm_box]
    show_record = ctx.handler(needs_record(open_record, outputs=len(outputs)))
    listing.table.select(select_row, None, record_id, api_visibility="private").then(
        show_record, [record_id, opacity], outputs, api_name="open_record_from_table", api_visibility="private"
    ).then(lambda: gr.update(visible=False), None, report_file, api_name="hide_report", api_visibility="private")
    open_btn.click(show_record, [record_id, opacity], outputs, api_name="open_record").then(
        lambda: gr.update(visible=False), None, report_file, api_name="hide_report_2", api_visibility="private"
    )
    final_btn.click(
        ctx.handler(needs_record(save_final_read, outputs=2)),
        [record_id, final_choice, final_note],
        [message, details],
        api_name="final_read",
    ).then(ctx.handler(agreement), None, listing.agreement, api_name="agreement_after_read", api_visibility="private")
    report_btn.click(ctx.handler(needs_record(report, outputs=1)), record_id, report_file, api_name="report").success(
        lambda record_id: gr.update(visible=bool(record_id)), record_id, report_file, api_name="show_report",
        api_visibility="private",
    )  # fmt: skip
    opacity.change(
        friendly(change_opacity), [view, opacity], overlay, api_name="history_opacity", api_visibility="private"
    )
    save_btn.click(
        ctx.handler(needs_record(update_record, outputs=1)), [record_id, patient, exam_date], message,
        api_name="update_record",
    ).success(
        # the record's heading and details show the new patient fields
        ctx.handler(needs_record(record_details, outputs=1, warn=False)), record_id, details,
        api_name="details_after_edit", api_visibility="private",
    ).then(
        show_page, listing.inputs, listing.outputs, api_name="history_after_edit", api_visibility="private"
    )  # fmt: skip
    delete_btn.click(
        friendly(needs_record(ask_delete, outputs=2)), record_id, [confirm_box, confirm_text], api_visibility="private"
    )
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


def record_details(ctx: AppContext, record_id: Any, request: gr.Request) -> str:
    """The record's heading and details as they are now (after an edit)."""
    with Session(ctx.engine) as session:
        doctor = ctx.doctor(session, request)
        record = history.owned_record(session, doctor=doctor, record_id=record_id)
        return history.record_markdown(record)


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
