"""`GET /metrics` (webapp/core/metrics.py): the job table's events and state in Prometheus' text
format, first with plain Python jobs (no models), then from an app behind an API key and from
the real server after a real generation."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jaxvideo import compile_events
from jaxvideo.errors import Cancelled
from webapp.core.jobs import Batch, JobTable
from webapp.core.metrics import Metrics, process_index


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by (sample name, its labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    labels.setdefault("process", "0")
    return found[(name, frozenset(labels.items()))]


def stepping(steps: int, delay: float = 0.01):
    def run(progress, cancelled):
        for step in range(1, steps + 1):
            time.sleep(delay)
            progress(step, steps)
            if cancelled() and step < steps:
                raise Cancelled()
        return "done"

    return run


# -- the observer and collector, on a job table of plain Python jobs ------------------------


@pytest.fixture
def observed():
    """(table, metrics) with an engine that says it is process 3 and knows no memory."""
    table = JobTable(max_queue_size=8, job_retention_s=60, expired_retention_s=60)
    metrics = Metrics(SimpleNamespace(jobs=table, engine=SimpleNamespace(process_index=3)))
    table.observer = metrics
    yield table, metrics
    table.shutdown(join_s=5)


def scrape(metrics: Metrics) -> dict:
    return samples(metrics.exposition().decode())


def test_queue_gauges_count_queued_and_generating_jobs(observed):
    table, metrics = observed
    gate, started = threading.Event(), threading.Event()

    def blocked(progress, cancelled):
        started.set()
        assert gate.wait(10)

    first = table.submit("img_gen", blocked)
    assert started.wait(10)
    queued = [table.submit("img_gen", stepping(1)).id for _ in range(2)]
    now = scrape(metrics)
    assert value(now, "jaxvideo_queue_depth", process="3") == 2
    assert value(now, "jaxvideo_jobs", process="3", state="queued") == 2
    assert value(now, "jaxvideo_jobs", process="3", state="generating") == 1
    assert value(now, "jaxvideo_queue_limit", process="3") == 8
    table.cancel(queued[0])  # cancelled while queued: it never ran
    gate.set()
    assert table.wait(queued[1], 10).status == "completed"
    assert table.wait(first.id, 10).status == "completed"
    done = scrape(metrics)
    assert value(done, "jaxvideo_queue_depth", process="3") == 0
    assert value(done, "jaxvideo_jobs", process="3", state="generating") == 0
    finished = "jaxvideo_jobs_finished_total"
    assert value(done, finished, process="3", status="completed") == 2
    assert value(done, finished, process="3", status="cancelled") == 1
    assert value(done, finished, process="3", status="failed") == 0
    # Latency covers every job; run time only those that ran.
    latency = "jaxvideo_job_latency_seconds_count"
    assert value(done, latency, process="3", status="cancelled") == 1
    assert value(done, latency, process="3", status="completed") == 2
    run = "jaxvideo_job_run_seconds_count"
    assert not any(name == run and ("status", "cancelled") in labels for name, labels in done)
    assert value(done, run, process="3", status="completed") == 2
    assert value(done, "jaxvideo_job_run_seconds_sum", process="3", status="completed") > 0


def test_steps_and_batch_sizes_are_observed_per_run(observed):
    table, metrics = observed
    gate, started = threading.Event(), threading.Event()

    def hold(progress, cancelled):
        started.set()
        assert gate.wait(10)

    def run_batch(items, progress, cancelled):
        progress(0, 0, phase="loading_model")  # not a step
        for step in range(1, 5):
            time.sleep(0.02)
            progress(step, 4)
        return [f"{item} done" for item in items]

    table.submit("img_gen", hold)
    assert started.wait(10)
    batched = [
        table.submit("img_gen", stepping(1), batch=Batch("k", i, run_batch, 4)).id for i in range(3)
    ]
    alone = table.submit("img_gen", stepping(3, delay=0.02)).id
    gate.set()
    for job_id in [*batched, alone]:
        assert table.wait(job_id, 10).status == "completed"
    found = scrape(metrics)
    # Three runs: the holder alone, the three batched jobs as one, then the last job alone.
    assert value(found, "jaxvideo_batch_size_count", process="3") == 3
    assert value(found, "jaxvideo_batch_size_sum", process="3") == 5
    assert value(found, "jaxvideo_batch_size_bucket", process="3", le="1.0") == 2
    # Steps 1->2->3->4 of the batch and 1->2->3 of the last job: 5 intervals of ~20 ms.
    assert value(found, "jaxvideo_step_seconds_count", process="3") == 5
    total = value(found, "jaxvideo_step_seconds_sum", process="3")
    assert 5 * 0.015 < total < 5 * 1.0
    assert value(found, "jaxvideo_step_seconds_bucket", process="3", le="0.005") == 0


def test_the_process_label_comes_from_the_service_or_engine_without_jax():
    assert process_index(SimpleNamespace(engine=SimpleNamespace())) == "0"
    assert process_index(SimpleNamespace(engine=SimpleNamespace(process_index=2))) == "2"
    assert process_index(SimpleNamespace(engine=SimpleNamespace(process_index=lambda: 5))) == "5"
    service = SimpleNamespace(process_index=1, engine=SimpleNamespace(process_index=2))
    assert process_index(service) == "1"


def test_compile_events_count_every_xla_compilation():
    import jax
    import jax.numpy as jnp

    compile_events.install()
    compile_events.install()  # once per process, however often asked
    before = compile_events.snapshot()
    shape = (int(time.time_ns() % 1000) + 7,)  # a shape no earlier test compiled
    jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(shape)).block_until_ready()
    after = compile_events.snapshot()
    assert after.compilations > before.compilations
    assert after.seconds > before.seconds
    assert after.buckets[-1] == (float("inf"), after.compilations)


# -- an app behind an API key ---------------------------------------------------------------


def test_metrics_need_the_api_key_and_are_documented(auth_client):
    assert auth_client.get("/metrics").status_code == 401
    response = auth_client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(response.get_data(as_text=True))
    assert value(found, "jaxvideo_queue_depth") == 0
    assert value(found, "jaxvideo_jobs", state="generating") == 0
    # CPU devices report no bytes in use: the plan's figures stand in.
    assert value(found, "jaxvideo_memory_plan_bytes", kind="loaded_weights") > 0
    assert value(found, "jaxvideo_memory_plan_bytes", kind="device") > 0
    assert not any(name == "jaxvideo_device_memory_bytes_in_use" for name, _ in found)
    spec = auth_client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json
    operation = spec["paths"]["/metrics"]["get"]
    assert operation["security"] == [{"bearer": []}]
    assert "text/plain" in operation["responses"]["200"]["content"]


# -- the real server ------------------------------------------------------------------------


def test_a_generation_shows_in_the_real_servers_metrics(server):
    before = samples(server.get("/metrics").text)
    body = {"prompt": "a fox", "seed": 5}  # the server's 64 px, 2-step defaults
    response = server.post("/sdcpp/v1/img_gen", json=body)
    assert response.status_code == 202, response.text
    done = server.poll(response.json()["id"], until=("completed", "failed", "cancelled"))[-1]
    assert done["status"] == "completed", done
    after = samples(server.get("/metrics").text)

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset({"process": "0", **labels}.items()))
        return after[key] - before.get(key, 0.0)  # a first job's series appear with it

    assert grew("jaxvideo_jobs_finished_total", status="completed") == 1
    assert grew("jaxvideo_job_latency_seconds_count", status="completed") == 1
    assert grew("jaxvideo_job_run_seconds_count", status="completed") == 1
    assert grew("jaxvideo_batch_size_count") == 1
    assert grew("jaxvideo_step_seconds_count") >= 1  # two steps: at least one interval
    assert value(after, "jaxvideo_xla_compilations_total") > 0
    assert value(after, "jaxvideo_xla_compile_seconds_count") > 0
    # Nothing queued or generating once this job, the last one submitted, has finished.
    assert value(after, "jaxvideo_queue_depth") == 0
    assert value(after, "jaxvideo_jobs", state="queued") == 0
    assert value(after, "jaxvideo_jobs", state="generating") == 0
    # Every series carries the process label.
    assert all(dict(labels).get("process") == "0" for _, labels in after)
