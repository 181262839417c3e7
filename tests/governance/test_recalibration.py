"""Recalibration: over-confident scores refitted on a time split; jobs from activation and labels
to an approved policy version (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from governance.db import Store
from governance.errors import TriageError
from governance.models import AuditEvent, RecalibrationJob, RecalibrationState, utcnow
from governance.policies import policy_in_force
from governance.recalibration import (
    decide,
    operating,
    recalibrate,
    run_job,
    sigmoid,
    start_if_due,
    tau_for,
)
from tests.governance.monitoring.store_data import add_model, insert_studies
from tests.governance.monitoring.synth import draw


def overconfident(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from calibrated logits, scores from the same logits x 3 (over-confident)."""
    true_logit = rng.normal(-1.0, 1.6, n)
    labels = rng.random(n) < sigmoid(true_logit)
    logits = 3.0 * true_logit
    return logits, sigmoid(logits), labels


# Six studies, highest score first: three positives (0.9, 0.8, 0.6), three negatives.
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
LABELS = np.array([True, True, False, True, False, False])


@pytest.mark.parametrize(
    ("target", "tau"),
    [
        ({"sensitivity": 0.6}, 0.8),  # the largest tau flagging 2 of 3 positives
        ({"sensitivity": 1.0}, 0.6),  # a tie at tau flags: 0.6 itself is caught
        ({"specificity": 0.6}, 0.6),  # the smallest tau leaving 2 of 3 negatives unflagged
        ({"specificity": 1.0}, 0.8),
        ({}, 0.8),  # Youden: 2/3 + 1 at 0.8 and 1 + 2/3 at 0.6; the higher tau first
    ],
)
def test_tau_for_known_answers(target: dict[str, float], tau: float) -> None:
    assert tau_for(SCORES, LABELS, target) == tau


def test_operating_counts_a_score_at_tau_as_flagged() -> None:
    assert operating(SCORES, LABELS, 0.6) == {"sensitivity": 1.0, "specificity": 2 / 3}
    assert operating(SCORES, LABELS, 0.61) == {"sensitivity": 2 / 3, "specificity": 2 / 3}


def test_recalibration_lowers_nll_and_ece_and_moves_tau_to_the_target() -> None:
    rng = np.random.default_rng(15)
    logits, probs, labels = overconfident(rng, 2000)
    result = recalibrate(logits, probs, labels, tau=0.5, target={"sensitivity": 0.9})
    assert result["temperature"] == pytest.approx(3.0, rel=0.2)
    assert not result["prevalence_corrected"]
    before, after = result["before"], result["after"]
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["brier"] <= before["brier"] + 1e-9
    assert before["sensitivity"] < 0.85  # the old tau misses the target
    assert after["sensitivity"] >= 0.87  # the new tau meets it on the check half (+- noise)
    assert result["fit_n"] == 1000 and result["check_n"] == 1000


def test_a_prevalence_shift_adds_a_logit_shift() -> None:
    rng = np.random.default_rng(3)
    true_logit = rng.normal(-1.0, 1.6, 3000)
    labels = rng.random(3000) < sigmoid(true_logit + 1.5)  # the site has more disease
    result = recalibrate(
        true_logit, sigmoid(true_logit), labels, tau=0.5, target={"sensitivity": 0.9}
    )
    assert result["prevalence_corrected"] and result["logit_shift"] == pytest.approx(1.5, abs=0.3)
    assert result["after"]["nll"] < result["before"]["nll"]


def test_activation_waits_for_labels_then_a_candidate_is_approved_into_a_policy(
    store: Store, tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    model_file = tmp_path / "m.pt"
    model_file.write_bytes(b"model")
    model = store.run(lambda s: add_model(s, str(model_file), validation=draw(rng, 500)))
    with store.read() as session:
        job = session.scalar(select(RecalibrationJob))
        assert job is not None and job.trigger == "activation"
        assert job.state == RecalibrationState.WAITING and "no labelled" in (job.message or "")
        job_id = job.id
    waiting = run_job(store, job_id, min_labels=200)
    assert waiting.state == RecalibrationState.WAITING and waiting.labels_needed == 200
    assert waiting.message == "needs 200 labelled studies, has 0"

    studies = draw(rng, 600)
    logits, probs, labels = overconfident(rng, 600)
    studies.scores, studies.labels = probs, labels
    start = utcnow() + dt.timedelta(minutes=1)
    store.run(
        lambda s: insert_studies(s, model, studies, start=start, step=dt.timedelta(minutes=1))
    )
    candidate = run_job(store, job_id, min_labels=200)
    assert candidate.state == RecalibrationState.CANDIDATE and candidate.labels_used == 600
    assert candidate.result["after"]["nll"] < candidate.result["before"]["nll"]
    with pytest.raises(TriageError):
        run_job(store, job_id, min_labels=200)  # a candidate is not run again

    with store.read() as session:
        before = policy_in_force(session, model.id)
        assert before is not None and before.version == 1
    store.run(lambda s: decide(s, job_id, approve=True, actor="admin1", reason="site SOP 4.2"))
    with store.read() as session:
        policy = policy_in_force(session, model.id)
        assert policy is not None and policy.version == 2
        assert policy.tau == pytest.approx(candidate.candidate_tau)
        assert policy.temperature == pytest.approx(candidate.candidate_temperature)
        approved = session.scalar(
            select(AuditEvent).where(AuditEvent.action == "recalibration_approved")
        )
        assert approved is not None and approved.actor == "admin1"
        assert approved.detail["policy_version"] == 2 and approved.detail["reason"]
    with pytest.raises(TriageError):
        store.run(lambda s: decide(s, job_id, approve=False, actor="a", reason="late"))

    # Labels accumulate: the next job starts once, not twice.
    first = store.run(lambda s: start_if_due(s, model, every=100))
    assert first is not None and first.trigger == "labels"
    assert store.run(lambda s: start_if_due(s, model, every=100)) is None
