"""Prometheus /metrics: pipeline gauges derived from the database at scrape time, plus HTTP metrics.

The listener, workers and web are separate processes, so in-process counters would only see
one of them; the database sees everything. A custom collector therefore queries it on every
scrape. Only this process's HTTP traffic is counted in-process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from diff3m.config import Settings
from diff3m.db.models import (
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    EhrSnapshot,
    Instance,
    Study,
    StudyStatus,
)
from diff3m.db.session import session_scope

log = logging.getLogger("diff3m.web.access")

Middleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]

STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def stage_histogram(timings: list[dict[str, Any]], buckets: tuple[float, ...] = STAGE_BUCKETS
                    ) -> dict[str, tuple[list[tuple[str, float]], float]]:
    """Per stage: cumulative (le, count) buckets ending in +Inf, and the sum of seconds."""
    values: dict[str, list[float]] = {}
    for t in timings:
        for stage, seconds in (t or {}).items():
            if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
                values.setdefault(str(stage), []).append(float(seconds))
    out = {}
    for stage, vals in sorted(values.items()):
        cum = [(repr(float(le)), float(sum(1 for v in vals if v <= le))) for le in buckets]
        cum.append(("+Inf", float(len(vals))))
        out[stage] = (cum, float(sum(vals)))
    return out


class DatabaseCollector(Collector):
    """Reads the pipeline's state from the database on every scrape."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.database.url

    def describe(self) -> list[Metric]:
        """Nothing up front: keeps registration from querying the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every pipeline metric; ``diff3m_db_up`` is 0 (and the rest absent) when the query fails."""
        t0 = time.perf_counter()
        up = GaugeMetricFamily("diff3m_db_up", "1 when the database answered this scrape")
        try:
            metrics = list(self._collect())
        except Exception as err:  # noqa: BLE001 - a scrape must never crash
            log.warning("metrics: database query failed: %s", type(err).__name__)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from metrics
        took = GaugeMetricFamily("diff3m_metrics_scrape_seconds", "time spent querying the database")
        took.add_metric([], time.perf_counter() - t0)
        yield took

    def _collect(self) -> Iterator[Metric]:
        with session_scope(self.url) as s:
            instances = s.scalar(select(func.count()).select_from(Instance)) or 0
            by_status = dict(s.execute(select(Study.status, func.count()).group_by(Study.status)).all())
            abnormal = s.scalar(select(func.count()).where(Study.abnormal.is_(True))) or 0
            deliveries = s.execute(select(Delivery.kind, Delivery.status, func.count(),
                                          func.coalesce(func.sum(Delivery.attempts), 0))
                                   .group_by(Delivery.kind, Delivery.status)).all()
            ehr = dict(s.execute(select(EhrSnapshot.available, func.count())
                                 .group_by(EhrSnapshot.available)).all())
            timings = [t for t in s.scalars(select(Study.timings).where(Study.timings.is_not(None)))]

        c = CounterMetricFamily("diff3m_instances_received", "SOP instances received and stored")
        c.add_metric([], float(instances))
        yield c

        g = GaugeMetricFamily("diff3m_studies", "studies by pipeline status", labels=["status"])
        for st in StudyStatus:
            g.add_metric([st.value], float(by_status.get(st, 0)))
        yield g
        g = GaugeMetricFamily("diff3m_studies_abnormal", "studies whose latest result is abnormal")
        g.add_metric([], float(abnormal))
        yield g

        counts: dict[tuple[str, str], float] = {}
        failures = 0.0
        for kind, status, n, attempts in deliveries:
            counts[(DeliveryKind(kind).value, DeliveryStatus(status).value)] = float(n)
            # every attempt of an unfinished delivery failed; a done one failed all but its last
            failures += float(attempts) - (float(n) if status == DeliveryStatus.DONE else 0.0)
        g = GaugeMetricFamily("diff3m_deliveries", "outbox entries by kind and status",
                              labels=["kind", "status"])
        for k in DeliveryKind:
            for ds in DeliveryStatus:
                g.add_metric([k.value, ds.value], counts.get((k.value, ds.value), 0.0))
        yield g
        c = CounterMetricFamily("diff3m_delivery_failures", "failed delivery attempts (all outbox entries)")
        c.add_metric([], max(failures, 0.0))
        yield c
        g = GaugeMetricFamily("diff3m_deliveries_dead", "deliveries that gave up (retry them by hand)")
        g.add_metric([], sum(v for (_, st), v in counts.items() if st == DeliveryStatus.DEAD.value))
        yield g

        queued = float(by_status.get(StudyStatus.QUEUED, 0))
        pending = sum(v for (_, st), v in counts.items() if st == DeliveryStatus.PENDING.value)
        g = GaugeMetricFamily("diff3m_queue_depth", "queued studies + pending deliveries", labels=["queue"])
        g.add_metric(["studies"], queued)
        g.add_metric(["deliveries"], pending)
        yield g

        ok, total = float(ehr.get(True, 0)), float(sum(ehr.values()))
        g = GaugeMetricFamily("diff3m_ehr_snapshots", "EHR fetches by availability", labels=["available"])
        g.add_metric(["true"], ok)
        g.add_metric(["false"], total - ok)
        yield g
        g = GaugeMetricFamily("diff3m_ehr_availability_ratio", "share of EHR fetches that found the EHR")
        g.add_metric([], ok / total if total else 0.0)
        yield g

        h = HistogramMetricFamily("diff3m_stage_seconds", "pipeline stage latency (Study.timings)",
                                  labels=["stage"])
        for stage, (buckets, total_s) in stage_histogram(timings).items():
            h.add_metric([stage], buckets, total_s)
        yield h


class HttpMetrics:
    """In-process request counter and latency histogram, labelled by route template."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("diff3m_http_requests", "HTTP requests served by this web process",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("diff3m_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=HTTP_BUCKETS, registry=registry)

    def middleware(self) -> Middleware:
        """Count, time and log every request (route template only: no query string, no PHI)."""

        async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            t0 = time.perf_counter()
            status = 500
            try:
                response = await call_next(request)
                status = response.status_code
                return response
            finally:
                seconds = time.perf_counter() - t0
                route = getattr(request.scope.get("route"), "path", "unmatched")
                self.requests.labels(request.method, route, str(status)).inc()
                self.latency.labels(request.method, route).observe(seconds)
                log.info("request", extra={"method": request.method, "route": route, "status": status,
                                           "ms": round(seconds * 1000, 1)})

        return observe


def make_registry(settings: Settings) -> tuple[CollectorRegistry, HttpMetrics]:
    """A fresh registry with the database collector and this app's HTTP metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DatabaseCollector(settings))
    return registry, HttpMetrics(registry)


router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
