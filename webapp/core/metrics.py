"""`GET /metrics`: the server's state in Prometheus' text exposition format (prometheus-client).

Each app has its own `CollectorRegistry` (tests build several apps in one process). What the
job table and the engine know now (queue depth, jobs by state, memory, XLA compilations) is
read at scrape time by a collector; what happens between scrapes (a job's latency, a sampler
step's time, a run's batch size) is observed as it happens, through the job table's observer
hook (`JobTable.observer`). Every metric carries the label `process`: the JAX process index of
the server (0 unless the engine or the service says otherwise), so several hosts' series stay
apart. Behind the API key like every route but /health: a Prometheus scrape job sends it as a
bearer token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from jaxvideo import compile_events
from webapp.core.jobs import CANCELLED, COMPLETED, FAILED, GENERATING, QUEUED, ProgressFn
from webapp.core.openapi import RouteDoc

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

DOCS = (
    RouteDoc(
        "/metrics",
        "get",
        None,
        None,
        "Prometheus metrics, text exposition format (API key)",
        produces=("text/plain",),
    ),
)

EXTENSION = "jaxvideo.metrics"  # app.extensions key of the app's `Metrics`
# The classic text format, what Prometheus asks for and every version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds, from a 64 px CPU test job to a long video.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


def process_index(service: Any) -> str:
    """The JAX process index, as the service or its engine tells it (an int attribute or a
    method), without touching JAX; "0" when neither does."""
    for owner in (service, getattr(service, "engine", None)):
        value = getattr(owner, "process_index", None)
        if callable(value):
            value = value()
        if value is not None:
            return str(int(value))
    return "0"


class Metrics:
    """An app's registry: the job table's observer (`batch_started`, `job_finished`) and the
    collector of what is read at scrape time."""

    def __init__(self, service: Any) -> None:
        self.process = process_index(service)
        self.registry = CollectorRegistry()
        p = ["process"]
        self._latency = Histogram(
            "jaxvideo_job_latency_seconds",
            "Seconds from a job's submission to its end, by how it ended",
            ["process", "status"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self._run = Histogram(
            "jaxvideo_job_run_seconds",
            "Seconds a job spent generating (its whole run, model loading included)",
            ["process", "status"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self._finished = Counter(
            "jaxvideo_jobs_finished",
            "Jobs that ended, by status",
            ["process", "status"],
            registry=self.registry,
        )
        self._step = Histogram(
            "jaxvideo_step_seconds",
            "Seconds per sampler step: between successive step reports of a running job",
            p,
            registry=self.registry,
            buckets=STEP_BUCKETS,
        ).labels(self.process)
        self._batch = Histogram(
            "jaxvideo_batch_size",
            "Jobs per run of the worker (compatible queued jobs run as one batch)",
            p,
            registry=self.registry,
            buckets=BATCH_BUCKETS,
        ).labels(self.process)
        for status in (COMPLETED, FAILED, CANCELLED):  # every series exists from the start
            self._finished.labels(self.process, status)
        self.registry.register(_Collector(service.engine, service.jobs, self.process))

    # -- the job table's observer -----------------------------------------------------------

    def batch_started(self, size: int) -> ProgressFn:
        self._batch.observe(size)
        return _StepClock(self._step)

    def job_finished(self, status: str, latency_s: float, run_s: float | None) -> None:
        self._finished.labels(self.process, status).inc()
        self._latency.labels(self.process, status).observe(latency_s)
        if run_s is not None:
            self._run.labels(self.process, status).observe(run_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StepClock:
    """One run's progress reports -> the seconds per step between successive reports. A report
    that does not move on from the last one (another stage, a new total, a phase such as
    loading_model) starts timing afresh, so the first step of a stage, which holds its
    compilation, is never counted."""

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._last: tuple[int, int, float] | None = None  # (step, total, monotonic time)

    def __call__(self, step: int, total: int, phase: str | None = None) -> None:
        now = time.monotonic()
        last, self._last = self._last, (step, total, now)
        if phase is not None or step <= 0:
            self._last = None
        elif last is not None and total == last[1] and step > last[0]:
            self._histogram.observe((now - last[2]) / (step - last[0]))


class FollowerMetrics:
    """The registry of a follower process of a multi-host slice (webapp/core/follower.py):
    no job table there, only its compilations and memory."""

    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(engine, None, process_index(engine)))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    """What is read at each scrape: the job table's counts (process 0 only), XLA
    compilations, memory."""

    def __init__(self, engine: Any, jobs: Any, process: str) -> None:
        self._engine = engine
        self._jobs = jobs
        self._process = process

    def collect(self) -> Iterator[Metric]:
        if self._jobs is not None:
            yield from self._job_counts()
        yield from self._compilations()
        yield from self._memory()

    def _job_counts(self) -> Iterator[Metric]:
        p, jobs = self._process, self._jobs
        counts = jobs.counts()
        depth = GaugeMetricFamily(
            "jaxvideo_queue_depth", "Jobs queued, not yet generating", labels=["process"]
        )
        depth.add_metric([p], counts.get(QUEUED, 0))
        yield depth
        by_state = GaugeMetricFamily(
            "jaxvideo_jobs", "Jobs queued or generating, by state", labels=["process", "state"]
        )
        for state in (QUEUED, GENERATING):
            by_state.add_metric([p, state], counts.get(state, 0))
        yield by_state
        limit = GaugeMetricFamily(
            "jaxvideo_queue_limit",
            "Jobs that may be queued or generating at once (server.max_queue_size)",
            labels=["process"],
        )
        limit.add_metric([p], jobs.max_queue_size)
        yield limit

    def _compilations(self) -> Iterator[Metric]:
        p, stats = self._process, compile_events.snapshot()
        count = CounterMetricFamily(
            "jaxvideo_xla_compilations",
            "XLA compilations in this process, persistent-cache loads included",
            labels=["process"],
        )
        count.add_metric([p], stats.compilations)
        yield count
        hits = CounterMetricFamily(
            "jaxvideo_xla_compilation_cache_hits",
            "XLA compilations the persistent compilation cache answered",
            labels=["process"],
        )
        hits.add_metric([p], stats.cache_hits)
        yield hits
        seconds = HistogramMetricFamily(
            "jaxvideo_xla_compile_seconds",
            "Seconds per XLA compilation (or persistent-cache load)",
            labels=["process"],
        )
        buckets = [(floatToGoString(bound), count) for bound, count in stats.buckets]
        seconds.add_metric([p], buckets, stats.seconds)
        yield seconds

    def _memory(self) -> Iterator[Metric]:
        """Measured bytes per device where the devices report them (GPU, TPU), and the memory
        plan's figures (on CPU, the only ones)."""
        engine, p = self._engine, self._process
        try:
            in_use = (
                engine.device_memory_in_use() if hasattr(engine, "device_memory_in_use") else {}
            )
            plan = engine.memory() if hasattr(engine, "memory") else {}
        except Exception:  # a scrape must answer; the log says what failed
            log.exception("metrics: cannot read device memory")
            return
        if in_use:
            measured = GaugeMetricFamily(
                "jaxvideo_device_memory_bytes_in_use",
                "Bytes in use on each device of this process, as the device reports",
                labels=["process", "device"],
            )
            for device, size in sorted(in_use.items()):
                measured.add_metric([p, device], size)
            yield measured
        if plan:
            planned = GaugeMetricFamily(
                "jaxvideo_memory_plan_bytes",
                "The memory plan per device: the device's bytes, those the plan may use, "
                "and the loaded models' weights",
                labels=["process", "kind"],
            )
            for key, size in plan.items():
                planned.add_metric([p, key.removesuffix("_bytes")], size)
            yield planned


@bp.get("/metrics")
def metrics() -> Response:
    body = current_app.extensions[EXTENSION].exposition()
    return Response(body, content_type=CONTENT_TYPE)
