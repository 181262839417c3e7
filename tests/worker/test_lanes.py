"""Backlog lanes: a study queued during a burst is scored within a few studies, not after it.

The queue-length checks run against the real brokers (Redis and the embedded filesystem one);
the burst runs a real ``cxr-triage worker`` process on Redis and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from pydicom.uid import generate_uid
from sqlalchemy import select

from cxr_triage.settings import Settings
from governance.db import Store
from governance.models import Study
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from tests.conftest import REDIS_URL
from tests.services import Service
from tests.worker.conftest import INPUT_SIZE
from tests.worker.test_triage import add_image
from worker.celery_app import make_celery, queue_study
from worker.lanes import (
    backlog_queue,
    move_burst,
    move_to_backlog,
    should_move_to_backlog,
    waiting,
)


@pytest.fixture(params=["filesystem", "redis"])
def app(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Iterator[Celery]:
    settings = make_settings(broker_url=REDIS_URL if request.param == "redis" else "")
    celery = make_celery(settings)
    yield celery
    with celery.connection_for_write() as connection:
        for queue in (settings.queue, backlog_queue(settings.queue)):
            connection.default_channel.queue_purge(queue)
    celery.close()


def test_a_task_with_others_behind_it_in_the_new_lane_moves_to_the_backlog(app: Celery) -> None:
    queue = app.conf.task_default_queue
    backlog = backlog_queue(queue)
    assert waiting(app, queue) == 0
    assert not should_move_to_backlog(app, queue, queue)  # alone: scored where it is
    for _ in range(3):
        queue_study(app, generate_uid())
    assert waiting(app, queue) == 3
    assert should_move_to_backlog(app, queue, queue)
    assert not should_move_to_backlog(app, queue, backlog)  # the backlog is served in turn
    move_to_backlog(app, generate_uid(), queue)
    assert (waiting(app, queue), waiting(app, backlog)) == (3, 1)


def test_a_burst_moves_to_the_backlog_in_one_go_up_to_a_message_that_is_not_a_triage(
    app: Celery,
) -> None:
    queue = app.conf.task_default_queue
    backlog = backlog_queue(queue)
    for _ in range(3):
        queue_study(app, generate_uid())
    assert move_burst(app, queue) == 3
    assert (waiting(app, queue), waiting(app, backlog)) == (0, 3)
    # The filesystem broker orders messages by the millisecond they were written.
    queue_study(app, generate_uid())
    time.sleep(0.005)
    app.send_task("monitoring_tick", queue=queue)
    time.sleep(0.005)
    queue_study(app, generate_uid())
    assert move_burst(app, queue) == 1  # the tick is given back, not moved
    assert (waiting(app, queue), waiting(app, backlog)) == (2, 4)


def test_backlog_queue_name() -> None:
    assert backlog_queue("cxr-triage") == "cxr-triage-backlog"
    with pytest.raises(ValueError, match="queue"):
        backlog_queue("")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.worker
def test_a_study_queued_during_a_burst_is_not_scored_after_the_whole_burst(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_database_url: Callable[[str], str],
    model_file: Path,
    start_service: Callable[[str, Settings], Service],
) -> None:
    settings = make_settings(
        database_url=make_database_url("postgresql"),
        broker_url=REDIS_URL,
        device="cpu",
        precision="fp32",
        worker_studies=2,
    )
    store = Store.from_url(settings.database_url)

    def register(session):  # type: ignore[no-untyped-def]
        model = register_model(session, version="lanes", path=model_file, input_size=INPUT_SIZE)
        set_policy(session, model, operating_point="balanced", tau=0.5,
                   rationale="lanes test", approved_by="pytest")  # fmt: skip
        activate_model(session, "lanes", actor="pytest")

    store.run(register)
    burst: list[str] = [generate_uid() for _ in range(40)]
    for n, study_uid in enumerate(burst):
        add_image(store, tmp_path, study_uid, seed=n)
    app = make_celery(settings)
    try:
        for study_uid in burst:  # queued before the worker starts, like a PACS's backlog
            queue_study(app, study_uid)
        worker = start_service("worker", settings)
        wait(lambda: triaged(store, burst) >= 1, worker, "the first study of the burst")
        late = generate_uid()
        add_image(store, tmp_path, late, seed=99)
        queue_study(app, late)
        wait(lambda: triaged(store, [*burst, late]) == len(burst) + 1, worker, "the burst")
    finally:
        app.close()
    with store.read() as session:
        rows = session.execute(select(Study.study_instance_uid, Study.triaged_at)).all()
        done = {uid: at for uid, at in rows if at is not None}  # the wait above saw all triaged
    store.dispose()
    after_late = sum(done[uid] > done[late] for uid in burst)
    # Strictly in arrival order it would come last (0 after it); a few studies were being
    # scored or already taken when it arrived.
    assert after_late >= len(burst) // 2, f"only {after_late} of the burst were scored after it"
    print(f"\n{after_late} of the burst's {len(burst)} studies were scored after the late one")


def triaged(store: Store, uids: list[str]) -> int:
    with store.read() as session:
        rows = session.scalars(
            select(Study.triaged_at).where(Study.study_instance_uid.in_(uids))
        ).all()
    return sum(at is not None for at in rows)


def wait(done: Callable[[], bool], worker: Service, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited while waiting for {what}:\n{worker.text()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n{worker.text()[-3000:]}")


def test_the_embedded_broker_never_reads_a_message_still_being_written(
    make_settings: Callable[..., Settings],
) -> None:
    # The worker writes to the lanes it reads: kombu's own writer fills a file in place, and a
    # reader that took it empty stopped the worker on the JSON error.
    settings = make_settings(broker_url="")
    app = make_celery(settings)
    queue = settings.queue
    try:
        folder = Path(app.conf.broker_transport_options["data_folder_in"])
        (folder / f"1_{generate_uid()}.{queue}.msg.part").write_bytes(b"")  # mid-write
        assert waiting(app, queue) == 0
        with app.connection_for_write() as connection:
            assert connection.default_channel.basic_get(queue) is None
        queue_study(app, "1.2.3")
        assert not list(folder.glob("*.part"))[1:]  # ours left none behind
        with app.connection_for_write() as connection:
            message = connection.default_channel.basic_get(queue)
            assert message is not None and message.decode()[0] == ["1.2.3"]
            message.ack()
    finally:
        app.close()
