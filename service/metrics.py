"""Prometheus metrics of the API (its own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "candor_http_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "candor_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.answers = Counter(
            "candor_answers", "Answers given", ["collection", "refused", "layer", "adapter"], registry=self.registry
        )
        self.failures = Counter("candor_answer_failures", "Answers that failed", ["reason"], registry=self.registry)
        self.flags = Counter("candor_flags", "Feedback received", ["verdict"], registry=self.registry)
        self.stage = Histogram(
            "candor_answer_stage_seconds",
            "Time per answer stage",
            ["stage"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )

    def observe_answer(self, result: object, collection: str) -> None:
        r = result
        self.answers.labels(
            collection, str(r.refused).lower(), r.refusal_layer or "", r.model.get("adapter") or ""
        ).inc()
        for stage in ("retrieval", "generation", "total"):
            self.stage.labels(stage).observe(r.timings_ms[stage] / 1000)
