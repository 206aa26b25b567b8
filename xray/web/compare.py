"""The Compare tab: every registered model on one image, side by side. Nothing is saved.

This is the researchers' view of the backbones, not a patient's record: each model's prediction, heatmap,
latency, test metrics, its own input check and its caveat. `comparison_html` lays them out one column per model
(name above its heatmap, then each figure in a row), so that a few models fit the page whatever the length of
their caveats; `comparison_rows` keeps the same figures as a table for API clients.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xray.errors import InvalidInputError, XrayError
from xray.inference.population import choose_threshold
from xray.trust.operating import describe_threshold
from xray.web.diagnose import check_method
from xray.web.forms import load_image, read_upload, require_upload
from xray.web.registry import ModelInfo, describe_model, format_headline
from xray.web.views import HeatmapView, make_view

COMPARE_COLUMNS = ["Model", "Architecture", "Version", "Output", "Probabilities", "Latency (ms)", "Test metrics",
                   "Input check", "Caveat"]  # fmt: skip


@dataclass
class Comparison:
    """One model's answer on the shared image in the Compare tab."""

    info: ModelInfo
    version: str = ""
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    view: HeatmapView | None = None
    error: str | None = None
    gate: Any = None  # xray.trust.gate.GateResult
    gate_note: str | None = None
    threshold: str = ""  # for a model with one threshold per population: which one decided, and why


def tested_figures(info: ModelInfo) -> str:
    """A model's test AUC per population (children, adults by source).

    The pooled headline only when no per-source figures were recorded: a pooled figure is mostly children.
    """
    from xray.web.models_page import population_auc_text, read_entry

    return population_auc_text(read_entry(info.name)) or format_headline(info.headline) or "none"


def check_compare_form(source: str | Path | bytes | None, model_names: Sequence[str], method: str | None) -> None:
    """The Compare form's checks that need neither the file's content nor a model (cheap, run first).

    Raises:
        InvalidInputError: no file, no model installed, an unknown heatmap method.
    """
    check_method(method)
    if not model_names:
        raise InvalidInputError("No model is installed to compare.")
    require_upload(source)


def compare_models(
    source: str | Path | bytes | None,
    *,
    filename: str | None,
    model_names: Sequence[str],
    method: str | None = "gradcam",
    max_upload_bytes: int,
    max_pixels: int,
) -> list[Comparison]:
    """Run every model on one image (prediction + heatmap each); a failing model reports its error in its row.

    Each model's input gate runs too (its own OOD statistics), outside the timed prediction. Nothing is saved:
    this is the researchers' view of the backbones, not a patient's record.
    """
    from xray.analysis.pipeline import analyse
    from xray.inference.models import load_model

    method = check_method(method)
    if not model_names:
        raise InvalidInputError("No model is installed to compare.")
    data = read_upload(source, max_bytes=max_upload_bytes)
    if filename is None and isinstance(source, (str, Path)):
        filename = Path(source).name
    image = load_image(data, filename=filename, max_pixels=max_pixels)
    results = []
    for name in model_names:
        info = describe_model(name)
        try:
            # each model runs its own input gate on its own features; the heat check is not shown here
            loaded = load_model(name)
            # no doctor's choice here: the DICOM age's population, else adults (most patients)
            choice = choose_threshold(loaded, patient_age=image.metadata.get("PatientAge"))
            analysis = analyse(loaded, image, method=method, threshold=choice.threshold)
        except XrayError as exc:
            results.append(Comparison(info=info, error=str(exc)))
            continue
        results.append(
            Comparison(
                info=info,
                gate=analysis.gate,
                gate_note=analysis.gate_note,
                version=str(loaded.version),
                label=analysis.label,
                probabilities=dict(analysis.probabilities),
                latency_ms=analysis.latency_ms,
                threshold=describe_threshold(choice.threshold, choice.population, choice.why)
                if choice.population else "",
                view=make_view(
                    image,
                    analysis.heatmap,
                    target_label=analysis.explanation.target_label,
                    method=method,
                    record_id=None,
                ),
            )
        )
    return results


def _output(c: Comparison) -> str:
    """The output cell: the label (with the population's threshold that decided it), or the model's error."""
    if c.error is not None:
        return f"error: {c.error}"
    return f"{c.label} ({c.threshold})" if c.threshold else str(c.label)


def comparison_rows(results: Sequence[Comparison]) -> list[list[Any]]:
    """Table rows in `COMPARE_COLUMNS` order."""
    from xray.analysis.pipeline import input_check_text

    rows = []
    for c in results:
        probs = ", ".join(f"{k} {v:.3f}" for k, v in c.probabilities.items())
        rows.append(
            [
                c.info.name,
                c.info.architecture,
                c.version,
                _output(c),
                probs,
                None if c.latency_ms is None else round(c.latency_ms, 1),
                tested_figures(c.info),
                input_check_text(c.gate, c.gate_note),
                c.info.caveat or "",
            ]
        )
    return rows


def comparison_gallery(results: Sequence[Comparison], alpha: float = 0.4) -> list[tuple[np.ndarray, str]]:
    """(overlay, `name: label (p)`) for each model that answered, for the heatmap gallery."""
    return [
        (c.view.overlay(alpha), f"{c.info.name}: {c.label} ({c.probabilities.get(c.label or '', 0):.3f})")
        for c in results
        if c.view is not None
    ]


#: Rows of the side-by-side view, one column per model (`comparison_html`).
VIEW_ROWS = ["Architecture", "Version", "Output", "Probabilities", "Latency (ms)", "Test metrics", "Input check",
             "Caveat"]  # fmt: skip
#: The view's own styles (in its HTML): text wraps at spaces only, so "Latency" never breaks into "Laten cy";
#: columns share the page width, so no column (input check, caveat) is pushed off screen.
VIEW_CSS = """
.xray-compare {max-width: 100%;}
.xray-compare table {width: 100%; border-collapse: collapse; table-layout: fixed; font-size: 0.9em;}
.xray-compare th, .xray-compare td {border: 1px solid #d4d4d8; padding: 6px 8px; vertical-align: top;
  text-align: left; word-break: normal !important; overflow-wrap: break-word !important; hyphens: none;}
.xray-compare th[scope=row] {width: 10em; background: #f4f4f5; white-space: normal;}
.xray-compare thead th {font-size: 1.05em;}
.xray-compare figure {margin: 0; text-align: center;}
.xray-compare img {max-width: 100%; border-radius: 4px;}
.xray-compare figcaption {font-weight: 600; margin-top: 4px;}
"""


def _model_column(c: Comparison) -> list[str]:
    """The cells of one model's column, in `VIEW_ROWS` order, escaped."""
    from xray.analysis.pipeline import input_check_text

    probs = ", ".join(f"{k} {v:.3f}" for k, v in c.probabilities.items())
    cells = [
        c.info.architecture, c.version, _output(c), probs,
        "" if c.latency_ms is None else f"{c.latency_ms:.1f}", tested_figures(c.info),
        input_check_text(c.gate, c.gate_note), c.info.caveat or "",
    ]  # fmt: skip
    return [html.escape(str(cell)) for cell in cells]


def comparison_html(results: Sequence[Comparison], alpha: float = 0.4) -> str:
    """Every model side by side: its name over its heatmap (with the label and probability), then its figures."""
    from xray.web.views import image_data_uri

    if not results:
        return ""
    heads, figures = [], []
    for c in results:
        name = html.escape(c.info.name)
        heads.append(f'<th scope="col">{name}</th>')
        if c.view is not None:
            caption = html.escape(f"{c.info.name}: {c.label} ({c.probabilities.get(c.label or '', 0):.3f})")
            figures.append(f'<td><figure><img src="{image_data_uri(c.view.overlay(alpha))}" alt="{caption}">'
                           f"<figcaption>{caption}</figcaption></figure></td>")  # fmt: skip
        else:
            figures.append(f"<td>{name}: no heatmap</td>")
    columns = [_model_column(c) for c in results]
    body = [f'<tr><th scope="row">Heatmap (predicted class)</th>{"".join(figures)}</tr>']
    for i, row in enumerate(VIEW_ROWS):
        body.append(f'<tr><th scope="row">{row}</th>' + "".join(f"<td>{col[i]}</td>" for col in columns) + "</tr>")
    return (
        f'<div class="xray-compare"><style>{VIEW_CSS}</style><table id="xray-compare-table"><thead><tr>'
        f'<th scope="row">Model</th>{"".join(heads)}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )
