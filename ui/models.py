"""Public Models tab: every registered model side by side from its metrics.json and card (`xray.web.models_page`)."""

from __future__ import annotations

import gradio as gr

from xray.web import models_page


def models_tab(names: list[str]) -> None:
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
