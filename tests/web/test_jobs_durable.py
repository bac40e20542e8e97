"""The job table over a real SQLite store: what was accepted survives a restart or a crash
(plain run functions stand in for generation; the store and the threads are real)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from jaxvideo.errors import Cancelled
from webapp.core.jobs import (
    CANCELLED_BY_SHUTDOWN,
    INTERRUPTED_BY_RESTART,
    Halted,
    JobExpired,
    JobNotFound,
    JobTable,
)
from webapp.core.store import JobStore, StateDirBusy


@dataclass
class Text:
    """A result the store keeps: one file and a manifest naming it."""

    value: str

    def stored(self):
        return {"out.txt": self.value.encode()}, {"file": "out.txt"}


def steps_run(label: str, steps: int = 3, delay: float = 0.005, log: list | None = None):
    def run(progress, cancelled):
        for step in range(1, steps + 1):
            time.sleep(delay)
            progress(step, steps)
            if cancelled() and step < steps:
                raise Cancelled()
        if log is not None:
            log.append(label)
        return Text(label)

    return run


def table_on(folder, **kwargs) -> JobTable:
    defaults = {"job_retention_s": 60, "expired_retention_s": 60}
    return JobTable(store=JobStore(folder), **{**defaults, **kwargs})


def callbacks(table: JobTable, log: list | None = None):
    """What the service does on restore: rebuild runs from specs, reload results from files."""

    def rebuild(record):
        return steps_run(record.spec["label"], record.spec.get("steps", 3), log=log), None, None

    def reload(record):
        if record.manifest is None:
            return None, None
        data = table.store.read(record.id, record.manifest["file"])
        return Text(data.decode()), None

    return rebuild, reload


def crash(table_or_store) -> None:
    """What the kernel does when the process dies: its files close and its lock goes (its
    threads, here, are never started, or simply left behind)."""
    store = getattr(table_or_store, "store", table_or_store)
    store.close()


def restarted(folder, log: list | None = None, **kwargs) -> JobTable:
    table = table_on(folder, **kwargs)
    table.restore(*callbacks(table, log))
    table.start()
    return table


def test_finished_results_are_readable_after_a_restart(tmp_path):
    first = table_on(tmp_path)
    done = first.submit("img_gen", steps_run("kept"), spec={"label": "kept"}, resumable=True)
    assert first.wait(done.id, 10).result == Text("kept")
    first.shutdown()
    second = restarted(tmp_path)
    view = second.get(done.id)
    assert (view.status, view.result) == ("completed", Text("kept"))
    assert (tmp_path / "jobs" / done.id / "out.txt").read_bytes() == b"kept"
    assert not list(tmp_path.rglob("*.partial"))  # written whole, then renamed
    second.shutdown()


def test_queued_jobs_resume_in_order_after_a_crash(tmp_path):
    # What a process killed with jobs queued leaves behind.
    store = JobStore(tmp_path)
    ids = [f"job_{i}" for i in range(3)]
    for i, job_id in enumerate(ids):
        store.add(job_id, "img_gen", time.time(), {"label": f"j{i}"}, resumable=True)
    crash(store)
    log: list[str] = []
    again = restarted(tmp_path, log)
    assert [again.wait(job_id, 10).status for job_id in ids] == ["completed"] * 3
    assert log == ["j0", "j1", "j2"]
    assert again.get(ids[1]).result == Text("j1")
    again.shutdown()


def test_a_job_generating_at_a_crash_runs_once_more_then_fails(tmp_path):
    # What a process killed mid-run leaves behind: the job recorded as generating.
    store = JobStore(tmp_path)
    store.add("job_a", "img_gen", time.time(), {"label": "again"}, resumable=True)
    store.started(["job_a"], time.time())
    crash(store)
    second = table_on(tmp_path)
    second.restore(*callbacks(second))  # not started: it dies again before running it
    assert second.get("job_a").status == "queued"
    assert second.store.records()[0].attempts == 1
    second.store.started(["job_a"], time.time())  # it started again, and died again
    crash(second)
    third = restarted(tmp_path)
    final = third.get("job_a")
    assert (final.status, final.error) == ("failed", INTERRUPTED_BY_RESTART)
    assert third.store.records()[0].status == "failed"
    third.shutdown()


def test_jobs_nobody_can_resume_fail_with_interrupted_by_restart(tmp_path):
    # A synchronous job: its spec is kept (for its record) but its client left with the process.
    store = JobStore(tmp_path)
    store.add("job_sync", "img_gen", time.time(), {"label": "sync"})
    crash(store)
    again = restarted(tmp_path)
    view = again.get("job_sync")
    assert (view.status, view.error) == ("failed", INTERRUPTED_BY_RESTART)
    again.shutdown()


def test_shutdown_keeps_resumable_jobs_queued_for_the_next_start(tmp_path):
    table = table_on(tmp_path)
    gate = threading.Event()
    table.submit("img_gen", lambda progress, cancelled: gate.wait(10) and Text("first"))
    table.start()
    deadline = time.monotonic() + 10
    while table.counts()["generating"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    kept = table.submit("img_gen", steps_run("kept"), spec={"label": "kept"}, resumable=True)
    dropped = table.submit("img_gen", steps_run("dropped"))  # synchronous: ends now
    threading.Timer(0.2, gate.set).start()  # the running job ends while shutdown joins
    table.shutdown(drain_s=0)
    assert table.get(dropped.id).error == CANCELLED_BY_SHUTDOWN
    log: list[str] = []
    again = restarted(tmp_path, log)
    assert again.wait(kept.id, 10).result == Text("kept") and log == ["kept"]
    assert again.get(dropped.id).status == "cancelled"
    again.shutdown()


def test_a_run_a_shutdown_stops_goes_back_to_the_queue(tmp_path):
    table = table_on(tmp_path)
    job = table.submit(
        "img_gen", steps_run("long", steps=2000), spec={"label": "long"}, resumable=True
    )
    table.start()
    deadline = time.monotonic() + 10
    while table.get(job.id).step == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    table.shutdown(drain_s=0)
    record = JobStore(tmp_path).records()[0]
    assert (record.status, record.attempts) == ("queued", 1)


def test_one_server_per_state_folder(tmp_path):
    first = table_on(tmp_path)
    with pytest.raises(StateDirBusy, match="in use by another server"):
        JobStore(tmp_path)
    first.shutdown()  # releases it
    JobStore(tmp_path).close()


def test_retention_holds_across_restarts_then_410_then_404(tmp_path):
    table = table_on(tmp_path, job_retention_s=0.3, expired_retention_s=0.3)
    job = table.submit("img_gen", steps_run("short"), spec={"label": "short"}, resumable=True)
    table.start()
    assert table.wait(job.id, 10).status == "completed"
    table.shutdown()
    time.sleep(0.35)
    expired = restarted(tmp_path, job_retention_s=0.3, expired_retention_s=0.3)
    with pytest.raises(JobExpired):
        expired.get(job.id)
    assert not (tmp_path / "jobs" / job.id).exists()  # the files went with retention
    expired.shutdown()
    time.sleep(0.35)
    gone = restarted(tmp_path, job_retention_s=0.3, expired_retention_s=0.3)
    with pytest.raises(JobNotFound):
        gone.get(job.id)
    assert gone.store.records() == []
    gone.shutdown()


def test_halt_fails_the_running_job_keeps_resumable_queued_ones_and_refuses_new(tmp_path):
    # What process 0 does when a multi-host slice loses a process (webapp/__init__.py): the
    # running job may never return from its collective, so it is failed here and now.
    table = table_on(tmp_path)
    release = threading.Event()
    started = threading.Event()

    def stuck(progress, cancelled):
        started.set()
        progress(1, 10)
        release.wait(10)
        return Text("too late")

    running = table.submit("img_gen", stuck, spec={"label": "r"}, resumable=True)
    kept = table.submit("img_gen", steps_run("kept"), spec={"label": "kept"}, resumable=True)
    waiting = table.submit("img_gen", steps_run("sync"))  # a synchronous client's job
    assert started.wait(10)
    error = {"code": "process_lost", "message": "process 1 sent no heartbeat for 3 s"}
    table.halt(error)
    assert table.get(running.id).status == "failed"
    assert table.get(running.id).error == error
    assert table.get(waiting.id).status == "failed"
    assert table.get(kept.id).status == "queued"
    with pytest.raises(Halted) as refused:
        table.submit("img_gen", steps_run("new"))
    assert refused.value.error == error
    release.set()  # the stuck run comes back after all: its job keeps the failure
    time.sleep(0.2)
    assert table.get(running.id).status == "failed"
    assert table.get(kept.id).status == "queued"  # nothing more is taken from the queue
    table.shutdown(join_s=5)

    again = restarted(tmp_path)
    assert again.wait(kept.id, 10).status == "completed"
    assert again.get(running.id).status == "failed"
    again.shutdown(join_s=5)
