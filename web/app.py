"""The FastAPI application: ``create_app(settings)`` wires the store, routes, metrics and errors.

Nothing here reads the environment: settings come in as an argument (``cxr-triage web`` reads
them once, at its entry point). A store that does not answer becomes a 503 with one clear
message, never a traceback or a driver's "database is locked".

Who may call what (``web.auth``): the JSON API needs a token, by role: radiologist (worklist,
studies, acknowledge, override, final read), admin (models, policies, tokens), auditor (audit
queries and verification); ``/api/me`` and ``/api/status`` any role. ``/healthz`` and
``/metrics`` stay open, because load balancers and Prometheus probe them without credentials;
they carry states, counts and model versions, never a UID or a patient attribute. The page
shells, ``/static``, ``/login`` and ``/openapi.json`` are open too: they hold no study data.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxr_triage import __version__
from cxr_triage.settings import Settings
from governance.db import Store
from governance.errors import NotFound, StoreUnavailable
from governance.web_sessions import SessionPolicy
from web import admin, api, audit_api, health, login, metrics, monitoring, pages
from web.auth import flush_refusals
from web.throttle import AuthThrottle, RefusalAudit

logger = logging.getLogger(__name__)

STORE_DOWN = "The triage store is not answering; the worklist cannot be shown. Try again shortly."

# The pages load nothing but their own files: no CDN, no inline script.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith("/api/") or path in {"/healthz", "/metrics", "/openapi.json"}:
        return False
    return "text/html" in request.headers.get("accept", "")


def _error(request: Request, status_code: int, message: str) -> Response:
    if _wants_html(request):
        return pages.error_page(status_code, message)
    return JSONResponse({"detail": message}, status_code=status_code)


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    """Build the web application.

    Parameters
    ----------
    settings
        The settings of this process (``CXR_*``), read once by the caller.
    store
        The store to read; None builds one from ``settings.database_url`` (disposed of when
        the application shuts down).

    Returns
    -------
    FastAPI
        The application: pages at ``/`` and ``/studies/{uid}``, the JSON API under ``/api``,
        ``/healthz``, ``/metrics`` and ``/openapi.json``.
    """
    if not isinstance(settings, Settings):
        raise TypeError(f"settings must be a Settings, got {type(settings).__name__}")
    owned = store is None
    the_store = Store.from_settings(settings) if store is None else store

    @asynccontextmanager
    async def lifespan(the_app: FastAPI) -> AsyncIterator[None]:
        yield
        flush_refusals(the_store, the_app.state.refusal_audit)
        if owned:
            the_store.dispose()

    app = FastAPI(
        title="cxr-triage",
        summary="Chest X-ray pneumonia triage beside a PACS: research software for assistive "
        "triage, not a diagnosis.",
        version=__version__,
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN, which the hospital network and
        # the page's CSP do not allow; the OpenAPI document itself is served.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.subgroup_min_studies = settings.subgroup_min_studies
    app.state.store = the_store
    app.state.broker_probe = health.BrokerProbe(settings)
    app.state.session_policy = SessionPolicy(
        idle=dt.timedelta(minutes=settings.web_session_idle_minutes),
        absolute=dt.timedelta(hours=settings.web_session_max_hours),
    )
    app.state.auth_throttle = AuthThrottle(settings.web_auth_limit)
    app.state.refusal_audit = RefusalAudit()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.StoreCollector(the_store))
    app.state.metrics_registry = registry
    app.add_middleware(SecurityHeaders)
    app.add_middleware(metrics.HTTPMetricsMiddleware, metrics=metrics.HTTPMetrics(registry))

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        response = _error(request, 503, STORE_DOWN)
        response.headers["retry-after"] = "5"
        return response

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error(request, 404, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"nothing at {request.url.path}"
        response = _error(request, exc.status_code, message)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "query")
        return JSONResponse(
            {"detail": f"bad parameter {where}: {first.get('msg', 'invalid')}"},
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(request, 500, "Internal error; it has been logged.")

    app.include_router(pages.router)
    app.include_router(login.router)
    app.include_router(api.router)
    app.include_router(admin.router)
    app.include_router(audit_api.router)
    app.include_router(monitoring.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    return app
