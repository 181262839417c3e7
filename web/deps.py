"""What route handlers share: the store of the application and retried reads from it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from cxr_triage.settings import Settings
from governance.db import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

READ_ATTEMPTS = 3


def read_store(store: Store, query: Callable[[Session], T], *, attempts: int = READ_ATTEMPTS) -> T:
    """Run ``query(session)`` in a read session, retrying a transient fault a few times.

    A page or an API call is better answered a little late than with an error: a PostgreSQL
    connection dropped by a restart, or a SQLite file busy past its timeout, is tried again
    with a short backoff (:meth:`Store.query`) before
    :class:`~governance.errors.StoreUnavailable` reaches the user.
    """
    return store.query(query, attempts=attempts)


def get_store(request: Request) -> Store:
    """The application's store (a FastAPI dependency)."""
    store: Store = request.app.state.store
    return store


def get_settings(request: Request) -> Settings:
    """The settings the application was built with (a FastAPI dependency)."""
    settings: Settings = request.app.state.settings
    return settings


StoreDep = Annotated[Store, Depends(get_store)]
