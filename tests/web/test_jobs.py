"""The job table with plain Python run functions and real threads (no models, no mocks)."""

from __future__ import annotations

import re
import threading
import time

import pytest

from jaxvideo.errors import Cancelled, InvalidRequest
from webapp.core.jobs import (
    INTERRUPTED,
    SKIPPED,
    JobExists,
    JobExpired,
    JobNotFound,
    JobTable,
    QueueFull,
    ShuttingDown,
)


@pytest.fixture
def table():
    jobs = JobTable(max_queue_size=4, job_retention_s=60, expired_retention_s=60)
    yield jobs
    jobs.shutdown(join_s=5)


def blocked(gate: threading.Event, started: threading.Event | None = None):
    """A run function that waits for `gate` (and says when it started)."""

    def run(progress, cancelled):
        if started is not None:
            started.set()
        assert gate.wait(10), "test gate never opened"
        return "done"

    return run


def stepping(steps: int, delay: float = 0.01, log: list | None = None):
    """A run function shaped like Engine.generate: progress after each step, cancel checks."""

    def run(progress, cancelled):
        for step in range(1, steps + 1):
            time.sleep(delay)
            progress(step, steps)
            if log is not None:
                log.append(step)
            if cancelled() and step < steps:
                raise Cancelled()
        return f"{steps} steps"

    return run


def wait_status(table: JobTable, job_id: str, status: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = table.get(job_id)
        if view.status == status:
            return view
        time.sleep(0.005)
    raise AssertionError(f"{job_id} never reached {status}: {table.get(job_id)}")


def test_job_ids_are_unguessable(table):
    # An id is the only key to a job's result and cancel: 128 random bits, not a counter.
    view = table.submit("img_gen", stepping(1))
    assert re.fullmatch(r"job_[0-9a-f]{32}", view.id)
    assert view.status == "queued"
    assert table.wait(view.id, 10).status == "completed"
    ids = [table.submit("img_gen", stepping(1)).id for _ in range(3)]
    for a, b in zip([view.id, *ids], ids, strict=False):
        # Consecutive ids share no more hex digits than chance (1 in 16 per position).
        assert sum(x == y for x, y in zip(a[4:], b[4:], strict=True)) < 12


def test_jobs_run_in_fifo_order(table):
    gate, order = threading.Event(), []

    def record(i):
        def run(progress, cancelled):
            order.append(i)

        return run

    first = table.submit("img_gen", blocked(gate))
    ids = [table.submit("img_gen", record(i)).id for i in range(3)]
    gate.set()
    for job_id in [first.id, *ids]:
        assert table.wait(job_id, 10).status == "completed"
    assert order == [0, 1, 2]


def test_queue_position_counts_only_queued_jobs(table):
    gate, started = threading.Event(), threading.Event()
    running = table.submit("img_gen", blocked(gate, started))
    assert started.wait(10)
    queued = [table.submit("img_gen", stepping(1)).id for _ in range(3)]
    assert table.get(running.id).queue_position == 0
    assert [table.get(i).queue_position for i in queued] == [1, 2, 3]
    table.cancel(queued[0])
    assert [table.get(i).queue_position for i in queued] == [0, 1, 2]
    gate.set()
    assert table.wait(queued[-1], 10).queue_position == 0


def test_queue_full_raises_while_every_accepted_job_completes(table):
    gate, started = threading.Event(), threading.Event()
    accepted = [table.submit("img_gen", blocked(gate, started)).id]
    assert started.wait(10)
    accepted += [table.submit("img_gen", stepping(2)).id for _ in range(3)]
    with pytest.raises(QueueFull):  # 1 generating + 3 queued = max_queue_size
        table.submit("img_gen", stepping(1))
    gate.set()
    assert [table.wait(i, 10).status for i in accepted] == ["completed"] * 4
    assert table.wait(table.submit("img_gen", stepping(1)).id, 10).status == "completed"


def test_cancel_queued_job_is_cancelled_at_once_and_never_runs(table):
    gate, started, ran = threading.Event(), threading.Event(), []
    table.submit("img_gen", blocked(gate, started))
    assert started.wait(10)
    queued = table.submit("img_gen", lambda progress, cancelled: ran.append(1))
    view = table.cancel(queued.id)
    assert view.status == "cancelled"
    assert view.error == {"code": "cancelled", "message": "job cancelled by client"}
    assert view.started is None and view.completed is not None
    assert view.queue_position == 0
    gate.set()
    table.shutdown(drain_s=5)
    assert ran == []


def test_cancel_generating_job_stops_between_steps(table):
    steps_done: list[int] = []
    view = table.submit("img_gen", stepping(500, delay=0.01, log=steps_done))
    deadline = time.monotonic() + 10
    while table.get(view.id).step < 3:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert table.cancel(view.id).status == "generating"  # flagged; stops at the next check
    final = table.wait(view.id, 10)
    assert final.status == "cancelled"
    assert final.error == {"code": "cancelled", "message": "job cancelled by client"}
    assert final.result is None
    assert 3 <= len(steps_done) < 500
    assert final.started is not None and final.completed is not None


def test_cancel_of_a_finished_job_leaves_it_unchanged(table):
    view = table.wait(table.submit("img_gen", stepping(1)).id, 10)
    assert view.status == "completed"
    assert table.cancel(view.id).status == "completed"
    assert table.get(view.id).result == "1 steps"


def test_progress_and_timestamps_are_reported(table):
    view = table.wait(table.submit("img_gen", stepping(4)).id, 10)
    body = view.to_dict(result=view.result)
    assert set(body) == {
        "id",
        "kind",
        "status",
        "created",
        "started",
        "completed",
        "queue_position",
        "progress",
        "result",
        "error",
    }
    assert body["progress"] == {"step": 4, "total": 4, "phase": None}
    assert body["created"] <= body["started"] <= body["completed"]
    assert body["error"] is None and body["result"] == "4 steps"


def test_failing_run_fails_the_job_and_the_worker_goes_on(table):
    def boom(progress, cancelled):
        raise RuntimeError("the unet exploded")

    failed = table.wait(table.submit("img_gen", boom).id, 10)
    assert failed.status == "failed"
    assert failed.error == {"code": "generation_failed", "message": "the unet exploded"}
    assert table.wait(table.submit("img_gen", stepping(1)).id, 10).status == "completed"


def test_invalid_request_from_the_engine_fails_with_its_own_code(table):
    def invalid(progress, cancelled):
        raise InvalidRequest("width must be a multiple of 8")

    view = table.wait(table.submit("img_gen", invalid).id, 10)
    assert view.error == {"code": "invalid_request", "message": "width must be a multiple of 8"}


def test_finished_jobs_expire_to_410_then_404():
    table = JobTable(job_retention_s=0.3, expired_retention_s=0.3)
    try:
        view = table.wait(table.submit("img_gen", stepping(1)).id, 10)
        assert table.get(view.id).status == "completed"
        time.sleep(0.4)
        with pytest.raises(JobExpired):
            table.get(view.id)
        with pytest.raises(JobExpired):
            table.cancel(view.id)
        time.sleep(0.3)
        with pytest.raises(JobNotFound):
            table.get(view.id)
    finally:
        table.shutdown()


def test_unknown_job_is_not_found(table):
    with pytest.raises(JobNotFound):
        table.get("job_0_00000000")


def test_closed_intake_refuses_new_jobs_but_finishes_accepted_ones(table):
    gate, started = threading.Event(), threading.Event()
    running = table.submit("img_gen", blocked(gate, started))
    assert started.wait(10)
    table.close_intake()
    with pytest.raises(ShuttingDown):
        table.submit("img_gen", stepping(1))
    gate.set()
    assert table.wait(running.id, 10).status == "completed"


def test_shutdown_cancels_queued_and_running_jobs_and_joins_the_worker(table):
    running = table.submit("img_gen", stepping(10_000, delay=0.005))
    wait_status(table, running.id, "generating")
    queued = table.submit("img_gen", stepping(1))
    table.shutdown(drain_s=0.05, join_s=10)
    assert table.get(queued.id).status == "cancelled"
    final = table.get(running.id)
    assert final.status == "cancelled"
    assert final.error == {"code": "cancelled", "message": "server shutting down"}
    with pytest.raises(ShuttingDown):
        table.submit("img_gen", stepping(1))
    assert table.counts() == {"queued": 0, "generating": 0}


def test_shutdown_lets_the_running_job_finish_within_the_drain_time(table):
    running = table.submit("img_gen", stepping(5, delay=0.01))
    wait_status(table, running.id, "generating")
    table.shutdown(drain_s=10)
    assert table.get(running.id).status == "completed"


def test_cancel_running_stops_the_generating_job_with_its_reason(table):
    assert table.current() is None and table.cancel_running(INTERRUPTED) is None
    running = table.submit("img_gen", stepping(500))
    queued = table.submit("img_gen", stepping(1))
    wait_status(table, running.id, "generating")
    assert table.current().id == running.id
    flagged = table.cancel_running(INTERRUPTED)
    assert flagged.id == running.id and flagged.cancel_reason == INTERRUPTED
    # A later reason does not replace the first one.
    table.cancel(running.id)
    final = wait_status(table, running.id, "cancelled")
    assert final.error == INTERRUPTED and final.step < 500 and final.cancel_reason is None
    # Only the generating job is stopped; the queued one runs.
    assert wait_status(table, queued.id, "completed").result == "1 steps"
    assert table.current() is None


def test_cancel_with_a_reason_applies_to_queued_jobs_too(table):
    gate = threading.Event()
    first = table.submit("img_gen", blocked(gate))
    second = table.submit("img_gen", stepping(1))
    assert table.cancel(second.id, SKIPPED).error == SKIPPED
    gate.set()
    assert wait_status(table, first.id, "completed").error is None


def test_client_chosen_ids_are_unique_among_live_and_expired_jobs():
    table = JobTable(job_retention_s=0.2, expired_retention_s=60)
    try:
        view = table.submit("vid_gen", stepping(1), job_id="mine")
        assert view.id == "mine" and table.wait("mine", 10).status == "completed"
        with pytest.raises(JobExists):
            table.submit("vid_gen", stepping(1), job_id="mine")
        time.sleep(0.3)
        with pytest.raises(JobExpired):
            table.get("mine")
        with pytest.raises(JobExists):  # an id answering 410 is still taken
            table.submit("vid_gen", stepping(1), job_id="mine")
    finally:
        table.shutdown()


def test_views_list_live_jobs_in_submission_order(table):
    ids = [table.submit("img_gen" if i % 2 else "vid_gen", stepping(1)).id for i in range(3)]
    assert [v.id for v in table.views()] == ids
    assert [v.id for v in table.views(lambda v: v.kind == "vid_gen")] == [ids[0], ids[2]]


def test_delete_forgets_a_job_and_stops_it_if_needed(table):
    gate, started, ran = threading.Event(), threading.Event(), []
    done = table.wait(table.submit("vid_gen", stepping(1)).id, 10)
    assert table.delete(done.id).status == "completed"
    running = table.submit("vid_gen", stepping(500, log=ran))
    wait_status(table, running.id, "generating")
    queued = table.submit("vid_gen", blocked(gate, started))
    assert table.delete(queued.id).status == "cancelled"
    assert table.delete(running.id).status == "generating"  # flagged; stops at its next check
    for job_id in (done.id, queued.id, running.id):
        with pytest.raises(JobNotFound):
            table.get(job_id)
    deadline = time.monotonic() + 10
    while table.counts()["generating"]:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert len(ran) < 500 and not started.is_set()
    assert table.views() == []
