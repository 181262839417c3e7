"""``GET /healthz``: is the store reachable and migrated, and does the broker answer.

The broker is checked with a short timeout and the answer is kept for a few seconds, so that a
load balancer probing every second neither waits on a dead broker nor opens a connection each
time. A broker that does not answer makes the service ``degraded`` (the worklist still works);
a store that does not answer makes it ``unavailable`` (503).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from cxr_triage.settings import Settings
from governance.checks import positive
from governance.db import Store
from governance.errors import StoreUnavailable
from governance.registry import active_model
from web.deps import read_store
from web.schemas import BrokerHealth, HealthOut

logger = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 2.0
BROKER_CACHE_S = 10.0

router = APIRouter(tags=["operations"])


class BrokerProbe:
    """Checks that the Celery broker accepts a connection, at most every ``cache_s`` seconds."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_s: float = BROKER_TIMEOUT_S,
        cache_s: float = BROKER_CACHE_S,
    ) -> None:
        self.settings = settings
        self.timeout_s = positive("timeout_s", timeout_s)
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._result: tuple[bool, str | None] = (False, "not checked yet")
        self._celery: Any = None

    def check(self) -> tuple[bool, str | None]:
        """``(reachable, detail)``; detail says why not (never a secret from the URL)."""
        with self._lock:
            if time.monotonic() - self._checked_at < self.cache_s:
                return self._result
            self._result = self._check_now()
            self._checked_at = time.monotonic()
            return self._result

    def _check_now(self) -> tuple[bool, str | None]:
        outcome: list[tuple[bool, str | None]] = []

        def connect() -> None:
            try:
                if self._celery is None:
                    from worker.celery_app import make_celery

                    self._celery = make_celery(self.settings)
                with self._celery.connection_for_write() as conn:
                    conn.ensure_connection(
                        max_retries=1, interval_start=0, interval_step=0, timeout=self.timeout_s
                    )
                outcome.append((True, None))
            except Exception as exc:  # any failure to connect means "not reachable"
                outcome.append(
                    (
                        False,
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                        if str(exc)
                        else type(exc).__name__,
                    )
                )

        # A daemon thread: a broker that hangs past its own timeouts cannot hold a request.
        thread = threading.Thread(target=connect, name="broker-probe", daemon=True)
        thread.start()
        thread.join(self.timeout_s + 0.5)
        if not outcome:
            return False, f"no answer within {self.timeout_s:g} s"
        if not outcome[0][0]:
            logger.warning("broker not reachable: %s", outcome[0][1])
        return outcome[0]


def _store_state(store: Store) -> tuple[bool, bool, str | None]:
    """``(reachable, schema_ok, active model version)``."""
    try:
        read_store(store, lambda session: session.execute(text("SELECT 1")).scalar_one())
    except StoreUnavailable as exc:
        logger.warning("health: %s", exc)
        return False, False, None
    try:
        schema_ok = store.has_table("studies")
        active = None
        if schema_ok:
            active = read_store(
                store, lambda session: getattr(active_model(session), "version", None)
            )
    except StoreUnavailable as exc:
        logger.warning("health: %s", exc)
        return False, False, None
    return True, schema_ok, active


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "The store does not answer."}},
    summary="Health: store reachable and migrated, broker reachable",
)
def healthz(request: Request) -> JSONResponse:
    store: Store = request.app.state.store
    probe: BrokerProbe = request.app.state.broker_probe
    reachable, schema_ok, active = _store_state(store)
    broker_ok, broker_detail = probe.check()
    status: Literal["ok", "degraded", "unavailable"]
    if not (reachable and schema_ok):
        status, code = "unavailable", 503
    elif not broker_ok:
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    body = HealthOut(
        status=status,
        store_reachable=reachable,
        schema_ok=schema_ok,
        broker=BrokerHealth(reachable=broker_ok, detail=broker_detail),
        active_model=active,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=code)
