"""The short soak: 60 studies through one worker SIGKILL, a PostgreSQL stop and a Redis
restart, every one triaged exactly once. The same runner as ``benchmarks/fault_soak.py``
(tests/faults/soak.py), made small: 256 px images, the faults early and back to back, and
the waiting over as soon as everything is triaged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import Unavailable
from tests.faults.soak import SoakPlan, report, run_soak
from tests.peers import peer_missing

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STUDIES = 60


def test_the_short_soak_triages_every_study_exactly_once_through_the_faults(
    tmp_path: Path, fault_model: Path
) -> None:
    plan = SoakPlan(
        studies=STUDIES,
        per_association=5,
        kill_every=0.0,  # as soon as every worker is ready and one has triaged a study
        kills=1,
        pg_at=0.15,
        pg_outage=5.0,
        redis_at=0.5,
        requeue_after_s=8.0,
        settle_timeout=240.0,  # nothing new for this long: give up
    )
    lines: list[str] = []
    try:
        result = run_soak(plan, tmp_path, fault_model, say=lines.append)
    except Unavailable as exc:
        peer_missing(str(exc))
    table = "\n".join(lines) + "\n" + report(result, STUDIES)
    print(table)

    counts = result.counts
    assert (counts.sent, counts.acknowledged, counts.stored) == (STUDIES,) * 3, table
    assert (counts.triaged_once, counts.duplicates, counts.lost, counts.stuck) == (
        STUDIES,
        0,
        0,
        0,
    ), table
    # Every fault happened.
    assert result.kills == 1, table
    assert any("postgresql stopped" in line for line in result.faults), table
    assert any("redis killed and restarted" in line for line in result.faults), table
