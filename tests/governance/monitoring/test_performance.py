"""Subgroup performance on a deterministic labelled set with one weaker subgroup."""

from __future__ import annotations

import numpy as np
import pytest

from governance.monitoring.performance import TOO_FEW, Criteria, by_subgroup, parse_targets


def test_targets_are_read_from_the_policy() -> None:
    assert parse_targets("sensitivity >= 0.95") == {"sensitivity": 0.95}
    assert parse_targets("Specificity>=0.85") == {"specificity": 0.85}
    assert parse_targets("maximise F1") == {} and parse_targets(None) == {}


def test_only_the_subgroup_with_lower_sensitivity_is_flagged_and_small_ones_say_too_few() -> None:
    rng = np.random.default_rng(15)
    n = 3000
    manufacturer = rng.choice(["Acme", "Bravo", "Carm"], n, p=[0.7, 0.12, 0.18])
    manufacturer[:12] = "Tiny"  # a subgroup too small for any figure
    sex = rng.choice(["F", "M"], n)
    labels = rng.random(n) < 0.3
    scores = np.where(labels, rng.beta(8, 1.5, n), rng.beta(2, 6, n))
    # Bravo's detector hides findings: its positives score like negatives half the time.
    weak = (manufacturer == "Bravo") & labels & (rng.random(n) < 0.5)
    scores[weak] = rng.beta(2, 6, int(weak.sum()))
    tau = 0.5
    flags = scores >= tau
    rows = by_subgroup(
        labels,
        flags,
        scores,
        {"manufacturer": manufacturer, "sex": sex},
        Criteria({"sensitivity": 0.9}, bootstrap=100),
    )
    flagged = [(r.attribute, r.value) for r in rows if r.flagged]
    assert flagged == [("manufacturer", "Bravo")], flagged
    bravo = next(r for r in rows if r.value == "Bravo")
    assert bravo.sensitivity is not None and bravo.sensitivity.high is not None
    assert bravo.sensitivity.high < 0.9 and "sensitivity" in bravo.reasons[0]
    tiny = next(r for r in rows if r.value == "Tiny")
    assert tiny.status == TOO_FEW and tiny.sensitivity is None and tiny.auc is None
    acme = next(r for r in rows if r.value == "Acme")
    assert acme.auc is not None and acme.auc[1] < acme.auc[0] < acme.auc[2]
    assert acme.sensitivity is not None and acme.sensitivity.value == pytest.approx(
        float((flags & labels)[manufacturer == "Acme"].sum())
        / float(labels[manufacturer == "Acme"].sum())
    )
