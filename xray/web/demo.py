"""The public demo: a bundled sample or a visitor's image through the analysis pipeline, and nothing stored.

No doctor, no database, no image store: the upload is read into memory and its temporary copy deleted
(`discard_upload`), the images go back inline (`data:` URIs, so no file is written for them either), and the log
says which model answered what, never anything about the pixels or the file. `RateLimiter` caps analyses per client
address; its error says when to try again. Bundled samples cost nothing after their first analysis with a model
(`SampleResults` keeps the answer), so exploring them is not counted: only uploads and a sample's first analysis
with a model are. The handlers here return every output of the result area at once (`DEMO_OUTPUTS`), so a new
answer, a cleared area or the rate limit's one message always replaces what was there: no stale result is left
under another model's name.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from xray.errors import InvalidInputError, XrayError
from xray.inference.population import CHILDREN, choose_threshold
from xray.web.forms import load_image, read_upload
from xray.web.registry import caveat_warnings, example_files, load_registered_model
from xray.web.views import heat_markdown, image_data_uri, label_value, make_view, md_escape, prediction_summary

logger = logging.getLogger(__name__)

#: Seconds over which `XRAY_DEMO_RATE` analyses are allowed.
RATE_WINDOW_S = 60.0
#: The bundled samples are Kermany et al.'s paediatric X-rays (children aged 1-5): their threshold is the children's.
SAMPLE_POPULATION = CHILDREN
#: Long side of the sample thumbnails on the demo page.
THUMBNAIL_SIDE = 160
#: Heatmap opacity of the demo's overlay (the doctors' app has a slider).
DEMO_OPACITY = 0.4


# ---------------------------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """A bundled sample X-ray (`examples/`), offered by name: a client never names a path."""

    number: int
    path: Path

    @property
    def name(self) -> str:
        """The file name, which is what the demo's API takes."""
        return self.path.name

    @property
    def dataset_label(self) -> str:
        """NORMAL or PNEUMONIA: the Kermany file names start with NORMAL or personN_bacteria/virus."""
        return "NORMAL" if self.name.upper().startswith("NORMAL") else "PNEUMONIA"

    @property
    def label(self) -> str:
        """`Sample 1 (dataset label: NORMAL)`."""
        return f"Sample {self.number} (dataset label: {self.dataset_label})"


def samples() -> list[Sample]:
    """The bundled samples, numbered from 1 in file-name order."""
    return [Sample(i, path) for i, path in enumerate(example_files(), 1)]


def find_sample(name: str | None, offered: Sequence[Sample]) -> Sample:
    """The offered sample called `name` (`InvalidInputError` for anything else, paths included)."""
    for sample in offered:
        if name == sample.name:
            return sample
    if not name:
        raise InvalidInputError("Pick one of the sample X-rays.")
    raise InvalidInputError(f"Unknown sample '{name}'. Choose one of: {', '.join(s.name for s in offered)}.")


def thumbnails_html(offered: Sequence[Sample]) -> str:
    """A row of sample thumbnails, each a button that analyses its sample (`THUMBNAILS_JS` sends the click).

    They look clickable because they are: a `<button>` per sample (keyboard and screen readers included), named
    by `data-sample`, whose click reaches the server as a `click` event with `sample` = the sample's name.
    """
    from html import escape

    from xray.imaging.io import read_image, shrink

    cells = []
    for sample in offered:
        pixels = shrink(read_image(sample.path.read_bytes(), filename=sample.name).pixels, THUMBNAIL_SIDE)
        cells.append(
            f'<button type="button" class="xray-thumb" data-sample="{escape(sample.name)}" '
            f'title="Analyse {escape(sample.label)}"><img src="{image_data_uri(pixels, quality=80)}" '
            f'alt="{escape(sample.label)}"><span>{escape(sample.label)}</span></button>'
        )
    return f'<div class="xray-thumbs">{"".join(cells)}</div>'


#: For `gr.HTML(js_on_load=...)`: a thumbnail's click becomes the component's `click` event with the sample name.
THUMBNAILS_JS = (
    "element.querySelectorAll('button[data-sample]').forEach(b => b.addEventListener('click', () => "
    "trigger('click', {sample: b.dataset.sample})));"
)
#: For `gr.HTML(css_template=...)`: thumbnails as buttons (pointer, focus ring), captions under the images.
THUMBNAILS_CSS = """
.xray-thumbs {display: flex; gap: 8px; flex-wrap: wrap;}
.xray-thumb {margin: 0; padding: 4px; width: 118px; border: 1px solid #d4d4d8; border-radius: 6px; background: none;
  cursor: pointer; text-align: center; font-size: 0.75em; line-height: 1.2;}
.xray-thumb:hover, .xray-thumb:focus-visible {border-color: #2563eb; outline: 2px solid #93c5fd;}
.xray-thumb img {display: block; width: 100%; height: 90px; object-fit: cover; border-radius: 4px;}
.xray-thumb span {display: block; margin-top: 4px;}
"""


def clicked_sample(event: Any) -> str | None:
    """The sample name a thumbnail click sent (`gr.EventData` from `THUMBNAILS_JS`), or None."""
    data = getattr(event, "_data", None)
    name = data.get("sample") if isinstance(data, dict) else getattr(event, "sample", None)
    return name if isinstance(name, str) else None


# ---------------------------------------------------------------------------------------------- rate limit


class RateLimitedError(XrayError):
    """A client address made more analyses than the public demo allows per minute."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        """Keep how long the client has to wait."""
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimiter:
    """At most `limit` calls per client address in any `window_s` seconds (a sliding window; thread-safe).

    Only recent call times are kept, in memory: nothing about a client outlives its window.
    """

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Allow `limit` calls per `window_s` seconds; the clocks are replaceable for tests."""
        if limit < 1:
            raise ValueError(f"the demo rate must be at least 1 call per window, got {limit}")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, address: str) -> None:
        """Count one call from `address`, or refuse it.

        Raises:
            RateLimitedError: the address used up its calls; the message says in how many seconds, and at what
                time (UTC), the next one is allowed.
        """
        now = self._clock()
        with self._lock:
            self._forget_before(now - self.window_s)
            calls = self._calls.setdefault(address, deque())
            if len(calls) >= self.limit:
                wait = max(1, math.ceil(calls[0] + self.window_s - now))
                at = (self._wall_clock() + timedelta(seconds=wait)).strftime("%H:%M:%S")
                raise RateLimitedError(
                    f"The public demo takes {self.limit} analyses per minute from one address, and yours has had "
                    f"them. Try again in {wait} s (at {at} UTC).",
                    retry_after_s=wait,
                )
            calls.append(now)

    def _forget_before(self, cutoff: float) -> None:
        for address in list(self._calls):
            calls = self._calls[address]
            while calls and calls[0] <= cutoff:
                calls.popleft()
            if not calls:
                del self._calls[address]

    @property
    def clients(self) -> int:
        """How many addresses have calls in the current window (memory held)."""
        with self._lock:
            self._forget_before(self._clock() - self.window_s)
            return len(self._calls)


def client_address(host: str | None, forwarded_for: str | None, *, trust_forwarded: bool) -> str:
    """The caller's address: the socket peer, or the first X-Forwarded-For hop behind a proxy that sets it.

    Trust X-Forwarded-For only where a proxy sets it (a Hugging Face Space): anywhere else a client could pick a new
    address for every call and escape the rate limit (as `xray.records.auth.address_from_scope` does for sign-in).
    """
    if trust_forwarded and forwarded_for:
        first = forwarded_for.split(",")[0].strip()
        if first:
            return first[:100]
    return (host or "unknown")[:100]


class UploadRateLimit:
    """Pure ASGI middleware for the public app: at most `limiter`'s uploads per client address (HTTP 429 after).

    Gradio stores an upload before any handler sees it, so the analyses' limit alone would not stop a client
    from filling the disk with uploads it never analyses; this one counts the uploads themselves.
    """

    def __init__(
        self, app: Callable[..., Any], *, limiter: RateLimiter, trust_forwarded: bool = False, route: str = "/upload"
    ) -> None:
        """Wrap `app`; POSTs whose path ends with `route` are counted."""
        self.app = app
        self.limiter = limiter
        self.trust_forwarded = trust_forwarded
        self.route = route

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """Refuse an upload over the limit with 429, a Retry-After header and the message; pass the rest."""
        if scope.get("type") == "http" and scope.get("method") == "POST":
            if str(scope.get("path", "")).rstrip("/").endswith(self.route):
                from xray.records.auth import address_from_scope

                try:
                    self.limiter.hit(address_from_scope(scope, trust_forwarded=self.trust_forwarded))
                except RateLimitedError as exc:
                    body = json.dumps({"detail": str(exc).replace("analyses", "uploads")}).encode()
                    headers = [(b"content-type", b"application/json"), (b"retry-after", b"%d" % exc.retry_after_s)]
                    await send({"type": "http.response.start", "status": 429, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------- analysis


@dataclass
class DemoResult:
    """What the demo shows for one image: the model's answer, the input check, the caveat, the images."""

    model_name: str
    architecture: str
    version: str
    label: str
    probabilities: dict[str, float]
    summary: str
    in_scope: bool
    reasons: list[str] = field(default_factory=list)
    gate_note: str | None = None
    caveat: str | None = None
    heat_text: str = ""
    original: np.ndarray | None = None
    overlay: np.ndarray | None = None
    latency_ms: float = 0.0

    @property
    def gate_text(self) -> str:
        """The input check: the out-of-scope box with its reasons, or a one-line verdict."""
        if not self.in_scope:
            lines = ["### ⚠️ Out of scope: the prediction is not shown", ""]
            lines += [f"- {md_escape(reason)}" for reason in self.reasons]
            lines += ["", "The model was made for frontal chest X-rays; any result for this image would be unreliable."]
            if self.gate_note:
                lines += ["", f"ℹ️ {self.gate_note}"]
            return "\n".join(lines)
        text = "**Input check:** in scope (looks like a frontal chest X-ray to this model)."
        return text + (f"\n\nℹ️ {self.gate_note}" if self.gate_note else "")

    @property
    def caveat_text(self) -> str:
        """The model's caveat as shown with each of its predictions ("" without one)."""
        return "\n\n".join(f"⚠️ {warning}" for warning in caveat_warnings(self.caveat))

    @property
    def model_text(self) -> str:
        """`Model pneumonia · efficientnet_lite0 · version ab12cd · 312 ms · nothing was stored.`."""
        return (
            f"Model `{self.model_name}` · {self.architecture} · version `{self.version}` · "
            f"{self.latency_ms:.0f} ms · nothing was stored."
        )

    def images_html(self) -> str:
        """The image and (in scope only) its Grad-CAM overlay side by side, inline."""
        figures = []
        if self.original is not None:
            figures.append(("Image", self.original, "xray-demo-original"))
        if self.overlay is not None and self.in_scope:
            figures.append(("Grad-CAM heatmap (where the model looked; not where disease is)", self.overlay,
                            "xray-demo-heatmap"))  # fmt: skip
        cells = [
            f'<figure id="{elem_id}"><img src="{image_data_uri(pixels)}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
            for caption, pixels, elem_id in figures
        ]
        return f'<div class="xray-demo-images">{"".join(cells)}</div>'


def analyse_bytes(
    data: bytes,
    *,
    filename: str | None,
    model_name: str | None,
    allowed_models: Sequence[str],
    max_pixels: int,
    sample_population: str | None = None,
) -> DemoResult:
    """Decode the image, run the pipeline once (prediction, Grad-CAM, input gate, heat check), keep nothing.

    A model with one threshold per population decides with the DICOM PatientAge's population, else
    `sample_population` (a bundled sample's, whose source is known), else the adults' (most patients).

    Raises:
        XrayError subclasses with a message for the visitor.
    """
    from xray.analysis.pipeline import analyse

    image = load_image(data, filename=filename, max_pixels=max_pixels)
    loaded = load_registered_model(model_name, allowed_models)
    choice = choose_threshold(
        loaded, patient_age=image.metadata.get("PatientAge"), sample_population=sample_population
    )
    analysis = analyse(loaded, image, threshold=choice.threshold)
    explanation = analysis.explanation
    view = make_view(
        image, explanation.heatmap, target_label=explanation.target_label, method="gradcam", record_id=None
    )
    probabilities = {k: float(v) for k, v in analysis.probabilities.items()}
    check = analysis.heatmap_check
    result = DemoResult(
        model_name=loaded.name,
        architecture=loaded.architecture,
        version=str(loaded.version),
        label=analysis.label,
        probabilities=probabilities,
        summary=prediction_summary(
            analysis.label, probabilities, choice.threshold, loaded.positive_label, population=choice.population,
            why=choice.why or None,
        ),
        in_scope=analysis.in_scope,
        reasons=analysis.reasons,
        gate_note=analysis.gate_note,
        caveat=analysis.caveat,
        heat_text=heat_markdown(check.heat_in_lungs, check.heat_in_chest, check.note) if check is not None else "",
        original=view.pixels,
        overlay=view.overlay(DEMO_OPACITY),
        latency_ms=analysis.latency_ms,
    )
    # what answered, never what was sent: no file name, no pixels, no address
    logger.info("public demo: %s answered %s (%s) in %.0f ms", loaded.name, analysis.label,
                "in scope" if analysis.in_scope else "out of scope", analysis.latency_ms)  # fmt: skip
    return result


def analyse_sample(
    name: str | None,
    *,
    offered: Sequence[Sample],
    model_name: str | None,
    allowed_models: Sequence[str],
    max_pixels: int,
) -> DemoResult:
    """`analyse_bytes` on one of the bundled samples, read from `examples/` (nothing uploaded, nothing written)."""
    sample = find_sample(name, offered)
    return analyse_bytes(
        sample.path.read_bytes(),
        filename=sample.name,
        model_name=model_name,
        allowed_models=allowed_models,
        max_pixels=max_pixels,
        sample_population=SAMPLE_POPULATION,
    )


def read_demo_upload(source: str | Path | None, *, max_bytes: int) -> bytes:
    """The upload's bytes under the demo's own size limit (its message names XRAY_DEMO_MAX_UPLOAD_MB)."""
    if source and Path(source).is_file() and Path(source).stat().st_size > max_bytes:
        size = Path(source).stat().st_size
        raise InvalidInputError(
            f"The file is {size / 2**20:.1f} MiB; the public demo takes up to {max_bytes / 2**20:g} MiB "
            "(XRAY_DEMO_MAX_UPLOAD_MB)."
        )
    return read_upload(source, max_bytes=max_bytes)


def _inside(path: Path, root: Path) -> bool:
    return root in path.resolve().parents


def check_own_upload(source: str | Path | None, upload_root: str | Path) -> None:
    """Refuse a file that is not one of the demo's own uploads (a client can name any path in an API call).

    Gradio accepts any file in its upload folder, which the doctors' app shares; the demo reads only its own
    subfolder, so a visitor can never have the demo read, show or delete a doctor's upload.

    Raises:
        InvalidInputError: outside the demo's upload folder, or already deleted after its analysis.
    """
    if not source:
        return
    path, root = Path(source), Path(upload_root).resolve()
    if not _inside(path, root):
        raise InvalidInputError("Upload the image through this page's upload field.")
    if not path.is_file():
        raise InvalidInputError("Each upload is deleted once it has been read: upload the file again to analyse it.")


def discard_upload(source: str | Path | None, upload_root: str | Path) -> bool:
    """Delete an uploaded file's temporary copy (and its folder when that is left empty); True if one was deleted.

    Only files inside `upload_root` (the demo's own upload folder) are touched, whatever path a client sent.
    """
    if not source:
        return False
    root = Path(upload_root).resolve()
    path = Path(source).resolve()
    if not _inside(path, root) or not path.is_file():
        return False
    path.unlink(missing_ok=True)
    folder = path.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
        folder = folder.parent
    return True


def warm_up(
    model_name: str | None,
    allowed_models: Sequence[str],
    offered: Sequence[Sample],
    max_pixels: int,
    cache: SampleResults | None = None,
) -> None:
    """Load the model and run it once on a sample, so that the first visitor does not wait for either.

    With `cache`, the answer is kept there too, so the first visitor's first sample is free and immediate.
    """
    if not model_name or not offered:
        return
    started = time.perf_counter()
    try:
        result = analyse_sample(
            offered[0].name, offered=offered, model_name=model_name, allowed_models=allowed_models,
            max_pixels=max_pixels,
        )  # fmt: skip
    except XrayError as exc:
        logger.warning("public demo warm-up with %s failed: %s", model_name, exc)
        return
    if cache is not None:
        cache.put((offered[0].name, result.model_name, result.version), result_outputs(result))
    logger.info("public demo warmed up with %s in %.1f s", model_name, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------- handlers

#: The result area, in order: probabilities, summary, input check, caveat, images, heat check, model line.
DEMO_OUTPUTS = ("probabilities", "summary", "check", "caveat", "images", "heat", "info")


def rate_text(rate: int) -> str:
    """What the page says about the limit (so that it matches what is counted)."""
    return (
        f"Each address may run {rate} analyses per minute of its own uploads or of a sample not yet analysed "
        "with the chosen model; a sample already analysed with that model is shown at once and not counted."
    )


def result_outputs(result: DemoResult) -> tuple:
    """The result area for `result`; out of scope: the reasons, no prediction."""
    if not result.in_scope:
        return None, "", result.gate_text, result.caveat_text, result.images_html(), "", result.model_text
    return (
        label_value(result.label, result.probabilities), result.summary, result.gate_text, result.caveat_text,
        result.images_html(), result.heat_text, result.model_text,
    )  # fmt: skip


def cleared_outputs(message: str = "") -> tuple:
    """An empty result area with `message` where the summary goes (no earlier result left behind)."""
    return (None, message, "", "", "", "", "")


def limited_outputs(exc: RateLimitedError) -> tuple:
    """The rate limit as one message in the result area, which it clears (instead of a toast per click)."""
    return cleared_outputs(
        f"**Limit reached.** {exc} Samples already analysed with the chosen model are still "
        "shown at once."
    )


class SampleResults:
    """Each bundled sample's result per model and model version, computed once per process (thread-safe).

    The samples are fixed files and the answer depends only on the model, so a cached answer is the same answer;
    it costs nothing, which is why `show_sample` does not count it against the rate limit. At most
    samples x models entries, all of bundled images: nothing a visitor sent is kept.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._outputs: dict[tuple[str, str, str], tuple] = {}
        self._lock = threading.Lock()
        self._computing: dict[tuple[str, str, str], threading.Lock] = {}

    def computing(self, key: tuple[str, str, str]) -> threading.Lock:
        """The lock held while (sample, model, version) is analysed: a second request waits and gets it free."""
        with self._lock:
            return self._computing.setdefault(key, threading.Lock())

    def get(self, key: tuple[str, str, str]) -> tuple | None:
        """The outputs stored for (sample, model, version), or None."""
        with self._lock:
            return self._outputs.get(key)

    def put(self, key: tuple[str, str, str], outputs: tuple) -> None:
        """Keep the outputs for (sample, model, version)."""
        with self._lock:
            self._outputs[key] = outputs

    def __len__(self) -> int:
        """How many results are kept."""
        with self._lock:
            return len(self._outputs)


#: The process's sample results, shared by the public app's handlers and `warm_up` (empty until used).
SAMPLE_RESULTS = SampleResults()


def show_sample(
    name: str | None,
    *,
    offered: Sequence[Sample],
    model_name: str | None,
    allowed_models: Sequence[str],
    max_pixels: int,
    limiter: RateLimiter,
    address: str,
    cache: SampleResults,
) -> tuple:
    """The result area for a bundled sample: cached (free) when seen with this model, else analysed and counted.

    Raises:
        XrayError subclasses (unknown sample or model, unreadable model) with a message for the visitor; the rate
        limit is not raised but shown in the result area (`limited_outputs`).
    """
    sample = find_sample(name, offered)
    loaded = load_registered_model(model_name, allowed_models)
    key = (sample.name, loaded.name, str(loaded.version))
    outputs = cache.get(key)
    if outputs is not None:
        return outputs
    # one analysis per sample and model even when two requests arrive together (a double event): one is counted
    with cache.computing(key):
        outputs = cache.get(key)
        if outputs is not None:
            return outputs
        try:
            limiter.hit(address)
        except RateLimitedError as exc:
            return limited_outputs(exc)
        outputs = result_outputs(analyse_sample(
            sample.name, offered=offered, model_name=model_name, allowed_models=allowed_models, max_pixels=max_pixels,
        ))  # fmt: skip
        cache.put(key, outputs)
    return outputs


def show_upload(
    source: str | Path | None,
    *,
    upload_root: str | Path,
    max_bytes: int,
    model_name: str | None,
    allowed_models: Sequence[str],
    max_pixels: int,
    limiter: RateLimiter,
    address: str,
) -> tuple:
    """The result area for a visitor's upload (always counted); its temporary copy is deleted first."""
    check_own_upload(source, upload_root)
    try:
        data = read_demo_upload(source, max_bytes=max_bytes)
    finally:
        discard_upload(source, upload_root)
    try:
        limiter.hit(address)
    except RateLimitedError as exc:
        return limited_outputs(exc)
    return result_outputs(analyse_bytes(
        data, filename=Path(str(source)).name, model_name=model_name, allowed_models=allowed_models,
        max_pixels=max_pixels,
    ))  # fmt: skip


def model_changed(sample_name: str | None, model_name: str | None, **show: Any) -> tuple:
    """After the model is switched: the selected sample with the new model, else an empty result area.

    `show` takes `show_sample`'s keyword arguments. An upload is not rerun (its copy was deleted once read).
    """
    if sample_name:
        return show_sample(sample_name, model_name=model_name, **show)
    return cleared_outputs(
        f"Model changed to `{md_escape(model_name or '')}`: pick a sample or press Analyse to see its answer."
    )
