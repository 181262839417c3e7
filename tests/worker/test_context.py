"""The worker process's context: CXR_CPU_THREADS sets the forward pass's CPU threads."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from cxr_triage.settings import Settings
from governance.db import Store
from worker import tasks


def test_cpu_threads_sets_the_forward_pass_threads_and_zero_keeps_the_default(
    make_settings: Callable[..., Settings], store: Store
) -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        tasks.make_context(make_settings(cpu_threads=0), store)
        assert torch.get_num_threads() == before

        tasks.make_context(make_settings(cpu_threads=wanted), store)
        # The batcher's thread runs the forward pass: the setting holds there too.
        seen: list[int] = []
        batcher_like = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        batcher_like.start()
        batcher_like.join()
        assert torch.get_num_threads() == wanted and seen == [wanted]
    finally:
        torch.set_num_threads(before)
