"""prefetch: in order, bounded, errors at their item's turn, inline with workers=0."""

from __future__ import annotations

import threading

import pytest

from worker.pipeline import prefetch


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_input_order(workers: int) -> None:
    assert list(prefetch(lambda x: x * x, range(50), workers=workers, depth=4)) == [
        x * x for x in range(50)
    ]


def test_at_most_depth_items_are_taken_ahead_of_the_consumer() -> None:
    taken: list[int] = []
    lock = threading.Lock()

    def source():  # type: ignore[no-untyped-def]
        for i in range(100):
            with lock:
                taken.append(i)
            yield i

    consumed = 0
    for _ in prefetch(lambda x: x, source(), workers=2, depth=5):
        consumed += 1
        with lock:
            assert len(taken) <= consumed + 5
    assert consumed == 100


def test_an_error_is_raised_at_its_items_turn() -> None:
    def fn(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    got: list[int] = []
    with pytest.raises(ValueError, match="three"):
        for value in prefetch(fn, range(10), workers=2, depth=4):
            got.append(value)
    assert got == [0, 1, 2]


def test_prepares_in_other_threads_when_workers_are_given() -> None:
    main = threading.get_ident()
    threads = set(prefetch(lambda _: threading.get_ident(), range(8), workers=2, depth=4))
    assert main not in threads
    inline = set(prefetch(lambda _: threading.get_ident(), range(8), workers=0, depth=4))
    assert inline == {main}


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        list(prefetch(lambda x: x, [1], workers=-1))
    with pytest.raises(ValueError):
        list(prefetch(lambda x: x, [1], depth=0))
