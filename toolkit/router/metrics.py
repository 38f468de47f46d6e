"""The router's Prometheus metrics (prometheus-client), on a registry of its own.

Counters and histograms the hot path touches are resolved to their label
children once, here, so a request pays a dict lookup and an observe().
GPU figures and backend states are read when Prometheus scrapes, from the
sampler's snapshot and the breakers, so they are never out of date.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .breaker import STATES
from .policy import REASONS

# A decision takes microseconds; a request milliseconds to minutes.
DECISION_BUCKETS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)
REQUEST_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ENDPOINTS = ("chat", "completions")
CAUSES = ("connect", "timeout", "http_5xx", "http_429", "broken")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, router) -> None:
        disable_created_metrics()  # the *_created series only double the page
        self.registry = registry = CollectorRegistry()
        names = router.names  # the backends: the local ones, then the cloud
        decisions = Counter("agentkit_router_decisions", "Routing decisions by backend and reason",
                            ["backend", "reason"], registry=registry)
        self.decisions = {(b, r): decisions.labels(b, r) for b in names for r in REASONS}
        self.decision_seconds = Histogram("agentkit_router_decision_seconds", "Time to decide one request's backend",
                                          buckets=DECISION_BUCKETS, registry=registry)
        request_seconds = Histogram("agentkit_router_request_seconds",
                                    "Time from a request's arrival to its last byte, by endpoint and backend",
                                    ["endpoint", "backend"], buckets=REQUEST_BUCKETS, registry=registry)
        self.request_seconds = {(e, b): request_seconds.labels(e, b) for e in ENDPOINTS for b in names}
        self.responses = Counter("agentkit_router_responses", "Responses by endpoint, backend and HTTP status",
                                 ["endpoint", "backend", "code"], registry=registry)
        self._responses: dict[tuple[str, str, int], object] = {}
        failovers = Counter("agentkit_router_failovers", "Requests moved to another backend after a failure",
                            ["from_backend", "to_backend"], registry=registry)
        self.failovers = {(a, b): failovers.labels(a, b) for a in names for b in names if a != b}
        hedges = Counter("agentkit_router_hedges", "Second attempts sent because the first had no first byte "
                         "within hedge_after", ["from_backend", "to_backend"], registry=registry)
        self.hedges = {(a, b): hedges.labels(a, b) for a in names for b in names if a != b}
        failures = Counter("agentkit_router_backend_failures", "Failed attempts (traffic and probes) by backend and cause",
                           ["backend", "cause"], registry=registry)
        self.failures = {(b, c): failures.labels(b, c) for b in names for c in CAUSES}
        self.retries = Counter("agentkit_router_retries", "Rounds retried after every backend failed (after a backoff)",
                               registry=registry)
        self.rejected = Counter("agentkit_router_rejected_requests", "Requests refused with a 4xx before routing",
                                ["code"], registry=registry)
        registry.register(_Live(router))

    def response(self, endpoint: str, backend: str, status: int):
        """The responses counter's child for these labels, made once."""
        key = (endpoint, backend, status)
        child = self._responses.get(key)
        if child is None:
            child = self._responses[key] = self.responses.labels(endpoint, backend, str(status))
        return child

    def expose(self) -> bytes:
        return generate_latest(self.registry)


class _Live:
    """Gauges read at scrape time: backend states, load, the GPU snapshot."""

    def __init__(self, router) -> None:
        self.router = router

    def describe(self):
        return []

    def collect(self):
        router = self.router
        up = GaugeMetricFamily("agentkit_router_backend_up", "1 while the backend's circuit lets traffic through",
                               labels=["backend"])
        state = GaugeMetricFamily("agentkit_router_backend_state", "The backend's circuit state (1 for the current one)",
                                  labels=["backend", "state"])
        cooldown = GaugeMetricFamily("agentkit_router_backend_cooldown_seconds",
                                     "Seconds until an open circuit lets a probe through (0 unless open)",
                                     labels=["backend"])
        opens = GaugeMetricFamily("agentkit_router_backend_open_for_seconds",
                                  "How long the circuit stays open when it opens next (doubles on each re-open)",
                                  labels=["backend"])
        full = GaugeMetricFamily("agentkit_router_backend_full",
                                 "1 while the backend's own load signal (/slots, /metrics) says it takes no more",
                                 labels=["backend"])
        inflight = GaugeMetricFamily("agentkit_router_inflight", "Requests in flight by backend", labels=["backend"])
        reserved = GaugeMetricFamily("agentkit_router_reserved_bytes",
                                     "GPU memory the in-flight requests to a local backend reserved (KV cache estimate)",
                                     labels=["backend"])
        view = router.view
        for i, name in enumerate(router.names):
            breaker = router.breakers[name]
            up.add_metric([name], 1.0 if breaker.up else 0.0)
            for s in STATES:
                state.add_metric([name, s], 1.0 if breaker.state == s else 0.0)
            cooldown.add_metric([name], breaker.describe().get("retry_in_seconds", 0.0))
            opens.add_metric([name], breaker.open_for)
            full.add_metric([name], 1.0 if view.full[i] else 0.0)
            inflight.add_metric([name], float(view.inflight[i]))
            if i < len(router.config.locals):
                reserved.add_metric([name], float(view.reserved[i]))
        yield from (up, state, cooldown, opens, full, inflight, reserved)
        yield GaugeMetricFamily("agentkit_router_local_reserved_bytes",
                                "GPU memory the in-flight local requests reserved, all local backends together",
                                value=float(sum(view.reserved)))

        gpu = router.gpu
        yield GaugeMetricFamily("agentkit_router_nvml_available", "1 when free GPU memory is read through NVML",
                                value=1.0 if gpu.available else 0.0)
        snapshot = gpu.latest() if gpu.available else None
        free = GaugeMetricFamily("agentkit_router_gpu_free_bytes", "Free GPU memory in the latest NVML snapshot",
                                 labels=["gpu", "name"])
        total = GaugeMetricFamily("agentkit_router_gpu_total_bytes", "GPU memory in all", labels=["gpu", "name"])
        if snapshot is not None:
            for index, (f, t, n) in enumerate(zip(snapshot.free, snapshot.total, snapshot.names)):
                free.add_metric([str(index), n], float(f))
                total.add_metric([str(index), n], float(t))
        yield free
        yield total
        age = float("nan") if snapshot is None else time.monotonic() - snapshot.taken
        yield GaugeMetricFamily("agentkit_router_gpu_snapshot_age_seconds",
                                "Age of the latest NVML snapshot (NaN: none)", value=age)
