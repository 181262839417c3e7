"""The one decision that flags a study: known answers for ``triage_results.decide``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from governance.triage_results import Decision, ImageScore, decide

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Policy:
    tau: float


def scored(uid: str, probability: float, logit: float = 0.0) -> ImageScore:
    return ImageScore(1, uid, T0, probability=probability, logit=logit)


def skipped(uid: str, reason: str = "lateral view (LL)") -> ImageScore:
    return ImageScore(2, uid, T0, skipped_reason=reason)


def test_a_tie_at_tau_flags() -> None:
    decision = decide([scored("a", 0.5)], Policy(0.5))
    assert decision.flagged and decision.priority == "priority"
    assert (decision.status, decision.probability, decision.tau) == ("triaged", 0.5, 0.5)
    assert not decide([scored("a", 0.4999)], Policy(0.5)).flagged


def test_no_frontal_image_flags_nothing() -> None:
    decision = decide([skipped("lat"), skipped("knee", "body part KNEE is not chest")], Policy(0.0))
    assert decision == Decision(
        status="no_frontal",
        probability=None,
        logit=None,
        tau=0.0,
        flagged=False,
        priority="routine",
        images_scored=0,
        images_skipped=2,
    )
    assert decide([], Policy(0.0)).status == "no_frontal"


def test_several_frontals_take_the_maximum() -> None:
    scores = [scored("pa", 0.2, -1.4), scored("ap", 0.7, 0.85), skipped("lat"), scored("b", 0.4)]
    decision = decide(scores, Policy(0.6))
    assert (decision.probability, decision.logit, decision.flagged) == (0.7, 0.85, True)
    assert (decision.images_scored, decision.images_skipped) == (3, 1)
    assert not decide(scores, Policy(0.71)).flagged


def test_a_persons_priority_stands_whatever_the_model_decides() -> None:
    below = [scored("pa", 0.1)]
    raised = decide(below, Policy(0.5), priority_override="priority")
    assert not raised.flagged and raised.priority == "priority"  # re-triage never lowers it
    lowered = decide([scored("pa", 0.9)], Policy(0.5), priority_override="routine")
    assert lowered.flagged and lowered.priority == "routine"  # the model's flag is still reported
    assert decide(below, Policy(0.5)).priority == "routine"


def test_without_a_policy_nothing_is_flagged() -> None:
    decision = decide([scored("pa", 1.0)], None)
    assert decision.status == "triaged" and decision.tau is None
    assert not decision.flagged and decision.priority == "routine"
