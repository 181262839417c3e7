#!/usr/bin/env python3
"""Health checks for the cxr-triage containers (``healthcheck:`` in docker-compose.yml).

Both images install this file as ``cxr-healthcheck`` (in the venv's bin, on PATH); it reads the
same ``CXR_*`` settings as the service it checks, so it probes exactly the port and AE title that
service uses::

    cxr-healthcheck gateway          # A-ASSOCIATE + C-ECHO to our own DICOM gateway
    cxr-healthcheck web              # GET /healthz answers 200 (ok, or degraded: broker down)
    cxr-healthcheck worker           # a Celery worker on this host answers a ping

Exit status 0 means healthy, 1 not; one line on stdout says why. The gateway counts as healthy
when it answers the association request, accepted (then the C-ECHO must succeed) or rejected
because the calling AE title ``CXRHEALTH`` is not in ``CXR_ALLOWED_CALLING_AES``: both prove
the SCP is listening and speaking DICOM. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxr_triage.settings import Settings

HEALTH_AE_TITLE = "CXRHEALTH"
TIMEOUT_S = 5.0


def _local(host: str) -> str:
    """The address to probe for a service bound to ``host`` (a wildcard means this machine)."""
    return "127.0.0.1" if host in {"", "0.0.0.0", "::"} else host


def check_gateway(host: str, port: int, ae_title: str, timeout: float = TIMEOUT_S) -> str | None:
    """None when the gateway answers DICOM on ``host:port``; else why not."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the one line below says it
    ae = AE(ae_title=HEALTH_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if assoc.is_rejected:
        return None  # it answered: the allow-list is doing its job
    if not assoc.is_established:
        return f"no DICOM association with {ae_title}@{host}:{port}"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status is None or int(getattr(status, "Status", -1)) != 0x0000:
        return f"C-ECHO to {ae_title}@{host}:{port} did not succeed"
    return None


def check_web(host: str, port: int, timeout: float = TIMEOUT_S) -> str | None:
    """None when ``/healthz`` answers 200 (``ok`` or ``degraded``); else why not."""
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    if body.get("status") not in {"ok", "degraded"}:
        return f"{url} says {body.get('status')!r}"
    return None


def check_worker(settings: Settings, node: str | None, timeout: float = TIMEOUT_S) -> str | None:
    """None when the worker ``node`` (default: any on this host) answers a Celery ping."""
    from worker.celery_app import make_celery

    app = make_celery(settings)
    try:
        replies = app.control.ping(timeout=timeout)
    except Exception as exc:  # the broker itself is down: unhealthy, whatever the reason
        return f"broker did not answer: {type(exc).__name__}"
    names = {name for reply in replies for name in reply}
    if node is not None:
        wanted = node
        alive = node in names
    else:
        wanted = f"*@{socket.gethostname()}"
        alive = any(name.endswith(f"@{socket.gethostname()}") for name in names)
    return None if alive else f"no worker {wanted} answered a ping within {timeout:g} s"


def check_beat(settings: Settings, timeout: float = TIMEOUT_S) -> str | None:
    """None when the broker the beat publishes to answers and its schedule file exists."""
    from worker.celery_app import make_celery

    app = make_celery(settings)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # the broker is down: unhealthy, whatever the reason
        return f"broker did not answer: {type(exc).__name__}"
    if not any(settings.data_dir.glob("beat-schedule*")):
        return f"no beat schedule under {settings.data_dir} (is beat running?)"
    return None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-healthcheck",
        description="Check one cxr-triage service in this container, with its CXR_* settings. "
        "Exit 0: healthy; 1: not.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds (default 5)")
    sub = parser.add_subparsers(dest="service", required=True, metavar="SERVICE")
    sub.add_parser("gateway", parents=[common], help="C-ECHO to CXR_AE_TITLE on CXR_DICOM_PORT")
    sub.add_parser("web", parents=[common], help="GET /healthz on CXR_WEB_PORT")
    worker = sub.add_parser("worker", parents=[common], help="Celery ping on CXR_BROKER_URL")
    worker.add_argument("--node", help="worker node name (default: any worker on this host)")
    sub.add_parser(
        "beat", parents=[common], help="the broker answers and the beat schedule is kept"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from cxr_triage.settings import get_settings

    settings = get_settings()
    if args.service == "gateway":
        problem = check_gateway(
            _local(settings.dicom_host), settings.dicom_port, settings.ae_title, args.timeout
        )
    elif args.service == "web":
        problem = check_web(_local(settings.web_host), settings.web_port, args.timeout)
    elif args.service == "beat":
        problem = check_beat(settings, args.timeout)
    else:
        problem = check_worker(settings, args.node, args.timeout)
    print(f"{args.service}: {problem or 'healthy'}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
