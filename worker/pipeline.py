"""Decode and preprocess ahead of the model: a bounded thread pool that overlaps the two.

Decoding (pydicom, OpenJPEG, imagecodecs), resizing (Pillow) and the model's forward pass
(PyTorch) all release the GIL for their heavy parts, so while the model scores one batch, pool
threads read, decode and preprocess the next images. :func:`prefetch` yields results in input
order and keeps at most ``depth`` items in flight, which bounds memory to ``depth`` decoded
images whatever the study size. ``workers=0`` runs everything inline in the caller's thread
(the same code path, without the overlap).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

DEFAULT_WORKERS = max(1, min(4, (os.cpu_count() or 1)))

_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def shared_pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per size in this process (threads started once, not per study)."""
    if workers <= 0:
        raise ValueError(f"workers must be positive, got {workers}")
    with _lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-prepare")
            _pools[workers] = pool
        return pool


def prefetch(
    fn: Callable[[In], Out], items: Iterable[In], *, workers: int = DEFAULT_WORKERS, depth: int = 16
) -> Iterator[Out]:
    """``fn(item)`` for each item, computed up to ``depth`` items ahead in a thread pool.

    Results come in input order; an exception from ``fn`` is raised when its item's turn
    comes. With ``workers=0`` each item is computed when it is asked for.

    Raises
    ------
    ValueError
        ``workers`` is negative or ``depth`` is not positive.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if depth <= 0:
        raise ValueError(f"depth must be positive, got {depth}")
    if workers == 0:
        for item in items:
            yield fn(item)
        return
    pool = shared_pool(workers)
    source = iter(items)
    in_flight: deque[Future[Out]] = deque()
    try:
        for item in source:
            in_flight.append(pool.submit(fn, item))
            if len(in_flight) >= depth:
                break
        while in_flight:
            done = in_flight.popleft()
            nxt = next(source, _END)
            if nxt is not _END:
                in_flight.append(pool.submit(fn, nxt))  # type: ignore[arg-type]
            yield done.result()
    finally:
        for future in in_flight:  # the consumer stopped early: drop what has not started
            future.cancel()


_END = object()
