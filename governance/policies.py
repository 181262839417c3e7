"""Threshold policies: the tau the site's SOP sets for a model version's operating point.

Policies are versioned per model version and never edited: a change is a new version. The
policy in force for a model is the newest whose ``effective_from`` has passed.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governance import audit
from governance.models import ModelVersion, OperatingPoint, ThresholdPolicy, utcnow

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
) -> ThresholdPolicy:
    """Add a new policy version for ``model``.

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
    )
    session.add(policy)
    session.flush()
    audit.record(
        session,
        actor=actor or approved_by,
        action=audit.Action.POLICY_SET,
        object_type="threshold_policy",
        object_uid=f"{model.version}/v{policy.version}",
        detail={
            "model_version": model.version,
            "policy_version": policy.version,
            "operating_point": operating_point,
            "tau": float(tau),
            "approved_by": policy.approved_by,
            "target_metric": target_metric,
        },
    )
    logger.info(
        "policy v%d for model %s: %s tau=%.4f", policy.version, model.version, operating_point, tau
    )
    return policy


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
