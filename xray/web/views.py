"""What a doctor sees of a result: images at display size, the heatmap overlay, and the Markdown around them.

Shared by every tab: the notice, the model-output sentence, the input-gate and heat-in-lungs boxes, Markdown
escaping of patient text, and spreadsheet-safe CSV cells.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xray.imaging.io import PREVIEW_MAX_SIDE, XrayImage
from xray.records.db import Record
from xray.trust.operating import describe_threshold
from xray.web.forms import parse_opacity

NOTICE = (
    "Decision support only, not a diagnosis. This research model has not been cleared as a medical device; "
    "the reading physician makes the diagnosis."
)
#: Longest side of images sent to the browser (the model always sees the full image): the image's preview.
DISPLAY_MAX_SIDE = PREVIEW_MAX_SIDE


# ---------------------------------------------------------------------------------------------- images


def display_pixels(image: XrayImage) -> np.ndarray:
    """The image at display size as HxWx3 uint8 RGB: its `preview`, shared with the checks that ran on it."""
    small = image.preview()
    return np.repeat(small[:, :, None], 3, axis=2) if small.ndim == 2 else small


@dataclass
class HeatmapView:
    """An image and a heatmap at display size: everything the opacity slider needs, kept per browser session."""

    pixels: np.ndarray
    heatmap: np.ndarray
    target_label: str
    method: str
    record_id: int | None = None

    def overlay(self, alpha: float) -> np.ndarray:
        """The heatmap blended onto the image with opacity `alpha`."""
        from xray.inference.explain import overlay_heatmap

        return overlay_heatmap(self.pixels, self.heatmap, parse_opacity(alpha))


def image_data_uri(pixels: np.ndarray, *, quality: int = 90) -> str:
    """An RGB/gray image as a `data:image/jpeg;base64,...` URI, for an `<img>` that needs no file on the server."""
    import base64

    import cv2

    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 and pixels.shape[2] == 3 else pixels
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("the image could not be encoded as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def make_view(
    image: XrayImage, heatmap: np.ndarray, *, target_label: str, method: str, record_id: int | None
) -> HeatmapView:
    """An image and its heatmap at display size."""
    import cv2

    small = display_pixels(image)
    # asarray, not astype: no copy of a full-size float32 map just to resize it
    heat = np.asarray(heatmap, dtype=np.float32)
    heat = cv2.resize(heat, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)
    return HeatmapView(
        pixels=small, heatmap=np.clip(heat, 0, 1), target_label=target_label, method=method, record_id=record_id
    )


# ---------------------------------------------------------------------------------------------- text

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def md_escape(text: str) -> str:
    """Text shown literally inside Markdown (a patient called `*Roe*` stays `*Roe*`, not italics)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def label_value(decision: str | None, probabilities: dict[str, float]) -> dict[str, Any]:
    """The probabilities for the label component, headed by the model's decision rather than the likeliest class.

    With a threshold other than 0.5 they differ (a child at P(PNEUMONIA) = 0.70 under the children's 0.797 is
    NORMAL): the headline must say what the summary sentence says. Classes in order of probability.
    """
    ordered = sorted(probabilities.items(), key=lambda item: -float(item[1]))
    confidences = [{"label": name, "confidence": float(p)} for name, p in ordered]
    return {"label": decision or (ordered[0][0] if ordered else None), "confidences": confidences}


def result_summary(record: Record) -> str:
    """One Markdown sentence stating the model's output against the threshold it was decided with (and why)."""
    return prediction_summary(
        record.predicted_label, record.probabilities, record.threshold, record.positive_label,
        population=record.population, why=record.population_reason,
    )  # fmt: skip


def prediction_summary(
    label: str,
    probabilities: dict[str, float],
    threshold: float | None,
    positive_label: str | None,
    *,
    population: str | None = None,
    why: str | None = None,
) -> str:
    """`result_summary` for a prediction that is not a record (the public demo).

    With a population, the threshold is that population's and the sentence says why it was chosen.
    """
    if threshold is not None and positive_label:
        p_pos = probabilities.get(positive_label, float("nan"))
        relation = "at or above" if p_pos >= threshold else "below"
        return (
            f"**Model output: {label}**: P({positive_label}) = {p_pos:.3f}, {relation} the model's operating "
            f"{describe_threshold(threshold, population, why)}."
        )
    return f"**Model output: {label}** (most probable class, P = {probabilities.get(label, float('nan')):.3f})."


def model_line(record: Record) -> str:
    """`model pneumonia · mobilenetv3_large_100 · version 1a2b3c`."""
    return f"Model `{record.model_name}` · {record.architecture} · version `{record.model_version}`"


def gate_warning(reasons: Sequence[str] | None) -> str | None:
    """The out-of-scope warning for stored gate reasons, or None when there were none."""
    if not reasons:
        return None
    return (
        "This image may be outside what the model was made for (frontal chest X-rays): "
        + " ".join(reasons)
        + " Any result for it is unreliable."
    )


#: How a listing (History, Batch) marks a model output on an image the input gate called out of scope.
OUT_OF_SCOPE_MARK = "⚠️ OUT OF SCOPE"


def listed_output(label: str, reasons: Sequence[str] | None) -> str:
    """The model-output cell of a listing: the label, marked when the image was out of scope."""
    return f"{OUT_OF_SCOPE_MARK} · {label}" if reasons else label


#: Longest patient name a listing shows (History, Batch); the record, its page, the CSV and the PDF keep it whole.
LISTED_NAME_CHARS = 60


def listed_name(text: str, limit: int = LISTED_NAME_CHARS) -> str:
    """A long name shortened for a listing cell, ending in '…' (cut at a space when one is near the end)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 2 // 3:
        cut = cut[:space]
    return cut.rstrip() + "…"


def input_check_cell(reasons: Sequence[str] | None) -> str:
    """The stored gate verdict as one CSV/table cell: `in scope`, `OUT OF SCOPE: <reasons>` or `not checked`."""
    if reasons is None:
        return "not checked"  # saved before the input gate existed
    return "OUT OF SCOPE: " + " ".join(reasons) if reasons else "in scope"


def gate_markdown(reasons: Sequence[str] | None, note: str | None = None, *, shown: bool = False) -> str:
    """The warning box of an out-of-scope image (empty when in scope): the prediction hidden, or `shown` on request."""
    if not reasons:
        return f"ℹ️ {note}" if note else ""
    heading = (
        "### ⚠️ Out of scope: the prediction below is shown on request and is unreliable"
        if shown
        else "### ⚠️ Out of scope: the prediction is hidden"
    )
    lines = [heading, ""]
    lines += [f"- {md_escape(r)}" for r in reasons]
    lines += [
        "",
        "The model was made for frontal chest X-rays; any result for this image is unreliable. The record is saved."
        + ("" if shown else " Click **Show the prediction anyway** to see it under this warning."),
    ]
    if note:
        lines += ["", f"ℹ️ {note}"]
    return "\n".join(lines)


def heat_markdown(heat_in_lungs: float | None, heat_in_chest: float | None = None, note: str | None = None) -> str:
    """`62% of the heat lies inside the estimated lung fields`, with `xray.trust.lungs`' warning when it applies.

    `note` is the check's own note (`HeatmapCheck.note`: the intensity heuristic stood in for the missing lung
    segmentation model), shown after the shares.
    """
    from xray.trust.lungs import heat_warning

    suffix = f" {note}" if note else ""
    if heat_in_lungs is None:
        return ("Where the heatmap lies relative to the lungs was not checked (the lung fields could not be "
                "outlined)." + suffix)  # fmt: skip
    text = f"{heat_in_lungs:.0%} of the heat lies inside the estimated lung fields"
    if heat_in_chest is None:
        return text + "." + suffix
    text += f", {heat_in_chest:.0%} over the chest." + suffix
    warning = heat_warning(heat_in_lungs, heat_in_chest)
    return text + (f"\n\n⚠️ **{warning}**" if warning else "")


_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV value a spreadsheet will not run: text starting with `=`, `+`, `-`, `@`... gets a leading quote."""
    # A spreadsheet would run a cell starting with '=' etc. as a formula (CSV injection): quote it as text.
    if isinstance(value, str) and value.startswith(_CSV_FORMULA):
        return "'" + value
    return value
