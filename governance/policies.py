"""Threshold policies: the tau the site's SOP sets for a model version's operating point.

Policies are versioned per model version and never edited: a change is a new version. The
policy in force for a model is the newest whose ``effective_from`` has passed.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governance import audit
from governance.errors import NoActiveModel
from governance.models import (
    ModelVersion,
    OperatingPoint,
    PolicyMode,
    ThresholdPolicy,
    policy_uid,
    utcnow,
)

logger = logging.getLogger(__name__)

#: Which operating point, chosen on validation and recorded with a model version, each SOP
#: operating point takes its tau from (training records them under these names).
SOP_CRITERIA: dict[str, str] = {
    OperatingPoint.TRIAGE: "target_sensitivity",
    OperatingPoint.BALANCED: "youden",
    OperatingPoint.PRECISION: "target_specificity",
}


def recorded_operating_point(model: ModelVersion, operating_point: str) -> dict[str, Any]:
    """The point recorded with ``model`` for an SOP operating point (empty when there is none).

    Looked up under its criterion name (:data:`SOP_CRITERIA`), or under the SOP name itself
    for a version registered with its points named that way.
    """
    points = (model.details or {}).get("operating_points") or {}
    for key in (SOP_CRITERIA.get(operating_point), operating_point):
        recorded = points.get(key) if key else None
        if isinstance(recorded, dict) and "tau" in recorded:
            return recorded
    return {}


def set_policy(
    session: Session,
    model: ModelVersion,
    *,
    operating_point: str,
    tau: float,
    rationale: str,
    approved_by: str,
    target_metric: str | None = None,
    validation: dict[str, Any] | None = None,
    effective_from: dt.datetime | None = None,
    actor: str | None = None,
    mode: str = PolicyMode.LIVE,
) -> ThresholdPolicy:
    """Add a new policy version for ``model``.

    ``mode`` is ``live`` (flags are priorities) or ``shadow`` (flags are computed, stored,
    audited and compared with final reads, but are not priorities, exported or notified).

    Raises
    ------
    ValueError
        ``operating_point`` is not one of triage, balanced, precision; ``tau`` is not in [0, 1];
        ``rationale`` or ``approved_by`` is empty.
    """
    if operating_point not in OperatingPoint.ALL:
        raise ValueError(
            f"operating_point must be one of {', '.join(OperatingPoint.ALL)}, "
            f"got {operating_point!r}"
        )
    if not (isinstance(tau, int | float) and math.isfinite(tau) and 0.0 <= tau <= 1.0):
        raise ValueError(f"tau must be a probability in [0, 1], got {tau!r}")
    if mode not in PolicyMode.ALL:
        raise ValueError(f"mode must be one of {', '.join(PolicyMode.ALL)}, got {mode!r}")
    if not rationale.strip():
        raise ValueError("rationale must not be empty")
    if not approved_by.strip():
        raise ValueError("approved_by must not be empty")
    latest = session.scalar(
        select(func.max(ThresholdPolicy.version)).where(
            ThresholdPolicy.model_version_id == model.id
        )
    )
    policy = ThresholdPolicy(
        model_version_id=model.id,
        version=(latest or 0) + 1,
        operating_point=operating_point,
        tau=float(tau),
        target_metric=target_metric,
        validation=validation or {},
        rationale=rationale.strip(),
        approved_by=approved_by.strip(),
        effective_from=effective_from or utcnow(),
        mode=mode,
    )
    session.add(policy)
    session.flush()
    audit.record(
        session,
        "threshold_policy",
        policy_uid(model.version, policy.version),
        actor=actor or approved_by,
        action=audit.Action.POLICY_SET,
        detail={
            "model_version": model.version,
            "policy_version": policy.version,
            "operating_point": operating_point,
            "tau": float(tau),
            "approved_by": policy.approved_by,
            "target_metric": target_metric,
            "mode": mode,
        },
    )
    logger.info(
        "policy v%d for model %s: %s tau=%.4f", policy.version, model.version, operating_point, tau
    )
    return policy


def set_policy_at_point(
    session: Session,
    model: ModelVersion,
    *,
    operating_point: str,
    tau: float | None,
    rationale: str,
    approved_by: str,
    effective_from: dt.datetime | None = None,
    actor: str | None = None,
    mode: str = PolicyMode.LIVE,
) -> ThresholdPolicy:
    """Add a policy version for one of ``model``'s SOP operating points (what a person sets).

    ``tau`` defaults to the threshold training recorded for that point (chosen on validation);
    the recorded criterion and validation figures are kept with the policy either way.

    Raises
    ------
    ValueError
        ``tau`` is None and no point was recorded for ``operating_point``; and as
        :func:`set_policy`.
    """
    recorded = recorded_operating_point(model, operating_point)
    if tau is None:
        if not recorded:
            raise ValueError(
                f"model {model.version} has no recorded {operating_point!r} operating point; "
                "give tau"
            )
        tau = float(recorded["tau"])
    return set_policy(
        session,
        model,
        operating_point=operating_point,
        tau=tau,
        rationale=rationale,
        approved_by=approved_by,
        target_metric=recorded.get("criterion"),
        validation=recorded.get("validation", {}),
        effective_from=effective_from,
        actor=actor,
        mode=mode,
    )


def policy_in_force(
    session: Session, model_version_id: int, *, at: dt.datetime | None = None
) -> ThresholdPolicy | None:
    """The newest policy of a model version whose effective_from is not in the future."""
    return session.scalar(
        select(ThresholdPolicy)
        .where(
            ThresholdPolicy.model_version_id == model_version_id,
            ThresholdPolicy.effective_from <= (at or utcnow()),
        )
        .order_by(ThresholdPolicy.effective_from.desc(), ThresholdPolicy.version.desc())
        .limit(1)
    )


def list_policies(session: Session, model_version_id: int | None = None) -> list[ThresholdPolicy]:
    query = select(ThresholdPolicy).order_by(
        ThresholdPolicy.model_version_id, ThresholdPolicy.version
    )
    if model_version_id is not None:
        query = query.where(ThresholdPolicy.model_version_id == model_version_id)
    return list(session.scalars(query))


def set_mode(
    session: Session, model: ModelVersion, mode: str, *, approved_by: str, reason: str
) -> ThresholdPolicy:
    """Switch the policy in force between shadow and live: a new version, approved and audited.

    Raises
    ------
    ValueError
        ``mode`` is not live or shadow; ``reason`` is empty.
    NoActiveModel
        The model has no policy in force.
    """
    current = policy_in_force(session, model.id)
    if current is None:
        raise NoActiveModel(f"model {model.version} has no policy in force to switch")
    policy = set_policy(
        session,
        model,
        operating_point=current.operating_point,
        tau=current.tau,
        rationale=f"{current.mode} -> {mode}: {reason}",
        approved_by=approved_by,
        target_metric=current.target_metric,
        validation=current.validation,
        mode=mode,
    )
    policy.temperature, policy.logit_shift = current.temperature, current.logit_shift
    audit.record(
        session,
        "threshold_policy",
        policy_uid(model.version, policy.version),
        actor=approved_by,
        action=audit.Action.POLICY_MODE_CHANGED,
        detail={"from": current.mode, "to": mode, "reason": reason.strip()},
    )
    return policy


def flag_mask(probabilities: npt.ArrayLike, tau: float) -> np.ndarray:
    """The flag rule over many probabilities at once: at or above tau flags (a tie flags).

    Evaluation, threshold reports and recalibration count flags with it, so they count what
    the worker flags (``flags``, one study).
    """
    return np.greater_equal(probabilities, tau)


def flags(probability: float | None, tau: float | None) -> bool:
    """The flag rule for one study: ``flag_mask`` of its probability (none: no flag)."""
    return probability is not None and tau is not None and bool(flag_mask(probability, tau))


def policy_probability(
    policy: object | None, logit: float | None, probability: float | None
) -> float | None:
    """A study's probability under a policy: its recalibration where approved, else as scored.

    ``policy`` is a ThresholdPolicy (or anything with ``temperature`` and ``logit_shift``).
    """
    temperature = getattr(policy, "temperature", None)
    if temperature is None or logit is None:
        return probability
    shift = getattr(policy, "logit_shift", None) or 0.0
    z = np.clip(np.float64(logit / temperature + shift), -500, 500)
    # recalibration.sigmoid's expression (bit for bit), here: the gateway imports this module
    # and must not load recalibration's scipy
    return float(1.0 / (1.0 + np.exp(-z)))
