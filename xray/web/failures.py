"""How a failed request is logged and told: a user's mistake in one warning line, a bug with its traceback.

A doctor who types a bad date or uploads a text file has made a mistake the message explains; the log needs one
line saying so, not a traceback that buries real faults. Anything else is a bug: logged with its traceback under a
short reference that the doctor's message repeats, so the two can be matched. Used by the app's event-handler
wrapper and by `quiet_preprocess`, which does the same for the UI framework's own input checks (file type, date
format) that run before any handler. Never imports the UI framework: the app passes its error class in.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xray.errors import XrayError

logger = logging.getLogger(__name__)

#: Longest message repeated in a log line (a message quoting a 2,000-character field must not flood the log).
MAX_LOGGED_CHARS = 300


@dataclass(frozen=True)
class Failure:
    """What to show for a failed request.

    Attributes:
        message: the text for the doctor (the error's own actionable text, or a reference to the log).
        user_error: True for a mistake in the input (logged as one line), False for a bug (logged with traceback).
        reference: the log reference of a bug, None for a user error.
    """

    message: str
    user_error: bool
    reference: str | None = None


def one_line(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """The text on one line, at most `limit` characters (the rest replaced by a count, so nothing is hidden)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else f"{flat[:limit]}... ({len(flat) - limit} more characters)"


def _message(exc: BaseException) -> str:
    # Gradio's Error keeps its text in `message` (its str() is the repr, in quotes)
    text = getattr(exc, "message", None)
    return text if isinstance(text, str) else str(exc)


def handle_failure(exc: BaseException, *, where: str, user_errors: tuple[type[BaseException], ...] = ()) -> Failure:
    """Log an exception raised while serving a request and say what to show.

    Args:
        exc: the exception.
        where: the handler's name, for the log.
        user_errors: other exception classes that are the user's mistake (e.g. the UI framework's own
            validation error); `XrayError` always is.
    """
    if isinstance(exc, (XrayError, *user_errors)):
        text = _message(exc)
        logger.warning("%s: refused input (%s): %s", where, type(exc).__name__, one_line(text))
        return Failure(message=text, user_error=True)
    reference = uuid.uuid4().hex[:8]
    logger.error("unexpected error in %s (reference %s)", where, reference, exc_info=exc)
    return Failure(
        message=(
            f"Something went wrong on the server (reference {reference}); it has been logged. "
            "Try again, or tell the administrator the reference."
        ),
        user_error=False,
        reference=reference,
    )


def quiet_preprocess(component: Any, error: Callable[[str], BaseException], *, field: str | None = None) -> Any:
    """Make a UI component's own input check fail like a handler's: a clear message and one log line.

    The framework checks some inputs before any handler runs (an upload's file type, a date field's format) and
    prints a full traceback for each refusal. This wraps `component.preprocess` so that such a refusal is logged
    by `handle_failure` as one warning line and raised again as `error(message)`, whose class the caller makes
    quiet (with Gradio: `lambda m: gr.Error(m, print_exception=False)`).

    Args:
        component: the component (anything with a `preprocess(payload)` method).
        error: builds the exception to raise from the message.
        field: the field's name in the message (default: the component's label).

    Returns:
        The component, for chaining.
    """
    original = component.preprocess
    name = field or getattr(component, "label", None) or type(component).__name__

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except Exception as exc:  # noqa: BLE001 - told as a message either way; only the log line differs
            told = getattr(exc, "print_exception", None) is not None  # the framework's own message for the user
            if told or isinstance(exc, ValueError):
                handle_failure(exc, where=f"{name} input", user_errors=(type(exc),))
                raise error(_message(exc) if told else f"{name} could not be read ({exc}).") from None
            raise error(handle_failure(exc, where=f"{name} input").message) from None

    component.preprocess = preprocess
    return component
