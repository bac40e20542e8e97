"""Request batching in the job table, with plain Python run functions and real threads."""

from __future__ import annotations

import threading
import time

import pytest

from jaxvideo.errors import Cancelled, InvalidRequest
from webapp.core.jobs import INTERRUPTED, Batch, JobTable


@pytest.fixture
def table():
    jobs = JobTable(max_queue_size=16, job_retention_s=60, expired_retention_s=60)
    yield jobs
    jobs.shutdown(join_s=5)


class Runner:
    """A batch runner shaped like Engine.generate_batch: shared progress after each step, a
    stop only when every item is cancelled, one result (or exception) per item."""

    def __init__(self, steps: int = 1, delay: float = 0.0, outcomes: dict | None = None):
        self.steps, self.delay, self.outcomes = steps, delay, outcomes or {}
        self.calls: list[tuple] = []
        self.stepped = threading.Event()  # set once a batch finished its first step

    def __call__(self, items, progress, cancelled):
        self.calls.append(tuple(items))
        for step in range(1, self.steps + 1):
            time.sleep(self.delay)
            progress(step, self.steps)
            self.stepped.set()
            if all(check() for check in cancelled) and step < self.steps:
                raise Cancelled()
        return [self.outcomes.get(item, f"{item} batched") for item in items]

    def alone(self, item):
        """The job's own run, used when no partner was queued with it."""

        def run(progress, cancelled):
            self.calls.append(item)
            return f"{item} alone"

        return run


def submit(table, runner: Runner, item: str, key: str = "a", limit: int = 4):
    return table.submit("img_gen", runner.alone(item), batch=Batch(key, item, runner, limit)).id


def hold(table: JobTable) -> threading.Event:
    """Occupies the worker with an unbatchable job until the returned gate is set."""
    gate, started = threading.Event(), threading.Event()

    def run(progress, cancelled):
        started.set()
        assert gate.wait(10), "test gate never opened"

    table.submit("img_gen", run)
    assert started.wait(10)
    return gate


def wait_step(table: JobTable, job_id: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = table.get(job_id)
        if view.status == "generating" and view.step >= 1:
            return view
        time.sleep(0.005)
    raise AssertionError(f"{job_id} never generated a step: {table.get(job_id)}")


def test_equal_keys_batch_up_to_the_limit_and_other_keys_keep_their_order(table):
    runner = Runner()
    gate = hold(table)
    order = [("a1", "a"), ("b1", "b"), ("a2", "a"), ("a3", "a"), ("b2", "b"), ("a4", "a")]
    ids = {item: submit(table, runner, item, key, limit=3) for item, key in order}
    gate.set()
    views = {item: table.wait(job_id, 10) for item, job_id in ids.items()}
    # a1 takes the next two a's (limit 3); b1 then runs with b2, and a4 is left alone.
    assert runner.calls == [("a1", "a2", "a3"), ("b1", "b2"), "a4"]
    assert {item: view.result for item, view in views.items()} == {
        "a1": "a1 batched",
        "a2": "a2 batched",
        "a3": "a3 batched",
        "b1": "b1 batched",
        "b2": "b2 batched",
        "a4": "a4 alone",
    }
    assert all(view.status == "completed" and view.error is None for view in views.values())
    assert views["a1"].started == views["a2"].started == views["a3"].started


def test_a_limit_of_one_never_batches(table):
    runner = Runner()
    gate = hold(table)
    ids = [submit(table, runner, item, limit=1) for item in ("x", "y")]
    gate.set()
    assert [table.wait(i, 10).result for i in ids] == ["x alone", "y alone"]
    assert runner.calls == ["x", "y"]


def test_a_batch_generates_together_shares_progress_and_counts_as_generating(table):
    runner = Runner(steps=400, delay=0.005)
    gate = hold(table)
    first, second = (submit(table, runner, item) for item in ("p", "q"))
    queued = table.submit("img_gen", runner.alone("other"))  # no batch: waits its turn
    gate.set()
    assert runner.stepped.wait(10)
    assert table.counts() == {"queued": 1, "generating": 2}
    assert table.current().id == first
    views = [table.get(i) for i in (first, second)]
    assert all(v.status == "generating" and v.queue_position == 0 for v in views)
    assert table.get(queued.id).queue_position == 1
    # A1111's interrupt stops the current job only: the other client's job in the same batch
    # carries on to its own result.
    flagged = table.cancel_running(INTERRUPTED)
    assert flagged.id == first
    finals = [table.wait(i, 10) for i in (first, second)]
    assert [f.status for f in finals] == ["cancelled", "completed"]
    assert finals[0].error == INTERRUPTED and finals[1].result == "q batched"
    assert table.wait(queued.id, 10).result == "other alone"


def test_a_job_cancelled_inside_a_batch_ends_cancelled_while_the_others_complete(table):
    runner = Runner(steps=40, delay=0.005)
    gate = hold(table)
    ids = [submit(table, runner, item) for item in ("m", "n", "o")]
    gate.set()
    wait_step(table, ids[1])
    table.cancel(ids[1])
    views = [table.wait(i, 10) for i in ids]
    assert [v.status for v in views] == ["completed", "cancelled", "completed"]
    assert views[1].result is None
    assert views[1].error == {"code": "cancelled", "message": "job cancelled by client"}
    assert [views[0].result, views[2].result] == ["m batched", "o batched"]
    assert all(v.step == 40 for v in views)  # the others kept the run going to the end


def test_when_every_job_of_a_batch_is_cancelled_the_run_stops(table):
    runner = Runner(steps=400, delay=0.005)
    gate = hold(table)
    ids = [submit(table, runner, item) for item in ("s", "t")]
    gate.set()
    wait_step(table, ids[0])
    for job_id in ids:
        table.cancel(job_id)
    views = [table.wait(i, 10) for i in ids]
    assert [v.status for v in views] == ["cancelled", "cancelled"]
    assert all(v.step < 400 for v in views)
    assert table.counts() == {"queued": 0, "generating": 0}


def test_each_job_of_a_batch_fails_with_its_own_error(table):
    outcomes = {"bad": RuntimeError("out of memory\nlong XLA trace"), "odd": InvalidRequest("no")}
    runner = Runner(outcomes=outcomes)
    gate = hold(table)
    ids = [submit(table, runner, item) for item in ("good", "bad", "odd")]
    gate.set()
    views = [table.wait(i, 10) for i in ids]
    assert [v.status for v in views] == ["completed", "failed", "failed"]
    assert views[0].result == "good batched" and views[1].result is None
    assert views[1].error == {"code": "generation_failed", "message": "out of memory"}
    assert views[2].error == {"code": "invalid_request", "message": "no"}


def test_a_batch_call_that_raises_fails_every_job_and_the_worker_goes_on(table):
    def explode(items, progress, cancelled):
        raise RuntimeError("device lost")

    gate = hold(table)
    ids = [
        table.submit("img_gen", Runner().alone(i), batch=Batch("k", i, explode, 4)).id
        for i in ("u", "v")
    ]
    gate.set()
    views = [table.wait(i, 10) for i in ids]
    assert [v.error for v in views] == [{"code": "generation_failed", "message": "device lost"}] * 2
    assert table.wait(table.submit("img_gen", Runner().alone("w")).id, 10).result == "w alone"
