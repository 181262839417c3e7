"""Audit trail figures: verification speed and memory for N and 2N events, and record() rate.

For each backend (a SQLite file in a tmp folder; a throwaway schema in PostgreSQL), fills the
trail with N synthetic chained events (bulk inserted, hashes computed as record() does), then
runs ``verify_chain`` in a fresh subprocess and prints events/s and the subprocess's peak RSS;
then adds N more and does it again, so that memory can be seen flat as the trail doubles.
Also prints how many events per second ``record()`` chains with one transaction per event
(the lock and the head lookup included). Absolute times are noisy on a shared machine.

    python benchmarks/audit_verify.py --events 200000 --backend both
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import postgres_schema
from sqlalchemy import func, insert, select

from governance import audit
from governance.db import Store
from governance.models import GENESIS_HASH, AuditEvent
from migrations import upgrade

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
VERIFY = """
import json, resource, sys, time
from governance.db import Store
from governance.audit.verify import verify_chain
store = Store.from_url(sys.argv[1])
start = time.perf_counter()
with store.read() as session:
    result = verify_chain(session, chunk_size=int(sys.argv[2]))
seconds = time.perf_counter() - start
print(json.dumps({"ok": result.ok, "events": result.events, "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="N (default 200000)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--chunk", type=int, default=5000, help="verify chunk size")
    parser.add_argument("--record", type=int, default=1000, help="events for the record() rate")
    return parser


def fill(store: Store, count: int, batch: int = 10_000) -> None:
    """Append ``count`` chained events in bulk, as record() would chain them."""
    with store.read() as session:
        last = session.execute(
            select(AuditEvent.id, AuditEvent.row_hash).order_by(AuditEvent.id.desc()).limit(1)
        ).first()
    next_id, prev = (last.id + 1, last.row_hash) if last else (1, GENESIS_HASH)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    done = 0
    while done < count:
        rows = []
        for _ in range(min(batch, count - done)):
            event = AuditEvent(
                id=next_id,
                occurred_at=t0 + dt.timedelta(seconds=next_id),
                actor=f"MODALITY{next_id % 7}",
                actor_address="10.0.0.7",
                action="instances_received",
                event_code="110104",
                object_type="study",
                object_uid=f"1.2.826.0.1.3680043.10.999.{next_id}",
                outcome="success",
                detail={"instances": next_id % 5 + 1, "calling_ae": "MODALITY"},
                prev_hash=prev,
            )
            event.row_hash = event.compute_hash(prev)
            rows.append({c: getattr(event, c) for c in audit.event_fields(event)})
            prev, next_id = event.row_hash, next_id + 1
        with store.write() as session:
            session.execute(insert(AuditEvent), rows)
        done += len(rows)


def verify_in_subprocess(url: str, chunk: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", VERIFY, url, str(chunk)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def record_rate(store: Store, count: int) -> float:
    start = time.perf_counter()
    for n in range(count):
        store.run(lambda s, n=n: audit.record(s, actor="bench", action="query", detail={"n": n}))
    return count / (time.perf_counter() - start)


def run_backend(name: str, url: str, args: argparse.Namespace) -> None:
    upgrade(url)
    store = Store.from_url(url)
    for _ in range(2):
        fill(store, args.events)
        with store.read() as session:
            total = session.scalar(select(func.count()).select_from(AuditEvent))
        figures = verify_in_subprocess(url, args.chunk)
        assert figures["ok"] and figures["events"] == total, figures
        print(
            f"{name:<10} verify {total:>9,} events: {figures['seconds']:7.2f} s "
            f"({total / figures['seconds']:>9,.0f} events/s), peak RSS "
            f"{figures['peak_rss_mb']:6.1f} MB"
        )
    print(
        f"{name:<10} record(): {record_rate(store, args.record):,.0f} events/s "
        "(one transaction each)"
    )
    store.dispose()


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            run_backend("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", args)
    if args.backend in ("postgresql", "both"):
        with postgres_schema(PG_ADMIN) as (_name, url):
            run_backend("postgresql", url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
