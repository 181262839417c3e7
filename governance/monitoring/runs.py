"""The drift job: load the reference and the window, test, store the run, raise the alert.

Every run is kept with its inputs (spans, thresholds, reference source) and results (every test);
one run per window key, so a second scheduler asking for the same window does nothing. An alert
is an audit event naming the features that moved and by how much; ``/metrics`` and the admin
banner read the latest run.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from governance import audit
from governance.db import Store
from governance.errors import NoActiveModel
from governance.jsonsafe import json_safe
from governance.models import DriftBaseline, DriftRun, ModelVersion, utcnow
from governance.monitoring import queries
from governance.monitoring.drift import (
    TOO_FEW,
    DriftConfig,
    DriftReport,
    Reference,
    Window,
    evaluate,
    score_quantiles,
)
from governance.policies import policy_in_force
from governance.registry import active_model, get_model

logger = logging.getLogger(__name__)

ACTOR = "cxr-triage-monitor"
NO_BASELINE = "no baseline yet"


@dataclass(frozen=True, slots=True)
class WindowSettings:
    days: float = 7.0
    studies: int = 500
    baseline_studies: int = 500

    def __post_init__(self) -> None:
        if self.days <= 0 or self.studies < 1 or self.baseline_studies < 1:
            raise ValueError("window days, studies and baseline studies must be positive")


def _reference(session: Session, model: ModelVersion, base: queries.Span) -> tuple[Reference, str]:
    recorded = (model.details or {}).get("reference_distribution") or {}
    quantiles = recorded.get("quantiles")
    if isinstance(quantiles, list) and len(quantiles) == 21 and recorded.get("n"):
        ref_scores, ref_n, source = quantiles, int(recorded["n"]), "validation (training)"
    else:
        # A version registered without the distribution: its production baseline stands in.
        scores, _ = queries.study_scores(session, base)
        ref_scores, ref_n, source = score_quantiles(scores), int(scores.size), "baseline"
    reference = Reference(
        score_quantiles=[float(q) for q in ref_scores],
        score_n=ref_n,
        categorical=queries.category_counts(session, base),
        image=queries.image_statistics(session, base),
        baseline_studies=base.n,
    )
    return reference, source


def compute(
    session: Session,
    model: ModelVersion,
    *,
    now: dt.datetime,
    window: WindowSettings,
    config: DriftConfig,
) -> tuple[dict[str, Any], DriftReport | None, queries.Span | None]:
    """The inputs and report of a drift run of ``model`` at ``now`` (no writes)."""
    policy = policy_in_force(session, model.id, at=now)
    inputs: dict[str, Any] = {
        "model_version": model.version,
        "window": asdict(window),
        "config": asdict(config),
        "policy_version": policy.version if policy else None,
        "tau": policy.tau if policy else None,
    }
    base = queries.baseline_span(session, model, size=window.baseline_studies)
    # Until the first baseline_studies have been triaged the baseline is still filling.
    incomplete = base is not None and base.source != "pinned" and base.n < window.baseline_studies
    if base is None or incomplete or base.n < config.min_studies or policy is None:
        inputs["baseline"] = None if base is None else {"n": base.n, "source": base.source}
        return inputs, None, None
    inputs["baseline"] = {
        "source": base.source,
        "start": base.start.isoformat(),
        "end": base.end.isoformat(),
        "n": base.n,
    }
    span = queries.window_span(
        session, model, now=now, days=window.days, size=window.studies, after=base.end
    )
    reference, source = _reference(session, model, base)
    inputs["reference_source"] = source
    if span is None:
        scores, flags = np.empty(0), np.empty(0, dtype=bool)
        current = Window(scores, flags)
    else:
        scores, flags = queries.study_scores(session, span)
        current = Window(
            scores,
            flags,
            categorical=queries.category_counts(session, span),
            image=queries.image_statistics(session, span),
        )
    return inputs, evaluate(reference, current, tau=policy.tau, config=config), span


def run_drift(
    store: Store,
    *,
    model_version: str | None = None,
    trigger: str = "manual",
    window_key: str | None = None,
    now: dt.datetime | None = None,
    window: WindowSettings | None = None,
    config: DriftConfig | None = None,
    actor: str = ACTOR,
) -> DriftRun | None:
    """Run drift for a model version (the active one by default) and store the run.

    Returns the stored run, or None when a run with ``window_key`` exists already.

    Raises
    ------
    NoActiveModel
        No version is named and none is active.
    """
    now = now or utcnow()
    window = window or WindowSettings()
    config = config or DriftConfig()
    key = window_key or f"{trigger}:{uuid.uuid4().hex}"
    started = utcnow()

    def measure(session: Session) -> tuple[int, dict[str, Any], DriftReport | None, Any]:
        model = get_model(session, model_version) if model_version else active_model(session)
        if model is None:
            raise NoActiveModel("no active model version to monitor (cxr-triage model activate)")
        if session.scalar(select(DriftRun.id).where(DriftRun.window_key == key)):
            return model.id, {}, None, "exists"
        inputs, report, span = compute(session, model, now=now, window=window, config=config)
        return model.id, inputs, report, span

    with store.read() as session:
        model_id, inputs, report, span = measure(session)
    if span == "exists":
        return None

    def record(session: Session) -> DriftRun:
        run = DriftRun(
            model_version_id=model_id,
            window_key=key,
            trigger=trigger,
            started_at=started,
            finished_at=utcnow(),
            window_start=span.start if span is not None else None,
            window_end=span.end if span is not None else None,
            inputs=json_safe(inputs),
            **_report_columns(report),
        )
        session.add(run)
        session.flush()
        if report is not None and report.alerts:
            audit.record(
                session,
                "model_version",
                inputs["model_version"],
                actor=actor,
                action=audit.Action.DRIFT_ALERT,
                detail={
                    "drift_run": run.id,
                    "window_studies": report.n_studies,
                    "features": [
                        {
                            "feature": t.feature,
                            "test": t.test,
                            t.effect_name: round(t.effect, 4),
                            "p_adjusted": float(f"{t.p_adjusted:.3g}"),
                        }
                        for t in report.alerts
                    ],
                },
            )
        return run

    try:
        run = store.run(record)
    except IntegrityError:
        return None  # another scheduler stored this window first
    if report is not None and report.alerts:
        logger.warning("drift alert for %s: %s", inputs["model_version"], report.alert_features())
    elif report is not None and report.status == TOO_FEW:
        logger.info("drift run %s: too few studies (%d)", key, report.n_studies)
    return run


def _report_columns(report: DriftReport | None) -> dict[str, Any]:
    """The columns of a run that its report fills; a run without a baseline has no report."""
    if report is None:
        return {"status": NO_BASELINE, "n_studies": 0, "alerted": False, "results": {}}
    return {
        "status": report.status,
        "n_studies": report.n_studies,
        "psi": next((t.effect for t in report.tests if t.test == "psi"), None),
        "flag_rate": report.flag_rate,
        "expected_flag_rate": report.expected_flag_rate,
        "alerted": bool(report.alerts),
        "results": json_safe(report.as_dict()),
    }


def latest_runs(session: Session, model_version_id: int, limit: int = 50) -> list[DriftRun]:
    return list(
        session.scalars(
            select(DriftRun)
            .where(DriftRun.model_version_id == model_version_id)
            .order_by(DriftRun.started_at.desc(), DriftRun.id.desc())
            .limit(limit)
        )
    )


def pin_baseline(
    session: Session,
    model: ModelVersion,
    *,
    starts_at: dt.datetime,
    ends_at: dt.datetime,
    pinned_by: str,
    reason: str,
) -> DriftBaseline:
    """Pin a production period as the model version's drift baseline (audited).

    Raises
    ------
    ValueError
        The period is empty or reversed, or ``reason`` is empty.
    """
    if not ends_at > starts_at:
        raise ValueError("the baseline period must end after it starts")
    if not reason.strip():
        raise ValueError("reason must not be empty")
    pin = DriftBaseline(
        model_version_id=model.id,
        starts_at=starts_at,
        ends_at=ends_at,
        pinned_by=pinned_by,
        reason=reason.strip(),
    )
    session.add(pin)
    audit.record(
        session,
        "model_version",
        model.version,
        actor=pinned_by,
        action=audit.Action.CONFIGURATION_CHANGED,
        detail={
            "drift_baseline": {"from": starts_at.isoformat(), "to": ends_at.isoformat()},
            "reason": reason.strip(),
        },
    )
    return pin
