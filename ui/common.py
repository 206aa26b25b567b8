"""What every surface shares: the contexts handlers take, turning errors into messages, titles, notice and CSS.

`ModelsContext` (settings and the registered models) is what the doctors' and the public app share; `AppContext`
adds the database and the image store, `PublicContext` the demo's samples and rate limit. `friendly` turns an
`XrayError` into its message and anything else into a short message with a log reference (never a stack trace).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import gradio as gr
from sqlalchemy import Engine
from sqlmodel import Session

from xray import config
from xray.config import Settings, get_settings
from xray.imaging.io import IMAGE_EXTENSIONS
from xray.records.db import Doctor
from xray.records.storage import ImageStore
from xray.web import demo, failures, models_page, registry, startup, views
from xray.web.registry import ModelInfo
from xray.web.views import HeatmapView

logger = logging.getLogger("xray.app")


def decision_label(**kwargs: Any) -> gr.Label:
    """A `gr.Label` headed by the model's decision (`views.label_value`), not by the most probable class.

    gr.Label always heads with the likeliest class; with a per-population threshold the decision can differ, and a
    headline that contradicts the sentence under it misleads. This instance's postprocess keeps the `label` of a
    `{"label": decision, "confidences": [...]}` value. (A gr.Label subclass would do the same, but gradio writes a
    .pyi file next to the module of every component class it sees defined.)
    """
    from gradio.components.label import LabelConfidence, LabelData

    component = gr.Label(**kwargs)
    plain = component.postprocess

    def postprocess(value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("confidences"), list) and value.get("label"):
            confidences = [LabelConfidence(label=c["label"], confidence=c["confidence"]) for c in value["confidences"]]
            return LabelData(label=str(value["label"]), confidences=confidences[: component.num_top_classes])
        return plain(value)

    component.postprocess = postprocess  # type: ignore[method-assign]
    return component


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


def on_space() -> bool:
    """Whether the app runs on a Hugging Face Space."""
    # The test Gradio itself uses (gradio.utils.get_space) to tell a Hugging Face Space.
    return config.on_space()


def oauth_enabled() -> bool:
    """Whether "Sign in with Hugging Face" is offered (read at each call, so tests can switch it)."""
    # A Space with `hf_oauth: true` in its README metadata gets OAUTH_CLIENT_ID and friends.
    return on_space() and bool(os.environ.get("OAUTH_CLIENT_ID"))


def doctor_path(settings: Settings) -> str:
    """The doctors' app's URL prefix: `/doctor` while the public demo is served at `/`, else `` (the root)."""
    return DOCTOR_PATH if settings.public_demo_enabled else ""


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show `XrayError` messages as they are; user errors are one log line, bugs get a traceback and a reference."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(failures.handle_failure(exc, where=fn.__name__).message, print_exception=False) from None

    return wrapper


def quiet_error(message: str) -> gr.Error:
    """The error a component's own input check raises: shown to the doctor, no traceback in the log."""
    return gr.Error(message, print_exception=False)


def quiet(component: Any) -> Any:
    """`component` with its own input check (file type, date format) failing as one message and one log line."""
    return failures.quiet_preprocess(component, quiet_error)


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
        """(shown, name) pairs for a model dropdown: the name (figures per population go in `model_info`)."""
        return [(n if not self.infos[n].error else f"{n} (unavailable)", n) for n in self.models]

    @property
    def model_info(self) -> str:
        """The help line under a model dropdown: each model's test AUC per population (children, adults)."""
        return models_page.selector_info(self.models)

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
        return friendly(bound)


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
            getattr(client, "host", None), headers.get("x-forwarded-for"), trust_forwarded=on_space()
        )


def offered_models(settings: Settings, model_names: list[str] | None) -> tuple[list[str], dict[str, ModelInfo]]:
    """The models offered (`model_names`, or the registered ones) and what each says about itself."""
    models = list(model_names) if model_names is not None else registry.registered_models(settings)
    if not models:
        logger.warning(
            "No model is installed in %s and XRAY_EXTRA_MODELS is empty; the app will say so.", settings.models_dir
        )
    return models, {name: registry.describe_model(name) for name in models}


def app_context(settings: Settings | None, engine: Engine | None, model_names: list[str] | None) -> AppContext:
    """The doctors' app's context: settings, models, the database (opened when not given) and the image store."""
    settings = settings or get_settings()
    engine = engine or startup.open_database(settings)
    models, infos = offered_models(settings, model_names)
    return AppContext(
        settings=settings, models=models, infos=infos, engine=engine, store=startup.image_store(settings)
    )


#: What a record panel's button says when no record is open (instead of an error badge on every pane).
OPEN_RECORD_FIRST = "Open a record first: click a row in the list, or type its record ID and press Open record."


def needs_record(fn: Callable[..., Any], *, outputs: int, warn: bool = True) -> Callable[..., Any]:
    """`fn` for a record panel's button that does nothing but warn while no record is open.

    Without a record ID (empty, or the 0 an empty number field sends) it changes none of its `outputs` and says
    `OPEN_RECORD_FIRST` as a warning (unless `warn` is False). The record ID is `fn`'s first argument after the
    context, if it has one (`ctx.handler` binds the context).
    """
    takes_context = next(iter(inspect.signature(fn).parameters), "") == "ctx"

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        record_id = args[1 if takes_context else 0] if len(args) > (1 if takes_context else 0) else None
        if record_id is None or record_id == 0 or (isinstance(record_id, str) and not record_id.strip()):
            if warn:
                gr.Warning(OPEN_RECORD_FIRST)
            return gr.skip() if outputs == 1 else tuple(gr.skip() for _ in range(outputs))
        return fn(*args, **kwargs)

    return guarded


def change_opacity(view: HeatmapView | None, alpha: float) -> Any:
    """The overlay redrawn at another opacity (no model call)."""
    return view.overlay(alpha) if view is not None else None


def today() -> str:
    """Today's date for the exam date field (evaluated when the page loads, not when the app starts)."""
    return date.today().isoformat()


# Gradio names the page-load event of a callable value after the function: keep the name app.py gave it.
today.__name__ = today.__qualname__ = "_today"
