"""Prometheus metrics of the service (prometheus_client), exposed at GET /metrics.

    multikpi_requests_total{endpoint, status}        requests answered
    multikpi_request_errors_total{endpoint, status}  of which 4xx / 5xx
    multikpi_request_duration_seconds{endpoint}      latency histogram (from the request's arrival
                                                     at the app to its last response byte)
    multikpi_candidates_total                        candidates ranked
    multikpi_oov_values_total{column}                categorical values sent that were out of vocabulary
    multikpi_reloads_total{result}                   model reloads: ok | refused
    multikpi_model_info{version, backend}            1 for the model being served

`endpoint` is one of the service's routes or "other" (a scanner's random paths must not create
new series). Each app has its own registry. With several uvicorn workers, `multikpi serve` sets
PROMETHEUS_MULTIPROC_DIR before the workers start: every worker writes its values there and
/metrics, answered by any worker, adds them up (prometheus_client's multiprocess mode).
"""
from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from multikpi.extras import import_extra

ENDPOINTS = ("/rank", "/predict", "/health", "/metadata", "/metrics", "/admin/reload", "/openapi.json", "/docs")
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class ServiceMetrics:
    """The service's counters and histogram in their own registry; `exposition()` -> (bytes, type)."""

    def __init__(self) -> None:
        prometheus = import_extra("prometheus_client", "multikpi serve")
        self._prometheus = prometheus
        prometheus.disable_created_metrics()  # no `_created` series next to each counter
        self.registry = prometheus.CollectorRegistry()
        counter, histogram = prometheus.Counter, prometheus.Histogram
        self.requests = counter("multikpi_requests", "Requests answered.", ["endpoint", "status"],
                                registry=self.registry)
        self.errors = counter("multikpi_request_errors", "Requests answered with a 4xx or 5xx status.",
                              ["endpoint", "status"], registry=self.registry)
        self.latency = histogram("multikpi_request_duration_seconds", "Request latency in seconds.", ["endpoint"],
                                 buckets=BUCKETS, registry=self.registry)
        self.candidates = counter("multikpi_candidates", "Candidates ranked.", registry=self.registry)
        self.oov = counter("multikpi_oov_values", "Categorical values sent that were out of vocabulary.",
                           ["column"], registry=self.registry)
        self.reloads = counter("multikpi_reloads", "Model reloads.", ["result"], registry=self.registry)
        self.model = prometheus.Gauge("multikpi_model_info", "The model being served (value 1).",
                                      ["version", "backend"], registry=self.registry, multiprocess_mode="liveall")

    def serving(self, version: str, backend: str, previous: str | None = None) -> None:
        if previous is not None and previous != version:
            self.model.remove(previous, backend)
        self.model.labels(version, backend).set(1)

    def count_oov(self, oov: dict[str, int]) -> None:
        for column, count in oov.items():
            if count:
                self.oov.labels(column).inc(count)

    def exposition(self) -> tuple[bytes, str]:
        prometheus = self._prometheus
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = prometheus.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return prometheus.generate_latest(registry), prometheus.CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware: counts every HTTP request by endpoint and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope.get("path", "") if scope.get("path", "") in ENDPOINTS else "other"
        status = [500]
        start = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(endpoint, str(status[0])).inc()
