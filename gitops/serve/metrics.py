"""Prometheus metrics for one server: requests by code, latency, batch sizes, errors, version.

Each server owns its own `CollectorRegistry` (no module-level globals), so tests that start several
servers in one process never clash over metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gitops.serve.version import buckets_for

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ServerMetrics:
    """The counters, histograms and gauges `gitops serve` exposes on `/metrics`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("gitops_serve_requests", "HTTP requests by route and status code.",
                                ["route", "code"], registry=r)
        self.latency = Histogram("gitops_serve_request_latency_seconds", "Predict request latency.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("gitops_serve_batch_size", "Rows per executed batch (before padding).",
                                    buckets=tuple(float(x) for x in buckets_for(max_batch_size)), registry=r)
        self.instances = Counter("gitops_serve_instances", "Instances predicted.", registry=r)
        self.errors = Counter("gitops_serve_errors", "Failed requests and load failures by kind.",
                              ["kind"], registry=r)
        self.version_info = Gauge("gitops_serve_model_version_info",
                                  "1 for the version now serving, with its labels.",
                                  ["model", "version", "version_number", "training_fingerprint"], registry=r)
        self.switches = Counter("gitops_serve_version_switches", "Times the served version changed.",
                                registry=r)
        self.ready = Gauge("gitops_serve_ready", "1 when a warmed version is serving.", registry=r)

    def set_version(self, model: str, version: str, number: int, fingerprint: str) -> None:
        """Show `version` as the one serving (the info gauge keeps one label set) and mark the server ready."""
        self.version_info.clear()
        self.version_info.labels(model, version, str(number), fingerprint).set(1)
        self.ready.set(1)

    def render(self) -> bytes:
        """The whole registry in Prometheus' text exposition format (served with `content_type`)."""
        return generate_latest(self.registry)
