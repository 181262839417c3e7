"""Soak under faults: N studies through worker kills, a Redis restart and a PostgreSQL outage.

Pushes N synthetic one-image studies (default 1,000) from 4 concurrent associations (dcmtk's
storescu, 10 studies each, refused instances sent again) to a real ``cxr-triage gateway``,
triaged by two real ``cxr-triage worker`` processes and checked through a real
``cxr-triage web``. Meanwhile a worker is killed with SIGKILL every ``--kill-every`` seconds
(20), PostgreSQL (our own cluster; needs root) is stopped for ``--pg-outage`` seconds (30)
once a quarter of the studies are acknowledged, and Redis (our own server) is killed and
restarted once half of them are.

The kill schedule waits for the workers, so that kills never come faster than workers start
on a slow or loaded machine: the victim is the oldest worker that is ready and has finished
a triage, and the ``--kill-every`` clock starts once every worker is ready (after a kill, once
its replacement is). Kills go on until every acknowledged study is triaged.

Prints progress (studies acknowledged and triaged so far) every ``--progress-every`` seconds,
then the faults as they happened and studies sent, acknowledged, stored, triaged exactly
once, duplicates, lost, stuck, and p50/p95 time from a study's last C-STORE Success to its
complete triage. It stops waiting as soon as everything is triaged, or once nothing new has
been acknowledged or triaged for ``--settle-timeout`` seconds (600). Exits 0 only with N/N
triaged exactly once, 0 duplicates, 0 lost, 0 stuck.
The shared Redis and PostgreSQL of the machine are never touched. The model is a random
ResNet-50 exported at 32 px: this counts studies, not scores. The runner is
``tests/faults/soak.py``; the test suite runs a short soak with it (tests/faults/test_soak.py).

    python benchmarks/fault_soak.py [--studies 1000] [--senders 4] [--kill-every 20]
        [--pg-outage 30] [--size 256] [--settle-timeout 600]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the runner lives with the tests
    sys.path.insert(0, str(ROOT))

from tests.faults.harness import Unavailable, export_random_model  # noqa: E402
from tests.faults.soak import SoakPlan, report, run_soak  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    defaults = SoakPlan()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--studies", type=int, default=defaults.studies, help="studies (1000)")
    parser.add_argument(
        "--senders", type=int, default=defaults.senders, help="concurrent associations (4)"
    )
    parser.add_argument(
        "--kill-every",
        type=float,
        default=defaults.kill_every,
        help="seconds from every worker being ready to the next kill (20)",
    )
    parser.add_argument(
        "--kills", type=int, default=None, help="at most this many kills (default: no limit)"
    )
    parser.add_argument(
        "--pg-outage", type=float, default=defaults.pg_outage, help="seconds PostgreSQL is down"
    )
    parser.add_argument("--size", type=int, default=defaults.size, help="image rows (256)")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=defaults.settle_timeout,
        help="give up once nothing new is acknowledged or triaged for this long (600 s)",
    )
    parser.add_argument(
        "--progress-every", type=float, default=defaults.progress_every, help="seconds (10)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = vars(get_args_parser().parse_args(argv))
    keep = options.pop("keep")
    try:
        plan = SoakPlan(**options)  # every other option is a field of the plan
    except ValueError as exc:
        raise SystemExit(f"fault_soak: {exc}") from None
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    base = Path(tempfile.mkdtemp(prefix="cxr-soak-"))
    print(f"work folder {base}", flush=True)
    try:
        model = export_random_model(base)
        result = run_soak(plan, base, model, say=lambda line: print(line, flush=True))
    except Unavailable as exc:
        raise SystemExit(f"fault_soak: {exc}") from None
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(report(result, plan.studies))
    return 0 if result.ok(plan.studies) else 1


if __name__ == "__main__":
    sys.exit(main())
