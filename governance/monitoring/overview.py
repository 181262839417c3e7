"""What the monitoring page, its JSON API and ``/metrics`` show: one read of the store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.models import DriftRun, ModelVersion, RecalibrationJob, ThresholdPolicy
from governance.monitoring.labels import concordance
from governance.monitoring.performance import parse_targets
from governance.monitoring.runs import latest_runs
from governance.monitoring.subgroups import shadow_period, subgroup_report
from governance.policies import policy_in_force
from governance.registry import active_model

HISTORY = 60


def latest_alert(session: Session) -> dict[str, Any] | None:
    """The active version's latest drift run if it alerted (the admin banner), else None."""
    model = active_model(session)
    if model is None:
        return None
    run = next(iter(latest_runs(session, model.id, 1)), None)
    if run is None or not run.alerted:
        return None
    return {
        "model_version": model.version,
        "run": run.id,
        "at": run.started_at.isoformat(),
        "alerts": run.results.get("alerts", []),
    }


def overview(session: Session, *, subgroup_min: int = 30) -> dict[str, Any]:
    model = active_model(session)
    if model is None:
        return {"model_version": None}
    policy = policy_in_force(session, model.id)
    runs = latest_runs(session, model.id, HISTORY)
    latest = runs[0] if runs else None
    days = concordance(session, model.id)
    jobs = session.scalars(
        select(RecalibrationJob)
        .where(RecalibrationJob.model_version_id == model.id)
        .order_by(RecalibrationJob.id.desc())
        .limit(20)
    ).all()
    return {
        "model_version": model.version,
        "policy": None if policy is None else _policy(policy),
        "alert": latest_alert(session),
        "latest": None if latest is None else _latest_run(latest),
        "runs": [
            {
                "id": r.id,
                "at": r.started_at.isoformat(),
                "status": r.status,
                "psi": r.psi,
                "flag_rate": r.flag_rate,
                "expected_flag_rate": r.expected_flag_rate,
                "n": r.n_studies,
                "alerted": r.alerted,
                "alerts": [a["feature"] for a in r.results.get("alerts", [])],
            }
            for r in reversed(runs)
        ],
        "subgroups": subgroup_report(session, model_version=model.version, min_count=subgroup_min),
        "shadow_period": shadow_period(session, min_count=subgroup_min),
        "concordance": days,
        "recalibration": [
            {
                "id": j.id,
                "state": j.state,
                "trigger": j.trigger,
                "labels_used": j.labels_used,
                "message": j.message,
                "tau": j.candidate_tau,
                "temperature": j.candidate_temperature,
                "before": j.result.get("before"),
                "after": j.result.get("after"),
                "decided_by": j.decided_by,
                "decision_reason": j.decision_reason,
            }
            for j in jobs
        ],
    }


def _policy(policy: ThresholdPolicy) -> dict[str, Any]:
    """The policy in force, with the targets its target metric names."""
    return {
        **policy.columns("version", "mode", "tau", "target_metric"),
        "targets": parse_targets(policy.target_metric),
    }


def _latest_run(run: DriftRun) -> dict[str, Any]:
    """The latest run in full: its score histogram, tests, CUSUM and flag-rate interval too."""
    return {
        **run.columns("id", "status", "n_studies"),
        "histogram": run.results.get("score_histogram"),
        "tests": run.results.get("tests", []),
        "cusum": run.results.get("cusum"),
        "flag_rate_interval": run.results.get("flag_rate_interval"),
    }


def drift_gauges(session: Session) -> list[tuple[str, str, str, float, bool]]:
    """(model version, feature, test, effect, alert) of each version's latest drift run."""
    out = []
    for model in session.scalars(select(ModelVersion).where(ModelVersion.status == "active")):
        run = session.scalar(
            select(DriftRun)
            .where(DriftRun.model_version_id == model.id, DriftRun.status == "ok")
            .order_by(DriftRun.started_at.desc(), DriftRun.id.desc())
            .limit(1)
        )
        if run is None:
            continue
        for t in run.results.get("tests", []):
            out.append((model.version, t["feature"], t["test"], t["effect"] or 0.0, t["alert"]))
    return out
