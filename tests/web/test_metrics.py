"""``/metrics``: Prometheus text read from the store at scrape time, plus HTTP counters."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.web.conftest import ROOT, Scenario
from web.metrics import quantile


def _scrape(client: TestClient) -> tuple[str, dict[str, Metric]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    return response.text, families


def _value(family: Metric, name: str | None = None, **labels: str) -> float:
    matches = [
        sample.value
        for sample in family.samples
        if (name is None or sample.name == name) and sample.labels == labels
    ]
    assert len(matches) == 1, (family.name, name, labels, family.samples)
    return matches[0]


def test_metrics_count_what_the_store_holds(client: TestClient, scenario: Scenario) -> None:
    text, families = _scrape(client)
    assert _value(families["cxr_triage_store_up"]) == 1
    studies = families["cxr_triage_studies"]
    for status in ("received", "queued", "triaging", "triaged", "no_frontal", "no_model",
                   "failed"):  # fmt: skip
        assert _value(studies, status=status) == scenario.by_status.get(status, 0), status
    assert _value(families["cxr_triage_studies_flagged"]) == 2
    assert _value(families["cxr_triage_instances_received"]) == scenario.instances
    images = families["cxr_triage_image_inferences"]
    assert images.type == "counter"
    assert _value(images, outcome="scored") == scenario.images_scored
    assert _value(images, outcome="skipped") == scenario.images_skipped
    assert _value(families["cxr_triage_study_inferences"]) == scenario.study_inferences

    latency = families["cxr_triage_triage_latency_seconds"]
    assert latency.type == "summary"
    name = "cxr_triage_triage_latency_seconds"
    assert _value(latency, f"{name}_count") == len(scenario.latencies)
    assert _value(latency, f"{name}_sum") == pytest.approx(sum(scenario.latencies), abs=1e-3)
    ordered = sorted(scenario.latencies)
    assert _value(latency, name, quantile="0.5") == pytest.approx(quantile(ordered, 0.5), abs=1e-3)
    assert _value(latency, name, quantile="0.99") <= max(ordered) + 1e-3

    # The text format spells an info metric as a gauge named ..._info, valued 1.
    info = families["cxr_triage_active_model_info"]
    assert [sample.value for sample in info.samples] == [1]
    assert info.samples[0].labels == {
        "version": scenario.model_version,
        "sha256": scenario.sha256,
        "clinical": "false",
        "policy_version": str(scenario.policy_version),
        "operating_point": "triage",
    }
    assert _value(families["cxr_triage_active_policy_tau"]) == pytest.approx(scenario.tau)
    # Labels are states, routes and versions: no study, series or instance UID.
    assert ROOT not in text


def test_metrics_follow_the_store_between_scrapes(client: TestClient, scenario: Scenario) -> None:
    from governance.models import Study, StudyStatus

    _, before = _scrape(client)
    assert _value(before["cxr_triage_studies"], status="failed") == 0

    def fail_one(session) -> None:  # type: ignore[no-untyped-def]
        study = session.query(Study).filter_by(study_instance_uid=scenario.uids["D"]).one()
        study.status = StudyStatus.FAILED

    client.app.state.store.run(fail_one)  # type: ignore[attr-defined]
    _, after = _scrape(client)
    assert _value(after["cxr_triage_studies"], status="failed") == 1
    assert _value(after["cxr_triage_studies"], status="queued") == 0


def test_a_shadow_flag_is_not_counted_as_flagged(client: TestClient, scenario: Scenario) -> None:
    """A flag decided under a shadow policy (go-live sign-off) is kept but is not a priority."""
    from governance.models import Study, StudyInference

    _, before = _scrape(client)
    assert _value(before["cxr_triage_studies_flagged"]) == 2

    def shadow_one_flag(session) -> None:  # type: ignore[no-untyped-def]
        result = (
            session.query(StudyInference)
            .join(Study, Study.result_id == StudyInference.id)
            .filter(StudyInference.flagged.is_(True))
            .first()
        )
        result.shadow = True

    client.app.state.store.run(shadow_one_flag)  # type: ignore[attr-defined]
    _, after = _scrape(client)
    assert _value(after["cxr_triage_studies_flagged"]) == 1
    # Still a result of its study: only the priority count leaves it out.
    assert _value(after["cxr_triage_study_inferences"]) == scenario.study_inferences


def test_metrics_of_an_empty_store(client: TestClient) -> None:
    _, families = _scrape(client)
    assert _value(families["cxr_triage_store_up"]) == 1
    assert all(sample.value == 0 for sample in families["cxr_triage_studies"].samples)
    latency = families["cxr_triage_triage_latency_seconds"]
    assert _value(latency, "cxr_triage_triage_latency_seconds_count") == 0
    assert not [s for s in latency.samples if "quantile" in s.labels]
    no_model = families.get("cxr_triage_active_model_info")
    assert no_model is None or no_model.samples == []
    assert "cxr_triage_active_policy_tau" not in families


def test_http_requests_are_counted_by_route_template(
    client: TestClient, radiologist: TestClient, scenario: Scenario
) -> None:
    radiologist.get("/api/worklist")
    radiologist.get("/api/worklist")
    radiologist.get(f"/api/studies/{scenario.uids['A']}")
    radiologist.get("/api/studies/1.2.3.4")
    client.get("/api/worklist")
    client.get("/no/such/page")
    text, families = _scrape(client)
    requests = families["cxr_triage_http_requests"]
    assert _value(requests, method="GET", route="/api/worklist", status="200") == 2
    assert _value(requests, method="GET", route="/api/worklist", status="401") == 1
    study_route = "/api/studies/{study_instance_uid}"
    assert _value(requests, method="GET", route=study_route, status="200") == 1
    assert _value(requests, method="GET", route=study_route, status="404") == 1
    assert _value(requests, method="GET", route="unmatched", status="404") == 1
    duration = families["cxr_triage_http_request_duration_seconds"]
    count = "cxr_triage_http_request_duration_seconds_count"
    assert _value(duration, count, route="/api/worklist") == 3
    assert ROOT not in text


def test_quantile_interpolates_and_checks_its_arguments() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert quantile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError, match="sorted_values"):
        quantile([], 0.5)
    with pytest.raises(ValueError, match="q must"):
        quantile([1.0], 1.5)
