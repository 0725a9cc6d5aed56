"""Prometheus metrics of the embedded model server.

Names follow TGI's where TGI has one (``tgi_request_*``, ``tgi_batch_current_size``,
``tgi_queue_size``), so dashboards built for TGI read this server too; the
engine's own counters are ``candor_model_*``. Each app gets its own registry,
so several servers can live in one process (tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_TOKENS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048)


class _EngineCollector(Collector):
    def __init__(self, engine: Any):
        self._engine = engine

    def collect(self) -> Iterator[Any]:
        s = self._engine.stats
        yield GaugeMetricFamily("tgi_batch_current_size", "Rows in the running batches", value=s.running_rows)
        yield GaugeMetricFamily("tgi_queue_size", "Requests waiting for a batch slot", value=s.queued)
        yield CounterMetricFamily("candor_model_decode_steps", "Decode steps run", value=s.decode_steps)
        yield CounterMetricFamily(
            "candor_model_decode_rows", "Sum of batch sizes over decode steps", value=s.decode_rows
        )
        yield CounterMetricFamily("candor_model_prefills", "Prompts prefilled", value=s.prefills)
        yield CounterMetricFamily(
            "candor_model_prefill_passes", "Forward passes that prefilled prompts", value=s.prefill_passes
        )
        yield GaugeMetricFamily(
            "candor_model_max_prefill_rows", "Most prompts prefilled in one pass", value=s.max_prefill_rows
        )
        yield CounterMetricFamily("candor_model_generated_tokens", "Tokens generated", value=s.generated_tokens)
        yield GaugeMetricFamily(
            "candor_model_max_batch_rows", "Largest batch seen in a decode step", value=s.max_batch_rows
        )
        ready = 1 if self._engine.state == "ready" else 0
        yield GaugeMetricFamily("candor_model_ready", "1 once the model is loaded", value=ready)


class ServerMetrics:
    def __init__(self, engine: Any):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tgi_request_count", "Generation requests received", registry=r)
        self.success = Counter("tgi_request_success", "Generation requests that succeeded", registry=r)
        self.failure = Counter("tgi_request_failure", "Failed requests", ["err"], registry=r)
        self.duration = Histogram("tgi_request_duration", "Request duration in seconds", buckets=_SECONDS, registry=r)
        self.first_token = Histogram(
            "candor_time_to_first_token_seconds", "Time to the first token", buckets=_SECONDS, registry=r
        )
        self.generated = Histogram(
            "tgi_request_generated_tokens", "Generated tokens per request", buckets=_TOKENS, registry=r
        )
        self.input_length = Histogram(
            "tgi_request_input_length", "Input tokens per request", buckets=_TOKENS, registry=r
        )
        self.in_flight = Gauge("candor_requests_in_flight", "Generation requests in flight", registry=r)
        self.by_adapter = Counter("candor_adapter_requests", "Generation requests per adapter", ["adapter"], registry=r)
        r.register(_EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)
