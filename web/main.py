"""``cxr-triage web``: serve the worklist, study pages, JSON API, metrics and health."""

from __future__ import annotations

import argparse
import logging

from cxr_triage.settings import Settings, get_settings
from governance.audit.export import configure_export
from governance.db import Store
from governance.errors import ConfigError

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage web",
        description="Serve the radiologist worklist (/), study pages, the JSON API (/api/...), "
        "Prometheus metrics (/metrics), health (/healthz) and the OpenAPI document "
        "(/openapi.json), reading the store at CXR_DATABASE_URL. Binds CXR_WEB_HOST "
        "(default 127.0.0.1: this machine only) on CXR_WEB_PORT.",
    )
    parser.add_argument("--host", help="address to bind (default: CXR_WEB_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: CXR_WEB_PORT, 8000)")
    return parser


def check_store(store: Store) -> None:
    """Refuse to serve a store that is not at the schema revision this code needs.

    Raises
    ------
    SchemaOutOfDate
        The store was never migrated, or is at another revision.
    StoreUnavailable
        The store does not answer.
    """
    store.check_schema()


def serve(settings: Settings, host: str, port: int) -> None:
    """Check the store, then run the application with uvicorn until interrupted."""
    import uvicorn

    from web.app import create_app

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be in 1-65535, got {port}")
    store = Store.from_url(settings.database_url)
    try:
        check_store(store)
    except Exception:
        store.dispose()
        raise
    app = create_app(settings, store)
    if host not in {"127.0.0.1", "localhost", "::1"}:
        # Tokens and session cookies cross the network from here on: they need TLS in front.
        logger.warning(
            "web server bound to %s, reachable from other machines over plain HTTP: put a "
            "TLS-terminating proxy in front of it",
            host,
        )
    logger.info(
        "web server on http://%s:%d/ (store %s)",
        host,
        port,
        store.engine.url.render_as_string(hide_password=True),
    )
    try:
        # log_config=None: keep the logging that `cxr-triage` configured.
        uvicorn.run(app, host=host, port=port, log_config=None, proxy_headers=False)
    finally:
        store.dispose()


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    settings = get_settings()
    host = args.host or settings.web_host
    port = args.port if args.port is not None else settings.web_port
    configure_export(settings.syslog_url, audit_source_id=settings.ae_title)
    serve(settings, host, port)
    return 0
