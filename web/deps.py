"""What route handlers share: the store of the application and retried reads from it."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from cxr_triage.settings import Settings
from governance.db import Store, is_transient
from governance.errors import StoreUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

READ_ATTEMPTS = 3


def read_store(store: Store, query: Callable[[Session], T], *, attempts: int = READ_ATTEMPTS) -> T:
    """Run ``query(session)`` in a read session, retrying a transient fault a few times.

    A page or an API call is better answered a little late than with an error: a PostgreSQL
    connection dropped by a restart, or a SQLite file busy past its timeout, is tried again
    with a short backoff before :class:`~governance.errors.StoreUnavailable` reaches the user.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    delay = 0.05
    for attempt in range(1, attempts + 1):
        try:
            with store.read() as session:
                return query(session)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if attempt == attempts or cause is None or not is_transient(cause):
                raise
            logger.warning("store read failed (attempt %d/%d): %s", attempt, attempts, exc)
            time.sleep(delay * (1 + random.random()))
            delay *= 2
    raise AssertionError("unreachable")


def get_store(request: Request) -> Store:
    """The application's store (a FastAPI dependency)."""
    store: Store = request.app.state.store
    return store


def get_settings(request: Request) -> Settings:
    """The settings the application was built with (a FastAPI dependency)."""
    settings: Settings = request.app.state.settings
    return settings


StoreDep = Annotated[Store, Depends(get_store)]
