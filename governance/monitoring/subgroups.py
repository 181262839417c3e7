"""Subgroup performance of a model version from the store: labelled studies -> the table."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from governance.errors import NoActiveModel
from governance.models import ModelVersion, ThresholdPolicy
from governance.monitoring.labels import Labelled, labelled
from governance.monitoring.performance import Criteria, by_subgroup, parse_targets, performance
from governance.policies import policy_in_force
from governance.registry import active_model, get_model


def _evidence(
    session: Session, model_version: str | None, *, shadow: bool = False
) -> tuple[ModelVersion, ThresholdPolicy | None, dict[str, float], Labelled]:
    """A model version (the active one by default), its policy in force, the policy's targets
    and the version's labelled studies (under a shadow policy with ``shadow``)."""
    model = get_model(session, model_version) if model_version else active_model(session)
    if model is None:
        raise NoActiveModel("no active model version (cxr-triage model activate)")
    policy = policy_in_force(session, model.id)
    targets = parse_targets(policy.target_metric if policy else None)
    return model, policy, targets, labelled(session, model.id, shadow=shadow)


def subgroup_report(
    session: Session,
    *,
    model_version: str | None = None,
    min_count: int = 30,
    bootstrap: int = 300,
) -> dict[str, Any]:
    """Overall and per-subgroup performance of a model version (the active one by default).

    Raises
    ------
    NoActiveModel
        No version is named and none is active.
    """
    model, policy, targets, data = _evidence(session, model_version)
    criteria = Criteria(targets, min_count=min_count, bootstrap=bootstrap)
    rows = (
        by_subgroup(data.labels, data.flags, data.scores, data.attributes, criteria)
        if data.n
        else []
    )
    return {
        "model_version": model.version,
        "policy_version": policy.version if policy else None,
        "targets": targets,
        "labelled": data.n,
        "min_count": min_count,
        "subgroups": [r.as_dict() for r in rows],
    }


def shadow_period(session: Session, *, min_count: int = 30, bootstrap: int = 300) -> dict[str, Any]:
    """The active version's flags under a shadow policy against final reads: the go-live
    sign-off's figures (concordance, sensitivity and specificity with Wilson 95% intervals)
    next to the policy's targets.

    Raises
    ------
    NoActiveModel
        No version is active.
    """
    model, _, targets, data = _evidence(session, None, shadow=True)
    criteria = Criteria(targets, min_count=min_count, bootstrap=bootstrap)
    result = performance("shadow period", "all", data.labels, data.flags, data.scores, criteria)
    agree = int((data.labels == data.flags).sum()) if data.n else 0
    return {
        "model_version": model.version,
        "targets": targets,
        "labelled": data.n,
        "concordance": agree / data.n if data.n else None,
        "performance": result.as_dict(),
    }
