"""Several hosts as one server, on JAX's multi-controller runtime (`jax.distributed`).

Every host runs the same command. `initialize` joins the processes (JAX finds the coordinator
itself on TPU VMs and under SLURM) and returns this process's `Controller`: process 0's
`Leader` serves the API and owns the job table; every other process is a `Follower` that runs
`Follower.serve` instead. Each engine operation that runs device programs (generate, a batch,
load, unload) is a *command*: the leader publishes it in the coordination service's key-value
store, and every process then makes the identical jitted calls over the global mesh, so XLA's
collectives line up.

Cancellation stays consistent: the sampler asks its stop check at every step boundary, and
there only the leader decides; it publishes each answer (`cmd/N/stop/K`) and the followers
read it, so all processes stop at the same step. Heartbeats in the same store let each side
see the other go: a dead or silent follower, or a leader that never hears back at a command's
end, marks the slice `broken` and tells the listeners (the web layer fails the running job and
answers 503 on /health). JAX's own runtime is started in recoverable mode, so a dead follower
does not take process 0 down with it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jaxvideo.config import DistributedConfig

log = logging.getLogger(__name__)

PREFIX = "jaxvideo"
# How often each process writes its heartbeat and reads the others'.
BEAT_S = 0.5
# Followers wait for keys in slices this long, so they notice a broken slice or a stop.
POLL_MS = 1000

StopCheck = Callable[[], bool]
# How a follower's command ended: OK, or the error's type and first line.
OK = "ok"
CANCELLED = "Cancelled"  # stopped at the leader's decision, like the leader


class SliceBroken(RuntimeError):
    """A process of the slice died, hung or lost the others; nothing more can run."""

    code = "process_lost"


def initialize(config: DistributedConfig) -> Controller | None:
    """Joins this process to the slice the config (or the platform) describes, before JAX
    touches any device; None when distributed serving is off."""
    if not config.active:
        return None
    import jax

    # A dead follower must leave process 0 running, to fail its job and answer 503.
    jax.config.update("jax_enable_recoverability", True)
    sigterm = _sigterm_handler()
    jax.distributed.initialize(
        coordinator_address=config.coordinator,
        num_processes=config.num_processes,
        process_id=config.process_id,
        initialization_timeout=config.initialization_timeout_s,
        heartbeat_timeout_seconds=max(1, int(config.heartbeat_timeout_s)),
    )
    # JAX's preemption notifier takes SIGTERM for itself; the server drains on it (gunicorn's
    # handler, webapp/worker.py), so it gets it back.
    if sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    from jax._src.distributed import global_state

    index, count = jax.process_index(), jax.process_count()
    log.info(
        "process %d of %d; %d local and %d global devices",
        index,
        count,
        jax.local_device_count(),
        jax.device_count(),
    )
    kind = Leader if index == 0 else Follower
    controller = kind(global_state.client, index, count, config)
    controller.coordinator = global_state.coordinator_address
    return controller


class Controller:
    """This process's part in the slice: commands, step decisions, heartbeats, health."""

    def __init__(self, client: Any, process_id: int, num_processes: int, config: DistributedConfig):
        self.client = client
        self.process_id = process_id
        self.num_processes = num_processes
        self.config = config
        self.coordinator: str | None = config.coordinator  # host:port, once JAX knows it
        self.broken: str | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._started = False  # commands are published only once every engine is built
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        # The command in flight and when it last moved (a step, its start), for the watchdog.
        self._active: int | None = None
        self._moved = time.monotonic()
        self._heart = threading.Thread(target=self._beat, name="jaxvideo-heartbeat", daemon=True)
        self._heart.start()

    @property
    def is_leader(self) -> bool:
        return self.process_id == 0

    def start(self) -> None:
        """From now on engine operations are commands. Before this, at start, every process
        loads its startup models and runs its warm-up requests in the same order by itself."""
        self._started = True

    def stop(self) -> None:
        self._stopping.set()

    def on_broken(self, listener: Callable[[str], None]) -> None:
        """`listener(reason)` runs once, from the heartbeat thread, when the slice breaks."""
        self._listeners.append(listener)
        if self.broken is not None:
            listener(self.broken)

    def describe(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "num_processes": self.num_processes,
            "healthy": self.broken is None,
            "reason": self.broken,
        }

    def command(self, op: str, payload: bytes) -> contextlib.AbstractContextManager[Gate]:
        raise NotImplementedError

    # -- health -------------------------------------------------------------------------------

    def _break(self, reason: str) -> None:
        with self._lock:
            if self.broken is not None:
                return
            self.broken = reason
        log.error("slice broken: %s", reason)
        for listener in self._listeners:
            try:
                listener(reason)
            except Exception:
                log.exception("slice-broken listener failed")

    def _watched(self) -> Sequence[int]:
        """The processes whose heartbeats this one checks."""
        raise NotImplementedError

    def _beat(self) -> None:
        """Writes this process's heartbeat and checks the others' (a counter that stops
        moving for `heartbeat_timeout_s` is a dead or frozen process), and a command that
        stopped moving for `sync_timeout_s`."""
        counter = itertools.count()
        seen: dict[int, tuple[str | None, float]] = {}
        while not self._stopping.wait(BEAT_S) and self.broken is None:
            now = time.monotonic()
            try:
                self.client.key_value_set(
                    f"{PREFIX}/beat/{self.process_id}", str(next(counter)), allow_overwrite=True
                )
                for other in self._watched():
                    value = _try_get(self.client, f"{PREFIX}/beat/{other}")
                    if other not in seen or value != seen[other][0]:
                        seen[other] = (value, now)
                    elif now - seen[other][1] > self.config.heartbeat_timeout_s:
                        self._break(
                            f"process {other} sent no heartbeat for "
                            f"{self.config.heartbeat_timeout_s:g} s (dead or frozen)"
                        )
                self._watch_command(now)
            except Exception as exc:  # the coordination service itself is gone (process 0)
                self._break(f"lost the coordination service: {_first_line(exc)}")
                return
            if self._active is not None and now - self._moved > self.config.sync_timeout_s:
                self._break(
                    f"command {self._active} made no progress for "
                    f"{self.config.sync_timeout_s:g} s (a process hangs)"
                )

    def _watch_command(self, now: float) -> None:
        """Checks on the command in flight, once per heartbeat."""

    def _moving(self) -> None:
        self._moved = time.monotonic()

    def _check(self) -> None:
        if self.broken is not None:
            raise SliceBroken(self.broken)


class Gate:
    """Turns a command's stop check into one every process answers alike, step by step.
    Without a `check` (one process, or outside a command) the stop check is left as it is."""

    def __init__(self, check: Callable[[StopCheck | None], bool] | None):
        self._check = check

    def __call__(self, stop: StopCheck | None) -> StopCheck | None:
        if self._check is None:
            return stop
        check = self._check
        return lambda: check(stop)


# Outside a command: start-up loads and warm-ups, which every process runs by itself.
LOCAL = Gate(None)


class Leader(Controller):
    """Process 0: publishes each command and each step's stop decision."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._numbers = itertools.count(1)
        self._failed_at: dict[tuple[int, int], float] = {}  # (command, process) -> first seen

    def _watched(self) -> Sequence[int]:
        return range(1, self.num_processes)

    @contextlib.contextmanager
    def command(self, op: str, payload: bytes) -> Iterator[Gate]:
        """Publishes command `op` and yields the gate for its stop checks; at the end waits
        until every follower has finished it too."""
        if not self._started:
            yield LOCAL
            return
        self._check()
        number = next(self._numbers)
        key = f"{PREFIX}/cmd/{number}"
        steps = itertools.count()

        def decide(stop: StopCheck | None) -> bool:
            self._check()
            decision = bool(stop is not None and stop())
            self.client.key_value_set(f"{key}/stop/{next(steps)}", "1" if decision else "0")
            self._moving()
            return decision

        self._active = number
        self._moving()
        self.client.key_value_set_bytes(key, pack(op, payload))
        try:
            yield Gate(decide)
        finally:
            self._active = None
            self._await_followers(number)
            if number > 2:  # followers are past it: free the store's copy of an old command
                with contextlib.suppress(Exception):
                    self.client.key_value_delete(f"{PREFIX}/cmd/{number - 2}")

    def _watch_command(self, now: float) -> None:
        """A follower that failed the command in flight while process 0 still runs it
        (a model folder missing on its host, say) has left the collectives: process 0 would
        wait in them until `sync_timeout_s`, so the slice breaks after the grace a process
        failing the same way in step (a cancel) needs to finish too."""
        number = self._active
        if number is None:
            self._failed_at.clear()
            return
        for other in self._watched():
            outcome = _try_get(self.client, f"{PREFIX}/cmd/{number}/done/{other}")
            if outcome in (None, OK) or outcome.startswith(CANCELLED):
                continue
            since = self._failed_at.setdefault((number, other), now)
            if now - since > self.config.heartbeat_timeout_s and self._active == number:
                self._break(f"process {other} failed command {number}: {outcome}")

    def _await_followers(self, number: int) -> None:
        """Every follower ran command `number` to its end, or the slice breaks."""
        deadline = time.monotonic() + self.config.sync_timeout_s
        for other in range(1, self.num_processes):
            key = f"{PREFIX}/cmd/{number}/done/{other}"
            while True:
                self._check()
                try:
                    outcome = self.client.blocking_key_value_get(key, POLL_MS)
                    break
                except Exception as exc:
                    if "DEADLINE_EXCEEDED" not in str(exc):
                        self._break(f"lost the coordination service: {_first_line(exc)}")
                        self._check()
                    if time.monotonic() > deadline:
                        self._break(
                            f"process {other} did not finish command {number} within "
                            f"{self.config.sync_timeout_s:g} s"
                        )
                        self._check()
            if outcome != OK and not outcome.startswith(CANCELLED):
                log.warning("process %d: command %d: %s", other, number, outcome)


class Follower(Controller):
    """Processes 1..N-1: run each command the leader publishes, with the leader's decisions."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._current: int | None = None

    def _watched(self) -> Sequence[int]:
        return (0,)

    @contextlib.contextmanager
    def command(self, op: str, payload: bytes) -> Iterator[Gate]:
        if not self._started or self._current is None:
            yield LOCAL
            return
        key = f"{PREFIX}/cmd/{self._current}"
        steps = itertools.count()

        def follow(stop: StopCheck | None) -> bool:
            decision = self._wait(f"{key}/stop/{next(steps)}") == b"1"
            self._moving()
            return decision

        yield Gate(follow)

    def serve(self, run: Callable[[str, bytes], Any]) -> None:
        """Runs the leader's commands in order, `run(op, payload)` each, until the slice
        breaks or `stop` is called (a thread of its own; it may block inside XLA)."""
        self.start()
        for number in itertools.count(1):
            key = f"{PREFIX}/cmd/{number}"
            try:
                op, payload = unpack(self._wait(key))
            except SliceBroken:
                return
            self._current, self._active = number, number
            self._moving()
            outcome = OK
            try:
                run(op, payload)
            except SliceBroken:
                return
            except Exception as exc:  # the leader fails the same way; its job reports it
                outcome = f"{type(exc).__name__}: {_first_line(exc)}"
            finally:
                self._current = self._active = None
            try:
                self.client.key_value_set(f"{key}/done/{self.process_id}", outcome)
            except Exception as exc:
                self._break(f"lost the coordination service: {_first_line(exc)}")
                return

    def _wait(self, key: str) -> bytes:
        while True:
            if self._stopping.is_set():
                raise SliceBroken("stopping")
            self._check()
            try:
                return self.client.blocking_key_value_get_bytes(key, POLL_MS)
            except Exception as exc:
                if "DEADLINE_EXCEEDED" not in str(exc):
                    self._break(f"lost the coordination service: {_first_line(exc)}")


# -- the wire format of a command: an op name and its payload -----------------------------------


def pack(op: str, payload: bytes) -> bytes:
    head = op.encode()
    return struct.pack("<I", len(head)) + head + payload


def unpack(data: bytes) -> tuple[str, bytes]:
    (length,) = struct.unpack_from("<I", data)
    return data[4 : 4 + length].decode(), data[4 + length :]


def pack_requests(requests: Sequence[Any]) -> bytes:
    """GenerationRequests (prepared or not) as bytes: JSON fields plus their image arrays."""
    import io

    import numpy as np

    from jaxvideo.request_codec import encode_request

    fields, arrays = [], {}
    for i, request in enumerate(requests):
        request = getattr(request, "request", request)  # a PreparedRequest's request
        scalars, images = encode_request(request)
        fields.append(scalars)
        arrays.update({f"{i}/{name}": value for name, value in images.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    head = json.dumps(fields).encode()
    return struct.pack("<I", len(head)) + head + buffer.getvalue()


def unpack_requests(data: bytes) -> list[Any]:
    import io

    import numpy as np

    from jaxvideo.request_codec import decode_request

    (length,) = struct.unpack_from("<I", data)
    fields = json.loads(data[4 : 4 + length])
    with np.load(io.BytesIO(data[4 + length :])) as archive:
        arrays = {name: archive[name] for name in archive.files}
    requests = []
    for i, scalars in enumerate(fields):
        prefix = f"{i}/"
        own = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        requests.append(decode_request(scalars, own))
    return requests


def _sigterm_handler() -> Any:
    """This process's Python SIGTERM handler, if it may be put back (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGTERM)


def _try_get(client: Any, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as exc:
        if "NOT_FOUND" in str(exc):
            return None
        raise


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


__all__ = [
    "Controller",
    "Follower",
    "Gate",
    "LOCAL",
    "Leader",
    "SliceBroken",
    "initialize",
    "pack_requests",
    "unpack_requests",
]
