"""Prometheus metrics for one server: requests by code, latency, batch sizes, errors, version.

Each server owns its own `CollectorRegistry` (no module-level globals), so tests that start several
servers in one process never clash over metric names.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily

from gitops.serve.version import buckets_for

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _Cell:
    """One labelled series of a `LoopCounter` / `LoopHistogram`: plain numbers, no lock."""

    __slots__ = ("value", "counts", "sum", "bounds")

    def __init__(self, bounds: tuple[float, ...] = ()):
        self.value = 0.0
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); the last is +Inf
        self.sum = 0.0

    def inc(self, amount: float = 1) -> None:
        """Add `amount` (>= 0) to a counter."""
        self.value += amount

    def observe(self, amount: float) -> None:
        """Record one observation in a histogram (its bucket: the first upper bound >= `amount`)."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _LoopMetric:
    """A counter or histogram for the server's event loop: the per-request cost is a few additions.

    prometheus_client's own metrics take a lock on every `inc`/`observe` (they may be updated from any
    thread); on the predict path of a small model those locks and calls cost as much as the model. These
    are updated from the event loop only and rendered the same way (a custom collector), with the
    same `labels(...).inc()` / `.observe()` calls.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 buckets: tuple[float, ...] | None = None, registry: CollectorRegistry | None = None):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets) if buckets is not None else None
        self._cells: dict[tuple[str, ...], _Cell] = {}
        if not self.labelnames:
            self._cells[()] = _Cell(self.bounds or ())
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _Cell:
        """The series for these label values (created at zero on first use)."""
        key = tuple(str(v) for v in values)
        cell = self._cells.get(key)
        if cell is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {key}")
            cell = self._cells[key] = _Cell(self.bounds or ())
        return cell

    def inc(self, amount: float = 1) -> None:
        """`inc` on the unlabelled series."""
        self._cells[()].inc(amount)

    def observe(self, amount: float) -> None:
        """`observe` on the unlabelled series."""
        self._cells[()].observe(amount)

    def describe(self) -> list:
        """The metric family without samples (what the registry checks names with)."""
        return [self._family()]

    def collect(self) -> list:
        """The metric family with one sample set per labelled series (the registry's collector call)."""
        family = self._family()
        for key, cell in list(self._cells.items()):
            if self.bounds is None:
                family.add_metric(list(key), cell.value)
            else:
                cumulative, buckets = 0, []
                for bound, count in zip((*self.bounds, float("inf")), cell.counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                family.add_metric(list(key), buckets, cell.sum)
        return [family]

    def _family(self):
        if self.bounds is None:
            return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


class ServerMetrics:
    """The counters, histograms and gauges `gitops serve` exposes on `/metrics`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # updated on every predict, from the event loop: lock-free (see _LoopMetric)
        self.requests = _LoopMetric("gitops_serve_requests", "HTTP requests by route and status code.",
                                    ("route", "code"), registry=r)
        self.latency = _LoopMetric("gitops_serve_request_latency_seconds", "Predict request latency.",
                                   ("route",), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = _LoopMetric("gitops_serve_batch_size", "Rows per executed batch (before padding).",
                                      buckets=tuple(float(x) for x in buckets_for(max_batch_size)), registry=r)
        self.instances = _LoopMetric("gitops_serve_instances", "Instances predicted.", registry=r)
        # also updated from the follower's thread: prometheus_client's own (locked) metrics
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
