"""The soak under faults: N studies through worker kills, a Redis restart and a PostgreSQL
outage, counted in and out. One runner for ``benchmarks/fault_soak.py`` (1,000 studies) and
``tests/faults/test_soak.py`` (the short one the test suite runs).

N synthetic one-image studies are pushed from ``senders`` concurrent associations (dcmtk's
storescu, ``per_association`` studies each; what is refused is sent again after 2 s, as a
PACS does) to a real ``cxr-triage gateway``, triaged by real ``cxr-triage worker`` processes
(``workers`` of them, kept running as a restart policy would: one that exits by itself, e.g.
started while PostgreSQL is down, is started again after a doubling back-off up to 30 s) and
served by a real ``cxr-triage web``. Meanwhile, from one scheduling thread:

- **worker kills** (SIGKILL). A kill waits for the workers, so that it never outruns their
  start on a slow or loaded machine: the victim is the oldest worker that is ready and has
  finished a triage since it started, and the clock of ``kill_every`` seconds starts only once
  every worker is ready (after a kill: once its replacement is). Kills go on until every
  acknowledged study is triaged, or ``kills`` of them have been done;
- **PostgreSQL** (our own cluster) stopped for ``pg_outage`` seconds once ``pg_at`` of the
  studies are acknowledged;
- **Redis** (our own server, append-only file) killed and started again once ``redis_at`` of
  them are acknowledged.

Every ``progress_every`` seconds it prints studies acknowledged and triaged so far; at the end,
studies sent, acknowledged, stored, triaged exactly once, duplicates, lost, stuck, and p50/p95
time from a study's last C-STORE Success to its complete triage (:func:`report`). Waiting
stops as soon as every acknowledged study is triaged and every fault is over, or once nothing
new has been acknowledged or triaged for ``settle_timeout`` seconds. Each worker gets
cpu_count / workers torch threads. The machine's shared Redis and PostgreSQL are never
touched.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from cxr_triage.settings import Settings
from governance.db import Store
from governance.models import Study
from tests.faults.harness import (
    TERMINAL,
    Counts,
    PgCluster,
    RedisServer,
    activate_model_file,
    free_port,
    wait_settled,
)
from tests.faults.soak_parts import Pacs, Proc, Services

Say = Callable[[str], None]
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


@dataclass(frozen=True)
class SoakPlan:
    """How many studies, how they are sent, and when the faults come."""

    studies: int = 1000
    senders: int = 4
    per_association: int = 10
    workers: int = 2
    kill_every: float = 20.0  # seconds from every worker ready to the next kill
    kills: int | None = None  # at most this many (None: until everything is triaged)
    pg_at: float = 0.25  # fraction of the studies acknowledged when PostgreSQL stops
    pg_outage: float = 30.0
    redis_at: float = 0.5  # fraction acknowledged when Redis is killed and restarted
    size: int = 256
    requeue_after_s: float = 30.0
    settle_timeout: float = 600.0  # give up once nothing new is acknowledged or triaged
    progress_every: float = 10.0

    def __post_init__(self) -> None:
        if self.studies < 1 or self.senders < 1 or self.per_association < 1 or self.workers < 1:
            raise ValueError("studies, senders, per_association and workers must be at least 1")
        for name in ("pg_at", "redis_at"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.kill_every < 0 or self.pg_outage < 0:
            raise ValueError("kill_every and pg_outage must not be negative")


@dataclass
class SoakResult:
    counts: Counts
    faults: list[str]
    kills: int
    elapsed_s: float

    def ok(self, studies: int) -> bool:
        c = self.counts
        return (c.triaged_once, c.duplicates, c.lost, c.stuck) == (studies, 0, 0, 0)


# -- the faults -------------------------------------------------------------------------------


class Faults(threading.Thread):
    """Kills workers, stops PostgreSQL and restarts Redis on the plan's schedule; keeps
    ``workers`` workers running meanwhile (the restart policy)."""

    def __init__(
        self,
        plan: SoakPlan,
        services: Services,
        pacs: Pacs,
        redis: RedisServer,
        pg: PgCluster,
        began: float,
    ) -> None:
        super().__init__(daemon=True)
        self.plan = plan
        self.services = services
        self.pacs = pacs
        self.redis = redis
        self.pg = pg
        self.began = began
        self.log: list[str] = []
        self.kills = 0
        self.killing = True  # cleared once everything is triaged
        self.stop = threading.Event()
        self.pg_down_until: float | None = None
        self.pg_done = self.redis_done = False
        self.armed_at: float | None = None  # every worker ready since
        self._restarts = 0
        self._restart_at = 0.0
        self._gone: set[int] = set()  # workers killed or noted as exited

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.began:7.1f} s  {text}")

    def state(self) -> str:
        ready = sum(1 for w in self.services.workers() if w.ready_at is not None)
        parts = [f"workers ready {ready}/{self.plan.workers}", f"kills {self.kills}"]
        if self.pg_down_until is not None:
            parts.append("postgresql down")
        return ", ".join(parts)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            now = time.monotonic()
            try:
                self._step(now)
            except Exception as exc:  # a fault that cannot be staged ends the faults, not the run
                self.note(f"fault thread stopped: {type(exc).__name__}: {exc}")
                raise

    def _step(self, now: float) -> None:
        workers = self.services.workers()
        for item in workers:
            item.read_log()  # only this thread reads the logs
        self._restart_policy(now, workers)
        acknowledged = self.pacs.acknowledged() / self.plan.studies
        if self.pg_down_until is not None:
            if now >= self.pg_down_until:
                self.pg.start()
                self.pg_down_until = None
                self.pg_done = True
                self.note("postgresql started")
            return  # one fault at a time
        if not self.pg_done and acknowledged >= self.plan.pg_at:
            self.pg.stop("fast")
            self.pg_down_until = time.monotonic() + self.plan.pg_outage
            self.note(f"postgresql stopped for {self.plan.pg_outage:.0f} s")
            return
        if not self.redis_done and acknowledged >= self.plan.redis_at:
            self.redis.restart(kill=True, down_s=2.0)
            self.redis_done = True
            self.note("redis killed and restarted")
            return
        self._kill(now, workers)

    def _restart_policy(self, now: float, workers: list[Proc]) -> None:
        if sum(1 for w in workers if w.ready_at is not None) == self.plan.workers:
            self._restarts = 0
        missing = self.plan.workers - len(workers)
        if missing <= 0 or now < self._restart_at:
            return
        for item in self.services.all:
            if item.name == "worker" and not item.alive() and item.proc.pid not in self._gone:
                self._gone.add(item.proc.pid)
                self.note(f"worker {item.proc.pid} exited by itself ({item.proc.returncode})")
        for _ in range(missing):
            self.services.start("worker")
        # A worker that exits by itself again waits longer before the next start.
        self._restart_at = now + RESTART_BACKOFF_S[min(self._restarts, len(RESTART_BACKOFF_S) - 1)]
        self._restarts += 1

    def _kill(self, now: float, workers: list[Proc]) -> None:
        if not self.killing or (self.plan.kills is not None and self.kills >= self.plan.kills):
            return
        ready = [w for w in workers if w.ready_at is not None]
        if len(ready) < self.plan.workers:
            self.armed_at = None  # the interval counts from the replacement being ready
            return
        if self.armed_at is None:
            self.armed_at = max(w.ready_at or now for w in ready)
        if now - self.armed_at < self.plan.kill_every:
            return
        scored = sorted((w for w in ready if w.triages > 0), key=lambda w: w.ready_at or now)
        if not scored:
            return  # kill one that is working, not one still warming up
        victim = scored[0]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        self._gone.add(victim.proc.pid)
        self.kills += 1
        self.note(f"worker {victim.proc.pid} killed after {victim.triages} triages")
        self.services.start("worker")
        self.armed_at = None


# -- the run ----------------------------------------------------------------------------------


def soak_settings(base: Path, pg: PgCluster, redis: RedisServer, plan: SoakPlan) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=base / "data",
        database_url=pg.url,
        broker_url=redis.url,
        queue="cxr-soak",
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        web_port=free_port(),
        allowed_calling_aes=["ORTHANC"],
        precision="fp32",
        stable_age_s=1.0,
        requeue_after_s=plan.requeue_after_s,
        sweep_interval_s=2.0,
        network_timeout_s=20.0,
        spool_min_free_gb=0.0,
    )


def triaged_so_far(store: Store) -> str:
    try:
        with store.read() as session:
            query = select(func.count()).select_from(Study).where(Study.status.in_(TERMINAL))
            return str(session.scalar(query) or 0)
    except Exception:  # the store is one of the things that go down
        return "?"


def run_soak(plan: SoakPlan, base: Path, model_file: Path, say: Say = print) -> SoakResult:
    """Run the soak in ``base`` (a folder of its own) with ``model_file`` as the active model.

    Raises ``tests.faults.harness.Unavailable`` where a fault cannot be staged (not root,
    no redis-server or PostgreSQL server binaries).
    """
    from migrations import upgrade
    from tests.peers import echoscu
    from training.synthetic.studies import write_studies

    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(base / "redis")
    pg = PgCluster()
    services: Services | None = None
    pacs: Pacs | None = None
    faults: Faults | None = None
    store: Store | None = None
    try:
        setup_began = time.monotonic()
        redis.start()
        pg.start()
        upgrade(pg.url)
        store = Store.from_url(pg.url)
        activate_model_file(store, model_file, "soak-v1")
        settings = soak_settings(base, pg, redis, plan)
        say(f"writing {plan.studies} studies ({plan.size} px)")
        records = write_studies(
            base / "studies", plan.studies, size=plan.size, seed=5, lateral=False
        )
        uids = {Path(str(r.path)): (r.sop_instance_uid, r.study_instance_uid) for r in records}

        threads = max(1, (os.cpu_count() or 1) // plan.workers)
        services = Services(settings, logs, worker_threads=threads)
        services.start("gateway")
        services.start("web")
        for _ in range(plan.workers):
            services.start("worker")
        deadline = time.monotonic() + 120
        while echoscu("127.0.0.1", settings.dicom_port, calling_ae="ORTHANC").returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not answer C-ECHO; see {logs}")
            time.sleep(0.5)
        say(f"set up in {time.monotonic() - setup_began:.0f} s (store, studies, services)")

        began = time.monotonic()
        pacs = Pacs(
            settings.dicom_port,
            list(uids),
            uids,
            senders=plan.senders,
            per_association=plan.per_association,
        )
        faults = Faults(plan, services, pacs, redis, pg, began)
        say(
            f"sending {plan.studies} studies on {plan.senders} associations at a time; "
            f"kills every {plan.kill_every:.0f} s once every worker is ready and the victim "
            f"has triaged something ({'no limit' if plan.kills is None else plan.kills}); "
            f"postgresql down {plan.pg_outage:.0f} s at {plan.pg_at:.0%} acknowledged, "
            f"redis restarted at {plan.redis_at:.0%}"
        )
        pacs.start()
        faults.start()
        _drive(plan, store, pacs, faults, began, say)
        faults.killing = False
        faults.note("kills stop; settling")
        while faults.pg_down_until is not None and faults.is_alive():
            time.sleep(0.5)  # PostgreSQL comes back before the counting
        counts = wait_settled(pacs.ledger, store, timeout=min(60.0, plan.settle_timeout))
        faults.stop.set()
        faults.join(30)
        return SoakResult(counts, list(faults.log), faults.kills, time.monotonic() - began)
    finally:
        if pacs is not None:
            pacs.stop.set()
        if faults is not None:
            faults.stop.set()
            faults.join(30)
        stopping = time.monotonic()
        if services is not None:
            services.stop_all()
        if store is not None:
            store.dispose()
        redis.stop(kill=True)
        pg.destroy()
        say(f"stopped in {time.monotonic() - stopping:.0f} s")


def _drive(
    plan: SoakPlan, store: Store, pacs: Pacs, faults: Faults, began: float, say: Say
) -> None:
    """Print progress until every acknowledged study is triaged and every fault is over, or
    nothing new has been acknowledged or triaged for ``plan.settle_timeout`` seconds."""
    next_line = began + plan.progress_every
    last: tuple[int, str] = (0, "0")
    progress_at = began
    sent = False
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        acknowledged = pacs.acknowledged()
        triaged = triaged_so_far(store)
        if (acknowledged, triaged) != last and triaged != "?":
            last, progress_at = (acknowledged, triaged), now
        if now >= next_line:
            say(
                f"{now - began:7.1f} s  acknowledged {acknowledged}/{plan.studies}, "
                f"triaged {triaged}; {faults.state()}"
            )
            next_line = now + plan.progress_every
        if now - progress_at > plan.settle_timeout:
            say(f"{now - began:7.1f} s  nothing new for {plan.settle_timeout:.0f} s; giving up")
            break
        if not pacs.done():
            continue
        if not sent:
            acknowledged = pacs.acknowledged()  # the last association may have just ended
            say(f"{now - began:7.1f} s  all {acknowledged} studies acknowledged")
            sent = True
        kills_over = plan.kills is None or faults.kills >= plan.kills
        if faults.pg_done and faults.redis_done and kills_over and triaged == str(acknowledged):
            break
    pacs.stop.set()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def report(result: SoakResult, studies: int) -> str:
    """The faults as they happened, then the table of counts and the time to notification."""
    counts = result.counts
    lines = ["faults:", *(f"  {line}" for line in result.faults), ""]
    lines.append(f"{'studies':<24}{'count':>8}   target")
    for name, value, target in (
        ("sent", counts.sent, studies),
        ("acknowledged", counts.acknowledged, studies),
        ("stored", counts.stored, studies),
        ("triaged exactly once", counts.triaged_once, studies),
        ("duplicates", counts.duplicates, 0),
        ("lost", counts.lost, 0),
        ("stuck", counts.stuck, 0),
    ):
        lines.append(f"{name:<24}{value:>8}   {target}")
    lat = counts.latencies_s
    lines.append(
        f"\ntime to notification (last C-STORE Success -> complete triage), {len(lat)} "
        f"studies: p50 {percentile(lat, 0.5):.2f} s, p95 {percentile(lat, 0.95):.2f} s, "
        f"max {max(lat) if lat else float('nan'):.2f} s"
    )
    lines.append(
        f"statuses {counts.statuses}; {result.kills} workers killed; "
        f"wall time {result.elapsed_s:.0f} s"
    )
    return "\n".join(lines)
