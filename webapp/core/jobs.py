"""The thread-backed job table: a bounded FIFO, one worker thread, cancel, progress, retention.

Generic over the work it runs: a job is a `run(progress, cancelled)` callable, so the table is
tested with plain Python functions and the web layer hands it closures over `Engine.generate`.
Synchronous endpoints submit here too and `wait`, so all generation is ordered in one place.

Request batching: a job submitted with a `Batch` may run in one call together with later queued
jobs whose batch key is equal (`Batch.run_batch` over their items). Such jobs generate together
and share progress, but each one ends with its own status, result or error, and its own cancel.

Durability: with a `JobStore`, every job is recorded as it moves, and a result that can be
`stored()` is written to disk; `restore` brings a store's jobs back after a restart (resumable
queued ones run again, finished ones stay readable until retention ends). A resumable job is
rebuilt from its `spec`; a shutdown leaves such jobs queued for the next start.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jaxvideo.errors import Cancelled, InvalidRequest
from webapp.core.store import JobRecord, JobStore

log = logging.getLogger(__name__)

QUEUED, GENERATING, COMPLETED, FAILED, CANCELLED = (
    "queued",
    "generating",
    "completed",
    "failed",
    "cancelled",
)
TERMINAL = frozenset((COMPLETED, FAILED, CANCELLED))

# (finished steps, total steps[, phase]): a run reports its phase ("loading_model") while
# it is not stepping yet; a report without one means it is generating.
ProgressFn = Callable[..., None]
CancelledFn = Callable[[], bool]
RunFn = Callable[[ProgressFn, CancelledFn], Any]
# (items, shared progress, one cancel check per item) -> one result or exception per item.
BatchRunFn = Callable[[list[Any], ProgressFn, list[CancelledFn]], list[Any]]

CANCELLED_BY_CLIENT = {"code": "cancelled", "message": "job cancelled by client"}
# A synchronous request whose client hung up: nobody is left to read the result.
CLIENT_GONE = {"code": "cancelled", "message": "client disconnected"}
# A job a restart found unfinished and could not run again (nobody waits for a synchronous
# one any more; a resumable one gets one more run).
INTERRUPTED_BY_RESTART = {
    "code": "interrupted_by_restart",
    "message": "the server restarted while this job was queued or generating",
}
# Runs a restart may cut short before the job is failed instead of queued again.
MAX_RESTARTS = 1
CANCELLED_BY_SHUTDOWN = {"code": "cancelled", "message": "server shutting down"}
# A1111's interrupt/skip stop whatever is generating; the code stays "cancelled" so sdcpp
# clients polling that job see the state they know, the message says who stopped it.
INTERRUPTED = {"code": "cancelled", "message": "job interrupted (POST /sdapi/v1/interrupt)"}
SKIPPED = {"code": "cancelled", "message": "job skipped (POST /sdapi/v1/skip)"}
# A multi-host slice lost a process (jaxvideo.distributed): what `halt` fails jobs with.
PROCESS_LOST = "process_lost"


@dataclass(frozen=True)
class Batch:
    """How a job may share one run with compatible queued jobs.

    When the worker takes a job, it also takes the later queued jobs whose `key` equals its
    own (in queue order, up to `limit` jobs in all; other jobs keep their place) and calls the
    first job's `run_batch` with their `item`s, so equal keys must mean the same `run_batch`.
    A job that finds no partner runs its own `run` as usual.
    """

    key: Hashable
    item: Any
    run_batch: BatchRunFn
    limit: int


@runtime_checkable
class StoredResult(Protocol):
    """A result the store keeps on disk: its files and a JSON manifest naming them."""

    def stored(self) -> tuple[Mapping[str, bytes], Mapping[str, Any]]: ...


class JobObserver(Protocol):
    """What hears the table's events (the web layer's metrics). Called by the worker, some
    calls under the table's lock: quick, and never calling back into the table."""

    def batch_started(self, size: int) -> ProgressFn:
        """A run of `size` jobs begins; the returned function hears its progress reports."""
        ...

    def job_finished(self, status: str, latency_s: float, run_s: float | None) -> None:
        """A job ended `status`, `latency_s` after it was queued in this process, having run
        for `run_s` (None: it never ran)."""
        ...


# A stored job made runnable again: (run, batch or None, meta), from its record.
RebuildFn = Callable[[JobRecord], tuple[RunFn, Batch | None, Any]]
# A finished stored job's (result or None, meta), from its record.
ReloadFn = Callable[[JobRecord], tuple[Any, Any]]


class QueueFull(Exception):
    """`max_queue_size` jobs are already queued or generating (HTTP 429)."""


class ShuttingDown(Exception):
    """The table no longer accepts jobs (HTTP 503)."""


class Halted(ShuttingDown):
    """The devices can run nothing more (`JobTable.halt`): 503 until the server restarts."""

    def __init__(self, error: Mapping[str, str]):
        super().__init__(error["message"])
        self.error = error


class JobNotFound(KeyError):
    """No such job, or it expired long ago (HTTP 404)."""


class JobExpired(KeyError):
    """The job finished and its retention window passed (HTTP 410)."""


class JobExists(KeyError):
    """A client-chosen job id is already taken, by a live or an expired job (HTTP 409)."""


@dataclass
class _Job:
    id: str
    kind: str
    run: RunFn
    meta: Any
    created: int
    batch: Batch | None = None
    status: str = QUEUED
    started: int | None = None
    completed: int | None = None
    step: int = 0
    total: int = 0
    phase: str | None = None
    result: Any = None
    error: dict[str, str] | None = None
    finished_at: float | None = None  # wall clock (it survives restarts), drives retention
    resumable: bool = False  # its client polls by id: a restart runs it again
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    cancel_error: dict[str, str] | None = None  # why the flag was set, reported when it ends
    done: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)  # for the observer's latencies
    run_at: float | None = None  # monotonic, when its last run began


@dataclass(frozen=True)
class JobView:
    """A consistent snapshot of one job. `result` is whatever the run function returned."""

    id: str
    kind: str
    status: str
    created: int
    started: int | None
    completed: int | None
    queue_position: int
    step: int
    total: int
    phase: str | None  # while generating: "loading_model" or "generating"
    result: Any
    error: dict[str, str] | None
    meta: Any
    # Generating and flagged, not yet stopped: the reason `cancel` was given, else None.
    cancel_reason: dict[str, str] | None = None

    def to_dict(self, result: Any = None) -> dict[str, Any]:
        """The sdcpp job JSON; `result` is the surface's rendering of `self.result`."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "completed": self.completed,
            "queue_position": self.queue_position,
            "progress": {"step": self.step, "total": self.total, "phase": self.phase},
            "result": result,
            "error": self.error,
        }


def new_job_id(prefix: str = "job") -> str:
    """`<prefix>_<128 random bits>`: an id is the only key to a job's result and its cancel,
    so nobody may guess another client's."""
    return f"{prefix}_{secrets.token_hex(16)}"


class JobTable:
    """Jobs in process memory. `max_queue_size` counts queued plus generating jobs (several
    generate at once when they run as one batch)."""

    def __init__(
        self,
        *,
        max_queue_size: int = 64,
        job_retention_s: float = 600,
        expired_retention_s: float = 600,
        name: str = "jaxvideo-worker",
        store: JobStore | None = None,
    ) -> None:
        self.max_queue_size = max_queue_size
        self.job_retention_s = job_retention_s
        self.expired_retention_s = expired_retention_s
        self._name = name
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[_Job] = deque()
        self._running: list[_Job] = []  # the jobs of the call in progress, oldest first
        self._tombstones: dict[str, float] = {}  # id -> wall time it turns 404
        self.store = store
        self._accepting = True
        self._stopping = False
        self.halted: dict[str, str] | None = None  # why `halt` stopped the table
        self._worker: threading.Thread | None = None
        self.observer: JobObserver | None = None  # set before `start` (webapp/core/metrics.py)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the worker thread (idempotent)."""
        with self._lock:
            if self._worker is None:
                # Daemon: a stuck generation must not keep the process alive after shutdown.
                self._worker = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._worker.start()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def close_intake(self) -> None:
        """Stops accepting new jobs (503) while letting accepted ones run.

        Lock-free on purpose: it is called from a signal handler.
        """
        self._accepting = False

    def shutdown(self, *, drain_s: float = 0.0, join_s: float = 5.0) -> bool:
        """Stops accepting, cancels queued jobs, gives the running ones `drain_s` to finish
        before flagging them cancelled, and joins the worker for up to `join_s`.

        Returns False when the worker is still busy (e.g. inside a compilation that cannot be
        interrupted between sampler steps): its jobs are then ended here (requeued in the store
        when resumable), so no client waits on them. A second call only waits for the worker.
        """
        self._accepting = False
        with self._lock:
            again, self._stopping = self._stopping, True
            worker = self._worker
        if again:
            if worker is not None:
                worker.join(join_s)
            return worker is None or not worker.is_alive()
        now = time.time()
        with self._lock:
            # Resumable jobs stay queued in the store for the next start; the others (a
            # synchronous client waits for them) end now, and their clients hear 503.
            for job in list(self._queue):
                if not (job.resumable and self.store is not None):
                    self._queue.remove(job)
                    self._finish_locked(job, CANCELLED, now, CANCELLED_BY_SHUTDOWN)
                    self._store_end_locked(job)
            running = list(self._running)
        deadline = time.monotonic() + drain_s
        for job in running:
            if not job.done.wait(max(deadline - time.monotonic(), 0.0)):
                with self._lock:
                    self._flag_locked(job, CANCELLED_BY_SHUTDOWN)
        with self._lock:
            self._wakeup.notify_all()
        if worker is not None:
            worker.join(join_s)
            if worker.is_alive():
                log.warning("job worker still running after %.1f s; leaving it", join_s)
                self._abandon_running()
                return False
        if self.store is not None:
            self.store.close()  # the next server may take the folder
        return True

    def _abandon_running(self) -> None:
        """Ends the jobs of a worker that did not stop, so their waiting clients hear 503 (a
        resumable one is back in the store's queue for the next start)."""
        now = time.time()
        with self._lock:
            for job in self._running:
                if job.status != GENERATING:
                    continue
                if self._held_for_restart(job, CANCELLED, CANCELLED_BY_SHUTDOWN):
                    self.store.requeue(job.id)
                    self._back_to_queue_locked(job)
                else:
                    self._finish_locked(job, CANCELLED, now, CANCELLED_BY_SHUTDOWN)
                    self._store_end_locked(job)

    def halt(self, error: dict[str, str]) -> None:
        """The devices can run nothing more (a process of a multi-host slice died or hangs):
        refuses new jobs with `error` (503), fails the generating ones with it now (the worker
        may never come back from them), and takes no more from the queue. Queued resumable
        jobs stay in the store for the next start; the others (a client waits) fail too."""
        self._accepting = False
        now = time.time()
        with self._lock:
            self.halted = dict(error)
            ended = [job for job in self._running if job.status == GENERATING]
            ended += [j for j in self._queue if not (j.resumable and self.store is not None)]
            for job in ended:
                if job in self._queue:
                    self._queue.remove(job)
                self._finish_locked(job, FAILED, now, dict(error))
                self._store_end_locked(job)
            self._wakeup.notify_all()
        log.error("job table halted: %s", error["message"])

    def restore(self, rebuild: RebuildFn, reload: ReloadFn) -> None:
        """Brings the store's jobs back after a restart; call before `start`.

        Queued jobs run again in their order; one a restart stopped while generating runs once
        more (`MAX_RESTARTS`), and a job that is not resumable (a synchronous client
        was waiting for it) fails with `interrupted_by_restart`. Finished jobs stay readable
        until their retention ends, then answer 410 for `expired_retention_s`."""
        if self.store is None:
            return
        now = time.time()
        with self._lock:
            for record in self.store.records():
                if record.status in TERMINAL or record.expired:
                    self._restore_finished_locked(record, reload, now)
                else:
                    self._restore_unfinished_locked(record, rebuild, reload)
            if self._jobs or self._queue:
                log.info(
                    "restored %d job(s) from %s, %d queued to run",
                    len(self._jobs), self.store.folder, len(self._queue),
                )  # fmt: skip

    def _restore_finished_locked(self, record: JobRecord, reload: ReloadFn, now: float) -> None:
        finished_at = record.completed or record.created
        gone_at = finished_at + self.job_retention_s + self.expired_retention_s
        if now >= gone_at:
            self.store.forget(record.id)
        elif record.expired or now - finished_at >= self.job_retention_s:
            self.store.expire(record.id)
            self._tombstones[record.id] = gone_at
        else:
            result, meta = _reloaded(reload, record)
            self._jobs[record.id] = self._record_job(record, meta, result, finished_at)

    def _restore_unfinished_locked(
        self, record: JobRecord, rebuild: RebuildFn, reload: ReloadFn
    ) -> None:
        again = record.resumable and (record.status == QUEUED or record.attempts < MAX_RESTARTS)
        error: dict[str, str] = INTERRUPTED_BY_RESTART
        if again:
            rebuilt = outcome_of(rebuild, record)
            if not isinstance(rebuilt, Exception):
                run, batch, meta = rebuilt
                if record.status == GENERATING:
                    self.store.requeue(record.id)
                job = _Job(record.id, record.kind, run, meta, int(record.created), batch=batch)
                job.resumable = True
                self._jobs[job.id] = job
                self._queue.append(job)
                return
            # The request no longer checks out (a model left the config, ...).
            error = {"code": "invalid_request", "message": str(rebuilt)}
        _, meta = _reloaded(reload, record)
        job = self._record_job(record, meta, None, time.time())
        job.status, job.error = FAILED, error
        self._jobs[job.id] = job
        self.store.finished(job.id, FAILED, job.finished_at, error)

    @staticmethod
    def _record_job(record: JobRecord, meta: Any, result: Any, finished_at: float) -> _Job:
        """A finished job as its record describes it."""
        job = _Job(record.id, record.kind, _spent, meta, int(record.created))
        job.status, job.error, job.result = record.status, record.error, result
        job.started = None if record.started is None else int(record.started)
        job.completed, job.finished_at = int(finished_at), finished_at
        job.step, job.total = record.step, record.total
        job.done.set()
        return job

    # -- client operations ------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        run: RunFn,
        meta: Any = None,
        job_id: str | None = None,
        batch: Batch | None = None,
        spec: Mapping[str, Any] | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
        resumable: bool = False,
    ) -> JobView:
        """Queues `run` under `job_id` (default: a fresh unguessable `new_job_id()`), to be
        batched with compatible jobs when `batch` is given; raises `ShuttingDown`, `JobExists`
        or `QueueFull`. With a store, the job is recorded first; `spec` (JSON) and `arrays`
        are what a restart needs to rebuild a `resumable` job (one whose client polls by id;
        a synchronous one's client is gone after a restart)."""
        self.start()
        with self._lock:
            if self.halted is not None:
                raise Halted(self.halted)
            if not self._accepting:
                raise ShuttingDown("server is shutting down")
            self._prune_locked()
            # An expired id still answers 410 for a while, so it cannot be reused either.
            if job_id is not None and (job_id in self._jobs or job_id in self._tombstones):
                raise JobExists(job_id)
            active = len(self._queue) + len(self._running)
            if active >= self.max_queue_size:
                raise QueueFull("job queue is full")
            now = time.time()
            job_id = job_id or new_job_id()
            job = _Job(id=job_id, kind=kind, run=run, meta=meta, created=int(now), batch=batch)
            job.resumable = resumable and spec is not None
            if self.store is not None:  # recorded before anyone hears it was accepted
                self.store.add(job_id, kind, now, spec, arrays, job.resumable)
            self._jobs[job_id] = job
            self._queue.append(job)
            self._wakeup.notify()
            return self._view_locked(job)

    def get(self, job_id: str) -> JobView:
        """Raises `JobExpired` (410) or `JobNotFound` (404)."""
        with self._lock:
            return self._view_locked(self._lookup_locked(job_id))

    def cancel(self, job_id: str, reason: dict[str, str] = CANCELLED_BY_CLIENT) -> JobView:
        """Queued: cancelled now. Generating: flagged; the run stops at its next check and the
        job ends cancelled. Terminal: unchanged. `reason` becomes the job's `error`."""
        with self._lock:
            job = self._lookup_locked(job_id)
            if job.status == QUEUED:
                self._queue.remove(job)
                self._finish_locked(job, CANCELLED, time.time(), reason)
                self._store_end_locked(job)
            elif job.status == GENERATING:
                self._flag_locked(job, reason)
            return self._view_locked(job)

    def delete(self, job_id: str) -> JobView:
        """Forgets a job at once (its id answers 404 from now on); a queued job is cancelled,
        a generating one is flagged and stops at its next check. Returns its last snapshot."""
        with self._lock:
            job = self._lookup_locked(job_id)
            if job.status == QUEUED:
                self._queue.remove(job)
                self._finish_locked(job, CANCELLED, time.time(), CANCELLED_BY_CLIENT)
            elif job.status == GENERATING:
                self._flag_locked(job, CANCELLED_BY_CLIENT)
            del self._jobs[job_id]
            if self.store is not None:
                self.store.forget(job_id)
            return self._view_locked(job)

    def views(self, predicate: Callable[[JobView], bool] | None = None) -> list[JobView]:
        """Snapshots of the live jobs in submission order, optionally filtered."""
        with self._lock:
            self._prune_locked()
            views = [self._view_locked(job) for job in self._jobs.values()]
        return [view for view in views if predicate is None or predicate(view)]

    def cancel_running(self, reason: dict[str, str] = CANCELLED_BY_CLIENT) -> JobView | None:
        """Flags the current job (the oldest generating one, what `current` reports: A1111's
        interrupt stops its one job) and returns its snapshot. Other jobs batched with it
        carry on; queued jobs are left alone."""
        with self._lock:
            if not self._running:
                return None
            self._flag_locked(self._running[0], reason)
            return self._view_locked(self._running[0])

    def current(self) -> JobView | None:
        """The oldest generating job (a batch shares its progress), or None when idle."""
        with self._lock:
            return self._view_locked(self._running[0]) if self._running else None

    def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        """Blocks until the job is terminal (or `timeout` passes) and returns its snapshot."""
        with self._lock:
            job = self._lookup_locked(job_id)
        job.done.wait(timeout)
        with self._lock:
            return self._view_locked(job)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"queued": len(self._queue), "generating": len(self._running)}

    # -- worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping and self.halted is None:
                    # Wake up now and then so retention also runs on an idle server.
                    self._wakeup.wait(timeout=max(1.0, min(self.job_retention_s, 60.0)))
                    self._prune_locked()
                if self._stopping or self.halted is not None:
                    return
                first = self._queue.popleft()
                jobs = [first, *self._take_partners_locked(first)]
                started = int(time.time())
                for job in jobs:
                    job.status = GENERATING
                    job.started = started
                    job.run_at = time.monotonic()
                self._running = jobs
                if self.store is not None:
                    self.store.started([job.id for job in jobs], started)
            if len(jobs) > 1:
                ids = " ".join(job.id for job in jobs)
                log.info("running %d jobs as one batch: %s", len(jobs), ids)
            self._execute(jobs)

    def _take_partners_locked(self, first: _Job) -> list[_Job]:
        """Removes from the queue, in order, the jobs that may run in one batch with `first`."""
        batch = first.batch
        if batch is None:
            return []
        partners = []
        for job in self._queue:
            if len(partners) + 1 >= batch.limit:
                break
            if job.batch is not None and job.batch.key == batch.key:
                partners.append(job)
        for job in partners:
            self._queue.remove(job)
        return partners

    def _execute(self, jobs: list[_Job]) -> None:
        heard = None if self.observer is None else self.observer.batch_started(len(jobs))

        def progress(step: int, total: int, phase: str | None = None) -> None:
            with self._lock:
                for job in jobs:
                    job.step, job.total = int(step), int(total)
                    job.phase = phase or GENERATING
            if heard is not None:
                heard(step, total, phase)

        if len(jobs) == 1:
            outcomes = [outcome_of(jobs[0].run, progress, jobs[0].cancel_flag.is_set)]
        else:
            outcomes = self._run_batch(jobs, progress)
        settled = [self._settle(job, outcome) for job, outcome in zip(jobs, outcomes, strict=True)]
        # A job `halt` already ended keeps that ending.
        ran = [(job, *outcome) for job, outcome in zip(jobs, settled, strict=True)]
        ran = [item for item in ran if not item[0].done.is_set()]
        for job, status, result, error in ran:
            self._store_outcome(job, status, result, error)  # files on disk, outside the lock
        with self._lock:
            for job, status, result, error in ran:
                if self._held_for_restart(job, status, error):
                    self._back_to_queue_locked(job)
                    continue
                job.result = result
                self._finish_locked(job, status, time.time(), error)
            self._running = []
            self._prune_locked()

    def _held_for_restart(self, job: _Job, status: str, error: Any) -> bool:
        """A resumable job a shutdown stopped: it runs again at the next start."""
        stopped = status == CANCELLED and error == CANCELLED_BY_SHUTDOWN
        return stopped and job.resumable and self.store is not None

    def _back_to_queue_locked(self, job: _Job) -> None:
        """Queued again (in memory as in the store), so its client keeps polling through the
        restart instead of reading a cancellation."""
        job.status, job.started, job.step, job.total = QUEUED, None, 0, 0
        job.cancel_flag.clear()
        job.cancel_error = None
        self._queue.appendleft(job)

    def _store_outcome(self, job: _Job, status: str, result: Any, error: Any) -> None:
        """Records how a run ended: a resumable job a shutdown stopped goes back to the queue
        for the next start; any other writes its result files and its end."""
        if self.store is None:
            return
        if self._held_for_restart(job, status, error):
            self.store.requeue(job.id)
            return
        files, manifest = result.stored() if isinstance(result, StoredResult) else ({}, None)
        try:
            progress = (job.step, job.total)  # the worker's own job: its progress is final
            self.store.finished(job.id, status, time.time(), error, files, manifest, progress)
        except OSError:  # a full disk fails this job's record, never the worker
            log.exception("could not store the result of job %s", job.id)

    def _run_batch(self, jobs: list[_Job], progress: ProgressFn) -> list[Any]:
        """One `run_batch` call for all `jobs`: one result or exception per job."""
        items = [job.batch.item for job in jobs]
        checks = [job.cancel_flag.is_set for job in jobs]
        outcomes = outcome_of(jobs[0].batch.run_batch, items, progress, checks)
        if isinstance(outcomes, Exception):  # the whole call failed: so did every job
            return [outcomes] * len(jobs)
        if len(outcomes) != len(jobs):
            error = RuntimeError(f"batch of {len(jobs)} jobs returned {len(outcomes)} results")
            return [error] * len(jobs)
        return outcomes

    def _settle(self, job: _Job, outcome: Any) -> tuple[str, Any, dict[str, str] | None]:
        """(status, result, error) of a job whose run returned or raised `outcome`."""
        status, result, error = COMPLETED, outcome, None
        if isinstance(outcome, Cancelled):
            status, result, error = CANCELLED, None, job.cancel_error or CANCELLED_BY_CLIENT
        elif isinstance(outcome, InvalidRequest):
            status, result = FAILED, None
            error = {"code": "invalid_request", "message": str(outcome)}
        elif isinstance(outcome, Exception):  # a pipeline failure fails this job, never the worker
            log.error("job %s failed", job.id, exc_info=outcome)
            # XLA errors can run to pages; the first line says what went wrong.
            message = (str(outcome).strip().splitlines() or [type(outcome).__name__])[0][:500]
            status, result = FAILED, None
            error = {"code": "generation_failed", "message": message}
        if status == COMPLETED and job.cancel_flag.is_set():
            # The client was told its cancel was accepted; honour it even if the run got past
            # its last check before noticing.
            status, result, error = CANCELLED, None, job.cancel_error or CANCELLED_BY_CLIENT
        if status == CANCELLED and not self._accepting:
            error = CANCELLED_BY_SHUTDOWN
        return status, result, error

    # -- internals (call with the lock held) ------------------------------------------------

    def _flag_locked(self, job: _Job, reason: dict[str, str]) -> None:
        if not job.cancel_flag.is_set():  # the first reason given is the one reported
            job.cancel_error = reason
            job.cancel_flag.set()

    def _finish_locked(self, job: _Job, status: str, now: float, error: Any) -> None:
        job.status = status
        job.error = error
        job.completed = int(now)
        job.finished_at = now
        job.run = _spent  # drop the closure (and the request/engine refs it holds)
        job.batch = None
        if self.observer is not None:
            ran = None if job.run_at is None else time.monotonic() - job.run_at
            self.observer.job_finished(status, time.monotonic() - job.queued_at, ran)
        job.done.set()

    def _lookup_locked(self, job_id: str) -> _Job:
        self._prune_locked()
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        if job_id in self._tombstones:
            raise JobExpired(job_id)
        raise JobNotFound(job_id)

    def _prune_locked(self) -> None:
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            if job.finished_at is not None and now - job.finished_at >= self.job_retention_s:
                del self._jobs[job_id]
                self._tombstones[job_id] = job.finished_at + (
                    self.job_retention_s + self.expired_retention_s
                )
                if self.store is not None:
                    self.store.expire(job_id)
        for job_id, gone_at in list(self._tombstones.items()):
            if now >= gone_at:
                del self._tombstones[job_id]
                if self.store is not None:
                    self.store.forget(job_id)

    def _store_end_locked(self, job: _Job) -> None:
        """Records a job that ended without running (cancelled while queued)."""
        if self.store is not None:
            when = job.finished_at or time.time()
            self.store.finished(job.id, job.status, when, job.error, progress=(job.step, job.total))

    def _view_locked(self, job: _Job) -> JobView:
        position = 0
        if job.status == QUEUED:
            position = next((i for i, queued in enumerate(self._queue, 1) if queued is job), 0)
        return JobView(
            id=job.id,
            kind=job.kind,
            status=job.status,
            created=job.created,
            started=job.started,
            completed=job.completed,
            queue_position=position,
            step=job.step,
            total=job.total,
            phase=(job.phase or GENERATING) if job.status == GENERATING else None,
            result=job.result,
            error=job.error,
            meta=job.meta,
            cancel_reason=job.cancel_error if job.status == GENERATING else None,
        )


def outcome_of(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, or the exception it raised: a run's outcome either way, so one job's
    failure can be reported as its own without failing the jobs it ran with."""
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def _reloaded(reload: ReloadFn, record: JobRecord) -> tuple[Any, Any]:
    """(result, meta) of a stored job; (None, None) when its files or spec are unreadable."""
    loaded = outcome_of(reload, record)
    if isinstance(loaded, Exception):
        log.warning("job %s: cannot read its stored result: %s", record.id, loaded)
        return None, None
    return loaded


def _spent(progress: ProgressFn, cancelled: CancelledFn) -> Any:
    raise RuntimeError("job already ran")
