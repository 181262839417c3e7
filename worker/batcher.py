"""One forward pass for the images of several studies: a batcher shared by the task threads.

The worker runs a few studies at once (Celery's threads pool). Each study prepares its images
in the prefetch pool and hands its tensors to :meth:`Batcher.score`, which blocks until they
are scored. One scoring thread gathers what the studies handed in, up to ``batch_size``
images, and runs the model once for all of them:

- it runs at once when the batch is full, or when every study that is scoring right now is
  already waiting on it (nobody else can add an image, so waiting would only add latency: a
  lone study at idle never waits);
- otherwise it waits at most ``max_wait_s`` for the studies still preparing images.

Each study still records its own scores in its own transaction (worker.triage); the batcher
only shares the forward pass, so an error in it fails the studies of that batch alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: ``forward(model, images) -> logits``: images (N, 3, S, S) float32, logits (N,) float64.
Forward = Callable[[Any, np.ndarray], np.ndarray]


@dataclass
class _Request:
    model: Any
    images: np.ndarray
    future: Future[np.ndarray] = field(default_factory=Future)
    at: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What the batcher did: forward passes, images, and the largest batch (for benchmarks)."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    requests: int = 0  # hand-ins (one per study and batch of its images)

    def note(self, images: int, requests: int) -> None:
        self.batches += 1
        self.images += images
        self.largest = max(self.largest, images)
        self.requests += requests


class Batcher:
    """Gathers images handed in by concurrent studies into forward passes of one model.

    Parameters
    ----------
    forward
        Runs the model on a batch (worker.inference.predict_logits).
    batch_size
        Most images in one forward pass.
    max_wait_s
        Longest an image waits for others while some study is still preparing images.

    Raises
    ------
    ValueError
        ``batch_size`` is not positive or ``max_wait_s`` is negative.
    """

    def __init__(self, forward: Forward, *, batch_size: int = 8, max_wait_s: float = 0.02) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.forward = forward
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._active = 0  # studies inside session()
        self._waiting = 0  # of those, blocked in score()
        self._thread: threading.Thread | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        """Mark a study as scoring: while it prepares images, others may wait for it."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()  # one fewer study to wait for

    def score(self, model: Any, images: np.ndarray) -> np.ndarray:
        """Logits of ``images`` (N <= batch_size) by ``model``, scored with other studies'.

        Raises whatever the forward pass raised for the batch these images were in.
        """
        if images.ndim != 4 or not 0 < len(images) <= self.batch_size:
            raise ValueError(
                f"images must be a batch of 1 to {self.batch_size} images, got {images.shape}"
            )
        request = _Request(model, images)
        with self._cond:
            self._ensure_thread()
            self._queue.append(request)
            self._waiting += 1
            self._cond.notify_all()
        try:
            return request.future.result()
        finally:
            with self._cond:
                self._waiting -= 1

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="cxr-batcher", daemon=True)
            self._thread.start()

    def _ready(self, now: float) -> bool:
        """Whether the queued images should be scored now (called with the lock held)."""
        if not self._queue:
            return False
        same = [r for r in self._queue if r.model is self._queue[0].model]
        if sum(len(r.images) for r in same) >= self.batch_size:
            return True
        # Requests still blocked in score() but already taken are not in the queue, so count
        # the studies that could still hand something in.
        preparing = self._active - self._waiting
        return preparing <= 0 or now - self._queue[0].at >= self.max_wait_s

    def _take(self) -> list[_Request]:
        """The oldest request and those after it for the same model that fit in one batch."""
        first = self._queue[0]
        taken, room = [], self.batch_size
        for request in list(self._queue):
            if request.model is first.model and len(request.images) <= room:
                taken.append(request)
                room -= len(request.images)
                self._queue.remove(request)
        return taken

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ready(time.monotonic()):
                    timeout = None
                    if self._queue:
                        timeout = max(0.0, self._queue[0].at + self.max_wait_s - time.monotonic())
                    self._cond.wait(timeout)
                taken = self._take()
            self._forward(taken)

    def _forward(self, taken: list[_Request]) -> None:
        model = taken[0].model
        try:
            logits = self.forward(model, np.concatenate([r.images for r in taken]))
        except BaseException as exc:  # each study fails on its own; the thread lives on
            logger.warning("a batch of %d studies failed: %s", len(taken), type(exc).__name__)
            for request in taken:
                request.future.set_exception(exc)
            return
        self.stats.note(sum(len(r.images) for r in taken), len(taken))
        start = 0
        for request in taken:
            request.future.set_result(logits[start : start + len(request.images)])
            start += len(request.images)
