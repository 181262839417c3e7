"""Recalibration jobs: refit a model version's calibration and tau on labelled production.

A job takes the version's labelled studies in time order, fits on the earlier half and checks on
the later half: a temperature (and a logit shift when the site's prevalence differs from what
the temperature alone predicts), tau re-derived for the policy's target, and NLL, ECE, Brier and
the operating point's sensitivity and specificity before and after on the check half. The result
is a candidate; only a person's approval turns it into a new policy version, which new studies
then use. States: queued, running, waiting-for-labels, candidate, approved, rejected, failed.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sps
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from governance import audit
from governance.db import Store, get_row
from governance.errors import TriageError
from governance.models import (
    ModelVersion,
    RecalibrationJob,
    Study,
    StudyInference,
    StudyLabel,
    ThresholdPolicy,
    utcnow,
)
from governance.models import RecalibrationState as State
from governance.monitoring.labels import labelled
from governance.monitoring.performance import parse_targets
from governance.policies import flag_mask, policy_in_force, set_policy
from governance.rows import newest

logger = logging.getLogger(__name__)

ACTOR = "cxr-triage-recalibration"
ECE_BINS = 10


# -- statistics (pure) -----------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -500, 500))), dtype=np.float64)


def nll(p: np.ndarray, y: np.ndarray) -> float:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(np.where(y, np.log(q), np.log1p(-q))))


def ece(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error on equal-width bins of [0, 1]."""
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(float(p[mask].mean()) - float(y[mask].mean()))
    return total


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def fit_calibration(logits: np.ndarray, y: np.ndarray) -> tuple[float, float, dict[str, Any]]:
    """Temperature by NLL; then a logit shift if the prevalence is off under that temperature.

    The shift is fitted only when the observed positives differ from the sum of the
    temperature-scaled probabilities (two-sided binomial p < 0.01), so a site at the training
    prevalence keeps pure temperature scaling.
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(y, dtype=bool)

    def loss_t(log_t: float) -> float:
        return nll(sigmoid(z / math.exp(log_t)), labels)

    log_t = float(optimize.minimize_scalar(loss_t, bounds=(-4.0, 4.0), method="bounded").x)
    temperature = math.exp(log_t)
    p = sigmoid(z / temperature)
    expected = float(np.clip(p.mean(), 1e-6, 1 - 1e-6))
    test = sps.binomtest(int(labels.sum()), labels.size, expected)
    detail: dict[str, Any] = {
        "observed_prevalence": float(labels.mean()),
        "predicted_prevalence": expected,
        "prevalence_p": float(test.pvalue),
    }
    shift = 0.0
    if test.pvalue < 0.01:

        def loss_ab(params: np.ndarray) -> float:
            return nll(sigmoid(z / math.exp(params[0]) + params[1]), labels)

        fit = optimize.minimize(loss_ab, np.array([log_t, 0.0]), method="Nelder-Mead")
        temperature, shift = math.exp(float(fit.x[0])), float(fit.x[1])
    detail["prevalence_corrected"] = shift != 0.0
    return temperature, shift, detail


def tau_for(p: np.ndarray, y: np.ndarray, target: dict[str, float]) -> float:
    """The largest tau meeting ``{"sensitivity": s}`` or ``{"specificity": s}``; else Youden."""
    candidates = np.unique(p)[::-1]
    positives, negatives = max(1, int(y.sum())), max(1, int((~y).sum()))
    if "sensitivity" in target:
        for tau in candidates:  # descending: the first that reaches the target is the largest
            if (flag_mask(p, tau) & y).sum() / positives >= target["sensitivity"]:
                return float(tau)
        return float(candidates[-1])
    if "specificity" in target:
        for tau in candidates[::-1]:  # ascending: the smallest tau meeting the specificity
            if (~flag_mask(p, tau) & ~y).sum() / negatives >= target["specificity"]:
                return float(tau)
        return float(candidates[0])
    youden = []
    for t in candidates:
        flagged = flag_mask(p, t)
        youden.append((flagged & y).sum() / positives + (~flagged & ~y).sum() / negatives)
    return float(candidates[int(np.argmax(youden))])


def operating(p: np.ndarray, y: np.ndarray, tau: float) -> dict[str, float | None]:
    flags = flag_mask(p, tau)
    pos, neg = int(y.sum()), int((~y).sum())
    return {
        "sensitivity": float((flags & y).sum() / pos) if pos else None,
        "specificity": float((~flags & ~y).sum() / neg) if neg else None,
    }


def recalibrate(
    logits: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    tau: float,
    target: dict[str, float],
) -> dict[str, Any]:
    """Fit on the first half (time order), check on the second: the candidate and its figures."""
    y = np.asarray(labels, dtype=bool)
    half = y.size // 2
    z_fit, z_check = logits[:half], logits[half:]
    temperature, shift, detail = fit_calibration(z_fit, y[:half])
    new_tau = tau_for(sigmoid(z_fit / temperature + shift), y[:half], target)
    before = np.asarray(probabilities[half:], dtype=np.float64)
    after = sigmoid(z_check / temperature + shift)
    y_check = y[half:]
    return {
        "temperature": temperature,
        "logit_shift": shift,
        "tau": new_tau,
        "previous_tau": tau,
        "target": target,
        "fit_n": int(half),
        "check_n": int(y_check.size),
        **detail,
        "before": {
            "nll": nll(before, y_check),
            "ece": ece(before, y_check),
            "brier": brier(before, y_check),
            **operating(before, y_check, tau),
        },
        "after": {
            "nll": nll(after, y_check),
            "ece": ece(after, y_check),
            "brier": brier(after, y_check),
            **operating(after, y_check, new_tau),
        },
    }


# -- jobs ------------------------------------------------------------------------------------


def create_job(
    session: Session, model: ModelVersion, *, trigger: str, window_key: str | None = None
) -> RecalibrationJob | None:
    """Queue a job for ``model``; None when ``window_key`` was queued already."""
    if window_key and session.scalar(
        select(RecalibrationJob.id).where(RecalibrationJob.window_key == window_key)
    ):
        return None
    policy = policy_in_force(session, model.id)
    job = RecalibrationJob(
        model_version_id=model.id,
        base_policy_id=policy.id if policy else None,
        state=State.QUEUED,
        trigger=trigger,
        window_key=window_key,
        labels_used=0,
        result={},
    )
    session.add(job)
    session.flush()
    audit.record(
        session,
        "recalibration_job",
        str(job.id),
        actor=ACTOR,
        action=audit.Action.RECALIBRATION_STARTED,
        detail={"model_version": model.version, "trigger": trigger},
    )
    return job


def run_job(store: Store, job_id: int, *, min_labels: int) -> RecalibrationJob:
    """Run a queued (or waiting) job to candidate, waiting-for-labels or failed."""

    def load(session: Session) -> tuple[dict[str, Any], Any]:
        job = _job(session, job_id)
        if job.state not in (State.QUEUED, State.WAITING):
            raise TriageError(f"recalibration job {job_id} is {job.state}; nothing to run")
        job.state, job.started_at = State.RUNNING, utcnow()
        policy = session.get(ThresholdPolicy, job.base_policy_id) if job.base_policy_id else None
        data = labelled(session, job.model_version_id)
        return {
            "tau": policy.tau if policy else 0.5,
            "target": parse_targets(policy.target_metric if policy else None),
        }, data

    params, data = store.run(load)
    state, message, result = State.CANDIDATE, None, {}
    try:
        usable = ~np.isnan(data.logits)
        if int(usable.sum()) < min_labels:
            state = State.WAITING
            message = f"needs {min_labels} labelled studies, has {int(usable.sum())}"
        else:
            result = recalibrate(
                data.logits[usable], data.scores[usable], data.labels[usable], **params
            )
    except (ValueError, FloatingPointError) as exc:
        state, message = State.FAILED, f"{type(exc).__name__}: {exc}"

    def finish(session: Session) -> RecalibrationJob:
        job = _job(session, job_id)
        job.state, job.message, job.finished_at = state, message, utcnow()
        job.labels_used = int((~np.isnan(data.logits)).sum())
        job.labels_needed = min_labels if state == State.WAITING else None
        job.result = result
        if result:
            job.candidate_temperature = result["temperature"]
            job.candidate_logit_shift = result["logit_shift"]
            job.candidate_tau = result["tau"]
        return job

    job = store.run(finish)
    logger.info("recalibration job %d: %s %s", job_id, state, message or "")
    return job


def _job(session: Session, job_id: int) -> RecalibrationJob:
    missing = f"no recalibration job {job_id} (see: cxr-triage recalibrate list)"
    return get_row(session, RecalibrationJob, job_id, missing)


def decide(
    session: Session, job_id: int, *, approve: bool, actor: str, reason: str
) -> RecalibrationJob:
    """Approve (a new policy version that new studies use) or reject a candidate; audited.

    Raises
    ------
    ValueError
        ``reason`` is empty.
    TriageError
        The job is not a candidate.
    """
    if not reason.strip():
        raise ValueError("reason must not be empty")
    job = _job(session, job_id)
    if job.state != State.CANDIDATE:
        raise TriageError(f"recalibration job {job_id} is {job.state}, not a candidate")
    model = session.get(ModelVersion, job.model_version_id)
    base = session.get(ThresholdPolicy, job.base_policy_id) if job.base_policy_id else None
    assert model is not None
    job.decided_by, job.decided_at, job.decision_reason = actor, utcnow(), reason.strip()
    if approve:
        assert job.candidate_tau is not None
        policy = set_policy(
            session,
            model,
            operating_point=base.operating_point if base else "triage",
            tau=job.candidate_tau,
            rationale=f"recalibration job {job.id}: {reason.strip()}",
            approved_by=actor,
            target_metric=base.target_metric if base else None,
            validation={"recalibration_job": job.id, **job.result.get("after", {})},
            actor=actor,
        )
        policy.temperature = job.candidate_temperature
        policy.logit_shift = job.candidate_logit_shift
        policy.mode = base.mode if base else "live"
        job.new_policy_id = policy.id
        job.state = State.APPROVED
    else:
        job.state = State.REJECTED
    new_policy = session.get(ThresholdPolicy, job.new_policy_id) if job.new_policy_id else None
    new_version = new_policy.version if new_policy else None
    audit.record(
        session,
        "recalibration_job",
        str(job.id),
        actor=actor,
        action=(
            audit.Action.RECALIBRATION_APPROVED if approve else audit.Action.RECALIBRATION_REJECTED
        ),
        detail={
            "model_version": model.version,
            "reason": reason.strip(),
            "temperature": job.candidate_temperature,
            "logit_shift": job.candidate_logit_shift,
            "tau": job.candidate_tau,
            "policy_version": new_version,
        },
    )
    return job


def labels_since(session: Session, model_version_id: int, since: Any) -> int:
    """Labels (imported or final reads) of the version's studies recorded after ``since``."""
    query = (
        select(func.count())
        .select_from(StudyInference)
        .join(Study, Study.id == StudyInference.study_id)
        .outerjoin(StudyLabel, StudyLabel.study_id == Study.id)
        .where(
            StudyInference.model_version_id == model_version_id,
            or_(StudyLabel.id.is_not(None), Study.final_read.is_not(None)),
        )
    )
    if since is not None:
        query = query.where(or_(StudyLabel.imported_at > since, Study.final_read_at > since))
    return int(session.scalar(query) or 0)


def start_if_due(session: Session, model: ModelVersion, *, every: int) -> RecalibrationJob | None:
    """Queue a job when ``every`` new labels have accumulated since the version's last job."""
    last = newest(session, RecalibrationJob, model.id)
    if last is not None and last.state in (State.QUEUED, State.RUNNING, State.WAITING):
        return None  # the open job takes the new labels when it runs
    if labels_since(session, model.id, last.created_at if last else None) < every:
        return None
    try:
        with session.begin_nested():
            return create_job(
                session, model, trigger="labels",
                window_key=f"labels:{model.version}:{last.id if last else 0}",
            )  # fmt: skip
    except IntegrityError:
        return None


def on_activation(session: Session, model: ModelVersion) -> RecalibrationJob | None:
    """The job every activation starts: waiting for labels while the version has none."""
    stamp = model.activated_at.isoformat() if model.activated_at else "now"
    job = create_job(
        session, model, trigger="activation", window_key=f"activation:{model.version}:{stamp}"
    )
    if job is not None and labels_since(session, model.id, None) == 0:
        job.state = State.WAITING
        job.message = "no labelled studies of this version yet"
    return job
