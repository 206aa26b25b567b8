"""The web server: mounts the doctors' and the public app on one FastAPI app, with their options, and serves it.

The doctors' app's options (`doctor_app_options`) are the one place for its sign-in (passwords checked against the
database, sessions kept in the database by `sessions_in_database`), /logout, the Hugging Face sign-in route on a
Space, middleware and limits. `public_app_options` gives the public app its limits and refuses file downloads.
"""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from ui import common
from ui.common import CSS, doctor_path, on_space
from ui.doctors import build_demo
from ui.public import build_public, public_upload_root
from xray.config import Settings, get_settings
from xray.records import auth
from xray.web import demo, registry, startup

logger = logging.getLogger("xray.app")

#: After SIGTERM, how long the server waits for the events still running (a record being saved) to finish; each
#: runs in a worker thread that would die with the process.
SHUTDOWN_EVENTS_S = 60.0
#: Then how long open connections may finish their response before they are closed. Gradio's session streams (one
#: per browser tab or `gradio_client`) never finish by themselves: without this limit a connected client kept the
#: server up until SIGKILL.
SHUTDOWN_CONNECTIONS_S = 2.0


def _logout(request: Request) -> Response:
    """Forget this browser's sign-in (password cookie and, on a Space, the Hugging Face session)."""
    app = request.app
    response = RedirectResponse(url="./", status_code=302)
    cookie_id = getattr(app, "cookie_id", "")
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        token = request.cookies.get(name)
        if token:
            getattr(app, "tokens", {}).pop(token, None)
        response.delete_cookie(key=name, path="/")
    if "session" in request.scope:
        request.session.pop("oauth_info", None)
    return response


class SignInPageTitle:
    """Gives Gradio's sign-in page the app's title in the browser tab (ASGI middleware of the doctors' app).

    Gradio renders its sign-in page from a config without the app's title, so the tab had none (the app's pages
    get theirs from `gr.Blocks(title=...)`). This adds a `<title>` to that page only: a page whose config says
    `"auth_required":true`, before Gradio's compression (which sits outside this middleware).
    """

    MARK = b'"auth_required":true'

    def __init__(self, app: Any, title: str) -> None:
        self.app = app
        self.title = f"<title>{html.escape(title)}</title>".encode()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        """Pass the request on; hold back an HTML page until it is complete and title it if it is the sign-in."""
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        body: list[bytes] = []

        async def send_titled(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if content_type.startswith(b"text/html"):
                    start = message  # held back until the whole page is here
                    return
            elif start is not None and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                page = b"".join(body)
                if self.MARK in page and b"<title>" not in page:
                    page = page.replace(b"<head>", b"<head>" + self.title, 1)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
                message = {"type": "http.response.body", "body": page, "more_body": False}
            await send(message)

        await self.app(scope, receive, send_titled)


def _hub_signin(engine: Engine) -> Callable[[Request], Response]:
    """After "Sign in with Hugging Face": map the hub user to a doctor account and start a normal session."""

    def handler(request: Request) -> Response:
        info = request.session.get("oauth_info") if "session" in request.scope else None
        hub_user = ((info or {}).get("userinfo") or {}).get("preferred_username")
        with Session(engine) as session:
            doctor = auth.doctor_for_hub_user(session, hub_user)
        if doctor is None:
            logger.warning("hub sign-in refused: %r has no enabled doctor account", hub_user)
            shown = html.escape(str(hub_user or "unknown"))
            return HTMLResponse(
                f"<p>The Hugging Face account <b>{shown}</b> is not linked to an enabled doctor "
                "account. Ask the administrator to run <code>python -m xray users add NAME --hf-username "
                "HUB_NAME</code>.</p><p><a href='./'>Back</a></p>",
                status_code=403,
            )
        app = request.app
        token = secrets.token_urlsafe(16)
        app.tokens[token] = doctor.username
        # ../ is the doctors' app from <app>/xray/hub-signin, at / or at /doctor/ alike
        response = RedirectResponse(url="../", status_code=302)
        # The same cookies Gradio's own /login sets, so gr.Request.username is the doctor's name.
        response.set_cookie(f"access-token-{app.cookie_id}", token, httponly=True, samesite="none", secure=True)
        response.set_cookie(f"access-token-unsecure-{app.cookie_id}", token, httponly=True)
        logger.info("hub sign-in: %s as %s", hub_user, doctor.username)
        return response

    return handler


def doctor_app_options(settings: Settings, engine: Engine) -> dict[str, Any]:
    """Keyword arguments for `gr.mount_gradio_app` of the doctors' app: the one place they are built.

    Database-backed sign-in (every route of the doctors' app refuses a caller without a session), the sign-in
    page's message, /logout, the Hugging Face sign-in route on a Space, the client-address middleware for sign-in
    throttling, the upload limit and the data folder kept out of file downloads.
    """
    check = auth.make_password_checker(engine)

    async def password_check(username: str, password: str) -> bool:
        # Argon2 is deliberately slow: keep it off the event loop (the context carries the client address).
        return await asyncio.to_thread(check, username, password)

    prefix = doctor_path(settings)
    message = (
        f'<strong style="font-size: 1.2em">{html.escape(common.TITLE)}</strong><br>'
        "Sign in with your doctor account. Accounts are created by the administrator "
        "(<code>python -m xray users add NAME</code>). Repeated failed attempts are paused for 15 minutes."
    )
    routes = [Route("/logout", _logout, methods=["GET"])]
    # The sign-in page has none of the app's CSS: its links are styled here, else they look like plain text.
    link = 'style="color: #2563eb; text-decoration: underline"'
    if common.oauth_enabled():
        message += (
            f' Or <a {link} href="{prefix}/login/huggingface?_target_url={prefix}/xray/hub-signin">sign in with '
            "Hugging Face</a>."
        )
        routes.append(Route("/xray/hub-signin", _hub_signin(engine), methods=["GET"]))
    if settings.public_demo_enabled:
        message += f' No account? The <a {link} href="/">public demo</a> needs none.'
    return {
        "auth": password_check,
        "auth_message": message,
        "max_file_size": int(settings.max_upload_mb * 2**20),
        "server_name": settings.host,
        "server_port": settings.port,
        "blocked_paths": [str(settings.data_dir.resolve())],
        "app_kwargs": {
            # Routes given here are matched before Gradio's own, so /logout clears both kinds of session.
            "routes": routes,
            "middleware": [
                Middleware(auth.ClientAddressMiddleware, trust_forwarded=on_space()),
                Middleware(SignInPageTitle, title=f"Sign in: {common.TITLE}"),
            ],
            "lifespan": sessions_in_database(settings, engine),
        },
        "footer_links": ["api", "settings"],
        "css": CSS,
        "theme": gr.themes.Soft(),
        "show_error": False,
        "ssr_mode": False,
    }


def sessions_in_database(settings: Settings, engine: Engine) -> Callable[[Any], Any]:
    """A lifespan for the doctors' app that keeps its sign-ins in the database instead of process memory.

    Gradio keeps sign-in tokens in `app.tokens` (a dict) under a cookie named with a random id per process, so a
    restart signs every doctor out and a second replica knows nobody. At start-up, before the first request, the
    tokens become `xray.records.auth.DatabaseTokens` (hashed, expiring, revoked at log-out) and the cookie name one
    derived from the database URL: every process on one database accepts the same cookie.
    """
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        app.tokens = auth.DatabaseTokens(engine, hours=settings.session_hours)
        app.cookie_id = auth.session_cookie_id(settings.resolved_database_url)
        yield

    return lifespan


def _no_files(request: Request) -> Response:
    """The public app's file route: it sends every image inline, so it serves no file at all."""
    return PlainTextResponse("The public demo serves no files.", status_code=403)


def public_app_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `gr.mount_gradio_app` of the public app: its upload limits, no file downloads.

    Gradio's file route would serve anything in Gradio's shared temporary folders (where the doctors' app also
    keeps its heatmaps, reports and exports); the public app sends its images inline and refuses that route.
    """
    trust = on_space()
    return {
        "max_file_size": int(settings.demo_max_upload_mb * 2**20),
        "server_name": settings.host,
        "server_port": settings.port,
        "blocked_paths": [str(settings.data_dir.resolve())],
        "app_kwargs": {
            "routes": [Route("/gradio_api/file={path:path}", _no_files, methods=["GET", "HEAD"])],
            "middleware": [
                Middleware(demo.UploadRateLimit, limiter=demo.RateLimiter(settings.demo_rate), trust_forwarded=trust)
            ],
        },
        "footer_links": ["api", "settings"],
        "css": CSS,
        "theme": gr.themes.Soft(),
        "show_error": False,
        "ssr_mode": False,
    }


def _mounted(server: FastAPI, path: str) -> Any:
    """The Gradio app `gr.mount_gradio_app` mounted at `path` ("" for the root)."""
    for route in server.router.routes:
        if isinstance(route, Mount) and route.path == path.rstrip("/"):
            return route.app
    raise LookupError(f"nothing is mounted at {path!r}")


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    model_names: list[str] | None = None,
    warm_up: bool = True,
) -> FastAPI:
    """The web server: the doctors' app alone at `/`, or with the public demo on, the public app there too.

    With the public demo on, the public app is at `/` and the doctors' app at `/doctor/`. Both are Gradio apps
    mounted with `gr.mount_gradio_app`, each with its own queue, upload folder and sign-in rule.

    Args:
        settings: application settings (default: from the environment).
        engine: database engine with tables created (default: `startup.open_database(settings)`).
        model_names: the models offered (default: bundled models plus XRAY_EXTRA_MODELS).
        warm_up: with the public demo on, run the default model once on a sample before serving.
    """
    settings = settings or get_settings()
    engine = engine or startup.open_database(settings)
    models = list(model_names) if model_names is not None else registry.registered_models(settings)
    doctors = build_demo(settings, engine=engine, model_names=models)
    doctors.queue(default_concurrency_limit=8)
    server = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    prefix = doctor_path(settings)
    if not prefix:
        return gr.mount_gradio_app(server, doctors, "/", **doctor_app_options(settings, engine))

    def to_doctors(request: Request) -> Response:
        return RedirectResponse(url=f"{prefix}/", status_code=307)

    server.add_route(prefix, to_doctors, methods=["GET", "HEAD"])
    gr.mount_gradio_app(server, doctors, prefix, **doctor_app_options(settings, engine))
    if common.oauth_enabled():
        # A Space sends every Hugging Face sign-in back to /login/callback at its root (gradio.oauth): pass it to
        # the doctors' app, whose session it belongs to. Matched before the public app's mount below.
        server.add_route("/login/callback", _mounted(server, prefix), methods=["GET"])
    public = build_public(settings, model_names=models)
    public.queue(default_concurrency_limit=2)
    gr.mount_gradio_app(server, public, "/", **public_app_options(settings))
    _mounted(server, "").uploaded_file_dir = public_upload_root()
    if warm_up:
        demo.warm_up(
            models[0] if models else None, models, demo.samples(), settings.max_image_pixels, demo.SAMPLE_RESULTS
        )
    return server


def gradio_apps(server: FastAPI) -> list[Any]:
    """The Gradio apps mounted on `server` (the doctors' app, and the public app when the demo is on)."""
    mounts = [route for route in server.router.routes if isinstance(route, Mount)]
    return [mount.app for mount in mounts if hasattr(mount.app, "stop_event")]


class GracefulServer(uvicorn.Server):
    """uvicorn's server that stops within seconds of SIGTERM, whoever is connected, without cutting a save short.

    Gradio's own `launch` ends its session streams when it closes; a server built with `gr.mount_gradio_app`
    has to do it itself. On shutdown this server stops listening, waits up to `SHUTDOWN_EVENTS_S` for the events
    still running in Gradio's queues (their results still reach the clients), ends the session streams (each
    mounted app's `stop_event`) and then gives open connections `SHUTDOWN_CONNECTIONS_S` to finish. uvicorn
    re-raises SIGTERM as soon as `shutdown` returns, which would kill a worker thread in the middle of a save.
    """

    def __init__(self, config: uvicorn.Config, server: FastAPI) -> None:
        super().__init__(config)
        self.apps = gradio_apps(server)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        """Stop listening, let running events finish, end the session streams, then close the connections."""
        for listener in self.servers:
            listener.close()
        # Before the session streams end: Gradio drops the results of a session whose stream has ended.
        await self.running_events_done(SHUTDOWN_EVENTS_S)
        for app in self.apps:
            app.stop_event.set()
        await super().shutdown(sockets)

    async def running_events_done(self, limit_s: float) -> bool:
        """Wait until no event runs in any mounted app's queue (at most `limit_s`); False when some still run."""
        deadline = time.monotonic() + limit_s
        logged = False
        while True:
            running = sum(job is not None for app in self.apps for job in app.get_blocks()._queue.active_jobs)
            if not running:
                return True
            if time.monotonic() >= deadline:
                logger.error("shutdown: %d event(s) still running after %.0f s; stopping anyway", running, limit_s)
                return False
            if not logged:
                logger.info("shutdown: waiting for %d running event(s) to finish", running)
                logged = True
            await asyncio.sleep(0.05)


def serve(server: FastAPI, settings: Settings) -> None:
    """Serve `server` on the settings' host and port until SIGTERM or Ctrl-C (see `GracefulServer`)."""
    config = uvicorn.Config(
        server,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_CONNECTIONS_S,
    )
    GracefulServer(config, server).run()
