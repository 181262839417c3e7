"""Drift job figures: seconds per run and peak memory over N stored studies on PostgreSQL.

Fills a throwaway PostgreSQL schema with N synthetic triaged studies (one image each, features
as the worker records them; bulk inserted), then runs the drift job (baseline = first 500,
window = last 500 or 7 days) in a fresh subprocess, several times, and prints its wall time and
the subprocess's peak RSS (whole interpreter, imports included) beside its RSS before the first
run, next to the issue's targets (10 s, 500 MB). The queries aggregate in SQL; Python receives
one window's scores and image statistics.

    python benchmarks/monitoring.py --studies 100000 --runs 3
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

import numpy as np
import psycopg
from _common import postgres_schema

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the synthetic populations live with the tests
    sys.path.insert(0, str(ROOT))

from governance.db import Store  # noqa: E402
from governance.models import utcnow  # noqa: E402
from migrations import upgrade  # noqa: E402
from tests.governance.monitoring.store_data import add_model, insert_studies  # noqa: E402
from tests.governance.monitoring.synth import Population, draw  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
DRIFT = """
import datetime as dt, json, resource, sys, time
from governance.db import Store
from governance.monitoring.runs import run_drift
store = Store.from_url(sys.argv[1])
now = dt.datetime.fromisoformat(sys.argv[2])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for i in range(int(sys.argv[3])):
    start = time.perf_counter()
    run = run_drift(store, now=now)
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
alerts = run.results.get("alerts") or []  # a window too small to test has none
print(json.dumps({"times": times, "rss_before_kb": rss0, "peak_rss_kb": peak,
                  "status": run.status, "n": run.n_studies, "alerts": alerts}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=10_000)
    args = parser.parse_args(argv)
    with postgres_schema(PG_ADMIN) as (name, url):
        upgrade(url)
        store = Store.from_url(url)
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as tmp:
            model_file = Path(tmp) / "model.pt"
            model_file.write_bytes(b"benchmark model")
            model = store.run(lambda s: add_model(s, str(model_file), validation=draw(rng, 2000)))
        t = utcnow() + dt.timedelta(minutes=1)
        step = dt.timedelta(minutes=5)
        filled = time.perf_counter()
        done = 0
        while done < args.studies:
            n = min(args.chunk, args.studies - done)
            # The last window carries a shift, so the run does the alerting path too.
            shift = Population(new_manufacturer=0.3) if done + n >= args.studies else None
            studies = draw(rng, n, shift)
            t = store.run(
                lambda s, batch=studies, start=t: insert_studies(
                    s, model, batch, start=start, step=step
                )
            )
            done += n
        filled = time.perf_counter() - filled
        store.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'ANALYZE "{name}".study_inferences')
            conn.execute(f'ANALYZE "{name}".image_features')
        out = subprocess.run(
            [sys.executable, "-c", DRIFT, url, t.isoformat(), str(args.runs)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        times = result["times"]
        print(f"studies stored: {args.studies} (filled in {filled:.1f} s); PostgreSQL")
        print(f"{'figure':<34}{'measured':>14}{'target':>12}")
        print(f"{'drift run, first (s)':<34}{times[0]:>14.2f}{'< 10':>12}")
        print(f"{'drift run, median of ' + str(len(times)) + ' (s)':<34}"
              f"{float(np.median(times)):>14.2f}{'< 10':>12}")  # fmt: skip
        print(f"{'peak RSS of the process (MB)':<34}{result['peak_rss_kb'] / 1024:>14.0f}"
              f"{'< 500':>12}")  # fmt: skip
        print(f"{'RSS after imports (MB)':<34}{result['rss_before_kb'] / 1024:>14.0f}{'':>12}")
        print(f"window: {result['n']} studies, status {result['status']}, alerts "
              f"{[a['feature'] for a in result['alerts']]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
