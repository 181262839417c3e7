"""What route handlers share: the store of the application, retried reads from it, and the
HTTP answer to a refused change."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request
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


@contextmanager
def http_errors(
    *answers: tuple[type[Exception] | tuple[type[Exception], ...], int],
) -> Iterator[None]:
    """Answer an error raised in the block with its message and the status of the first
    ``(error classes, status)`` pair that names its class; any other error passes through.

    ``with http_errors((ValueError, 422), (TriageError, 409)): ...``
    """
    try:
        yield
    except Exception as exc:
        for errors, status in answers:
            if isinstance(exc, errors):
                raise HTTPException(status_code=status, detail=str(exc)) from None
        raise
