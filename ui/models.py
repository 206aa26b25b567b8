"""Public Models tab: every registered model side by side from its metrics.json and card (`xray.web.models_page`)."""

from __future__ import annotations

import gradio as gr

from xray.web import backbones, models_page


def models_tab(names: list[str]) -> None:
    """Every registered model from its metrics.json: whom it was tested on, the chart, the tables, the cards."""
    entries = models_page.read_entries(names)
    gr.Markdown(
        "Every model this server offers, side by side. Every figure is read from the model folder's "
        "`metrics.json` (written by the evaluation) and its `README.md` card; 95% confidence intervals in "
        "parentheses; calibration as expected calibration error (ECE, test set) before and after temperature "
        "scaling."
    )
    gr.HTML(models_page.summary_html(entries), elem_id="xray-models-summary")
    gr.Plot(
        value=models_page.auc_latency_figure(entries), format="png", label=models_page.CHART_TITLE, show_label=False
    )
    gr.HTML(models_page.tables_html(entries), elem_id="xray-models-tables")
    gr.HTML(backbones.backbones_html(), elem_id="xray-models-backbones-section")
    for entry in entries:
        with gr.Accordion(f"Model card: {entry.name}", open=False):
            gr.HTML(models_page.card_html(entry))
