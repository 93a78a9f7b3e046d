"""Prometheus metrics of the service, in the text exposition format (prometheus_client).

A registry of its own per app, so that two apps in one process (tests) never share counters.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fawkes_requests", "Cloak requests by HTTP code and outcome",
                                ("code", "status"), registry=r)
        self.latency = Histogram("fawkes_request_seconds", "Cloak request latency, first byte of the body to answer",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("fawkes_batch_size", "Photos per Cloaker.cloak call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("fawkes_batch_seconds", "Time of one Cloaker.cloak call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("fawkes_queue_depth", "Requests waiting for a batch (counted by --max-queue)",
                                 registry=r)
        self.uploads = Gauge("fawkes_uploads", "Request bodies being received (not counted by any queue)",
                             registry=r)
        self.pixels_in_flight = Gauge("fawkes_pixels_in_flight",
                                      "Decoded pixels held, queued or being cloaked (--max-pixels-in-flight)",
                                      registry=r)
        self.in_batch = Gauge("fawkes_in_batch", "Photos being cloaked now", registry=r)
        self.ready = Gauge("fawkes_ready", "1 once the models are loaded", registry=r)
        self.draining = Gauge("fawkes_draining", "1 after SIGTERM: finishing in-flight requests", registry=r)

    def count(self, code: int, status: str, seconds: float | None = None) -> None:
        self.requests.labels(str(code), status).inc()
        if seconds is not None:
            self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
