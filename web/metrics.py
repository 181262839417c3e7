"""``GET /metrics``: Prometheus text format, read from the store at scrape time.

What the store knows (studies by status, flagged studies, instances, inferences, triage latency,
the active model) is read when Prometheus scrapes, by a custom collector, so every web process
reports the same figures whichever of them is scraped. HTTP request counters are kept per
process. Labels hold states, routes and model versions only: never a UID, never PHI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from governance.db import Store
from governance.errors import StoreUnavailable
from governance.models import ImageInference, Instance, Study, StudyInference
from governance.monitoring.overview import drift_gauges
from governance.policies import policy_in_force
from governance.registry import active_model
from web.deps import read_store
from web.schemas import STUDY_STATUSES

logger = logging.getLogger(__name__)

PREFIX = "cxr_triage"
RECENT_STUDIES = 1000
QUANTILES = (0.5, 0.9, 0.99)

router = APIRouter(tags=["operations"])


def _seconds_between(start: Any, end: Any, dialect: str) -> ColumnElement[Any]:
    """``end - start`` in seconds, in SQL (the two backends spell it differently)."""
    if dialect == "postgresql":
        return func.extract("epoch", end - start)
    # SQLite keeps UTC datetimes as text, which julianday() reads.
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def quantile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile of ascending ``sorted_values``, interpolated linearly.

    Raises
    ------
    ValueError
        ``sorted_values`` is empty or ``q`` is not in [0, 1].
    """
    if not sorted_values:
        raise ValueError("sorted_values must not be empty")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def store_snapshot(session: Session) -> dict[str, Any]:
    """The figures the collector reports, read in one session."""
    dialect = session.get_bind().dialect.name
    by_status = dict(
        session.execute(select(Study.status, func.count()).group_by(Study.status)).all()
    )
    flagged = session.scalar(
        select(func.count())
        .select_from(Study)
        .join(StudyInference, Study.result_id == StudyInference.id)
        # A flag decided under a shadow policy is not a priority (go-live sign-off).
        .where(StudyInference.flagged.is_(True), StudyInference.shadow.is_(False))
    )
    instances = session.scalar(select(func.count()).select_from(Instance))
    images_total = session.scalar(select(func.count()).select_from(ImageInference)) or 0
    images_scored = (
        session.scalar(select(func.count()).where(ImageInference.probability.is_not(None))) or 0
    )
    study_inferences = session.scalar(select(func.count()).select_from(StudyInference))
    latency = _seconds_between(Study.first_received_at, Study.triaged_at, dialect)
    triaged = Study.triaged_at.is_not(None)
    count, total = session.execute(
        select(func.count(), func.coalesce(func.sum(latency), 0.0)).where(triaged)
    ).one()
    recent = sorted(
        float(value)
        for value in session.scalars(
            select(latency).where(triaged).order_by(Study.triaged_at.desc()).limit(RECENT_STUDIES)
        )
    )
    model = active_model(session)
    policy = policy_in_force(session, model.id) if model else None
    return {
        "by_status": by_status,
        "flagged": int(flagged or 0),
        "instances": int(instances or 0),
        "images_scored": int(images_scored),
        "images_skipped": int(images_total - images_scored),
        "study_inferences": int(study_inferences or 0),
        "latency_count": int(count),
        "latency_sum": float(total),
        "latency_recent": recent,
        "drift": drift_gauges(session),
        "model": None
        if model is None
        else {
            "version": model.version,
            "sha256": model.sha256,
            "clinical": "true" if model.clinical else "false",
            "policy_version": str(policy.version) if policy else "",
            "operating_point": policy.operating_point if policy else "",
        },
        "tau": policy.tau if policy else None,
    }


class StoreCollector(Collector):
    """Yields the store's figures each time the registry is collected (a scrape)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: reading the store at registration time is not wanted.
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_store_up", "1 if the store answered this scrape.")
        try:
            snapshot = read_store(self.store, store_snapshot)
        except StoreUnavailable as exc:
            logger.warning("metrics: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._families(snapshot)
        yield from self._drift(snapshot.get("drift", []))

    @staticmethod
    def _drift(gauges: list[tuple[str, str, str, float, bool]]) -> Iterator[Metric]:
        effect = GaugeMetricFamily(
            f"{PREFIX}_drift_effect",
            "Effect size of each drift test in the latest run of the active model version "
            "(PSI, KS D, Cramer's V, flag-rate difference, CUSUM statistic).",
            labels=["model_version", "feature", "test"],
        )
        alert = GaugeMetricFamily(
            f"{PREFIX}_drift_alert",
            "1 where a feature alerted in the latest drift run (BH-corrected p below alpha and "
            "effect above its floor, or the CUSUM crossed its limit).",
            labels=["model_version", "feature", "test"],
        )
        for version, feature, test, size, alerted in gauges:
            effect.add_metric([version, feature, test], float(size))
            alert.add_metric([version, feature, test], 1.0 if alerted else 0.0)
        yield effect
        yield alert

    @staticmethod
    def _families(snap: dict[str, Any]) -> Iterator[Metric]:
        studies = GaugeMetricFamily(
            f"{PREFIX}_studies", "Studies in the store by status.", labels=["status"]
        )
        for status in sorted(set(STUDY_STATUSES) | set(snap["by_status"])):
            studies.add_metric([status], snap["by_status"].get(status, 0))
        yield studies
        yield GaugeMetricFamily(
            f"{PREFIX}_studies_flagged",
            "Studies whose current result is flagged for priority (shadow-mode flags not counted).",
            value=snap["flagged"],
        )
        yield CounterMetricFamily(
            f"{PREFIX}_instances_received",
            "DICOM instances recorded in the store.",
            value=snap["instances"],
        )
        images = CounterMetricFamily(
            f"{PREFIX}_image_inferences",
            "Images processed by a model, scored or skipped.",
            labels=["outcome"],
        )
        images.add_metric(["scored"], snap["images_scored"])
        images.add_metric(["skipped"], snap["images_skipped"])
        yield images
        yield CounterMetricFamily(
            f"{PREFIX}_study_inferences",
            "Study triage results (one per study and model).",
            value=snap["study_inferences"],
        )
        latency = Metric(
            f"{PREFIX}_triage_latency_seconds",
            "Seconds from a study's first instance received to its triage; count and sum over "
            f"every triaged study, quantiles over the {RECENT_STUDIES} most recently triaged.",
            "summary",
        )
        recent = snap["latency_recent"]
        if recent:
            for q in QUANTILES:
                latency.add_sample(latency.name, {"quantile": str(q)}, quantile(recent, q))
        latency.add_sample(f"{latency.name}_count", {}, snap["latency_count"])
        latency.add_sample(f"{latency.name}_sum", {}, snap["latency_sum"])
        yield latency
        info = InfoMetricFamily(
            f"{PREFIX}_active_model",
            "The model version that scores new studies, and its policy.",
        )
        if snap["model"] is not None:
            info.add_metric([], snap["model"])
        yield info
        if snap["tau"] is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_active_policy_tau",
                "Threshold tau of the active model's policy.",
                value=snap["tau"],
            )


class HTTPMetrics:
    """Counters of HTTP requests by method, route template and status code, in ``registry``.

    The route template (``/api/studies/{study_instance_uid}``), not the path, is the label: a
    path holds a UID, and one series per study would grow without end.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(route).observe(seconds)


class HTTPMetricsMiddleware:
    """ASGI middleware that feeds :class:`HTTPMetrics`."""

    def __init__(self, app: Any, metrics: HTTPMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status[0], time.perf_counter() - started)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (text format)",
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
