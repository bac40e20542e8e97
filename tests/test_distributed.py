"""jaxvideo.distributed without devices: the `distributed:` config and its environment
overrides, requests on the wire, and the command protocol over JAX's real coordination service
(the service and two clients in this process, as `jax.distributed.initialize` would start them
in two), so step decisions, follower deaths and hangs are checked in a second; the two-process
server with real collectives is tests/web/test_e2e_multihost.py."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from jaxvideo import distributed
from jaxvideo.config import ConfigError, DistributedConfig, parse_config
from jaxvideo.distributed import Follower, Leader, SliceBroken
from jaxvideo.request import GenerationRequest
from tests.support.serving import free_port

MODELS = 'models: [{name: m, family: sd1, path: "demo:sd1-tiny"}]\n'


def _parse(text: str = "", env: dict | None = None, monkeypatch=None) -> DistributedConfig:
    for name in distributed_env():
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    return parse_config(MODELS + text).distributed


def distributed_env() -> tuple[str, ...]:
    from jaxvideo.config import DISTRIBUTED_ENV

    return tuple(DISTRIBUTED_ENV)


def test_distributed_is_off_by_default_and_on_with_a_coordinator(monkeypatch):
    assert not _parse(monkeypatch=monkeypatch).active
    config = _parse(
        "distributed: {coordinator: '10.0.0.2:1234', num_processes: 4, process_id: 3}\n",
        monkeypatch=monkeypatch,
    )
    assert config.active and config.process_id == 3
    assert _parse("distributed: {enabled: true}\n", monkeypatch=monkeypatch).active


def test_the_environment_overrides_the_yaml(monkeypatch):
    env = {
        "JAXVIDEO_COORDINATOR": "host-0:8476",
        "JAXVIDEO_NUM_PROCESSES": "2",
        "JAXVIDEO_PROCESS_ID": "1",
    }
    text = "distributed: {coordinator: 'other:1', num_processes: 8, process_id: 0}\n"
    config = _parse(text, env, monkeypatch)
    assert (config.coordinator, config.num_processes, config.process_id) == ("host-0:8476", 2, 1)
    assert _parse("", {"JAXVIDEO_DISTRIBUTED": "1"}, monkeypatch).active
    off = _parse("distributed: {enabled: true}\n", {"JAXVIDEO_DISTRIBUTED": "0"}, monkeypatch)
    assert not off.active


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ("distributed: {coordinator: 'no-port'}\n", {}, "distributed.coordinator"),
        ("distributed: {num_processes: 2, process_id: 2}\n", {}, "distributed.process_id"),
        ("distributed: {heartbeat_timeout_s: 0}\n", {}, "distributed.heartbeat_timeout_s"),
        ("distributed: {hosts: 2}\n", {}, "distributed.hosts"),
        ("", {"JAXVIDEO_NUM_PROCESSES": "two"}, "JAXVIDEO_NUM_PROCESSES"),
    ],
)
def test_bad_distributed_settings_are_named(text, env, named, monkeypatch):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        _parse(text, env, monkeypatch)


def test_requests_travel_with_their_images():
    init = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    first = GenerationRequest(prompt="a fox", seed=7, init_image=init, strength=0.5)
    second = GenerationRequest(prompt="a cat", ref_images=(init, init[::-1]), batch_count=2)
    back = distributed.unpack_requests(distributed.pack_requests([first, second]))
    assert back[0].prompt == "a fox" and back[0].seed == 7 and back[0].strength == 0.5
    np.testing.assert_array_equal(back[0].init_image, init)
    assert back[1].batch_count == 2 and back[1].init_image is None
    np.testing.assert_array_equal(back[1].ref_images[1], init[::-1])
    assert distributed.unpack(distributed.pack("load", b"model-a")) == ("load", b"model-a")


# -- the protocol over JAX's coordination service -----------------------------------------------

FAST = DistributedConfig(enabled=True, heartbeat_timeout_s=1.0, sync_timeout_s=5.0)


@pytest.fixture
def pair():
    """A leader and a follower joined through a real coordination service on loopback."""
    from jax._src.lib import _jax

    address = f"127.0.0.1:{free_port()}"
    service = _jax.get_distributed_runtime_service(
        f"[::]:{address.rsplit(':', 1)[1]}", 2, heartbeat_timeout=5, recoverable=True
    )
    clients = [
        _jax.get_distributed_runtime_client(address, i, init_timeout=30, heartbeat_timeout=5)
        for i in range(2)
    ]
    connecting = [threading.Thread(target=c.connect) for c in clients]
    for thread in connecting:
        thread.start()
    for thread in connecting:
        thread.join(30)
    leader, follower = Leader(clients[0], 0, 2, FAST), Follower(clients[1], 1, 2, FAST)
    yield leader, follower
    leader.stop()
    follower.stop()
    time.sleep(distributed.BEAT_S * 2 + distributed.POLL_MS / 1000)  # their threads leave
    for client in clients:  # before the service goes, or a client's runtime aborts
        client.shutdown()
    service.shutdown()


def sampler(controller, op: str, payload: bytes, stop, steps: int = 10) -> int:
    """Engine.generate's shape: one command whose sampler asks the stop check each step."""
    with controller.command(op, payload) as gate:
        check = gate(stop)
        for done in range(steps):
            if check is not None and check():
                return done
    return steps


def follow(follower: Follower) -> tuple[threading.Thread, list]:
    ran: list = []

    def run(op: str, payload: bytes) -> None:
        steps = 0 if op == "unload" else 10  # the same code as the leader's, as in the engine
        ran.append((op, payload, sampler(follower, op, payload, stop=None, steps=steps)))

    thread = threading.Thread(target=follower.serve, args=(run,), daemon=True)
    thread.start()
    return thread, ran


def test_followers_run_each_command_and_stop_at_the_leaders_step(pair):
    leader, follower = pair
    _, ran = follow(follower)
    leader.start()
    assert sampler(leader, "generate", b"first", stop=None) == 10
    asked = iter(range(100))
    assert sampler(leader, "generate", b"second", stop=lambda: next(asked) >= 3) == 3
    assert sampler(leader, "unload", b"m", stop=None, steps=0) == 0
    # The leader waited for each to finish: the follower ran them all, in order, alike.
    assert ran == [("generate", b"first", 10), ("generate", b"second", 3), ("unload", b"m", 0)]
    assert leader.broken is None and follower.broken is None


def test_before_start_every_process_runs_on_its_own(pair):
    leader, follower = pair
    # Start-up loads and warm-ups: nothing is published, the stop check stays the caller's.
    assert sampler(leader, "generate", b"", stop=lambda: True) == 0
    assert sampler(follower, "generate", b"", stop=None) == 10


def test_a_silent_follower_breaks_the_slice_and_later_commands_fail(pair):
    leader, follower = pair
    heard = []
    leader.on_broken(heard.append)
    leader.start()
    follower.stop()  # its heartbeat stops, as a killed or frozen process's would
    deadline = time.monotonic() + 10
    while not heard and time.monotonic() < deadline:
        time.sleep(0.05)
    assert heard and "process 1 sent no heartbeat" in heard[0]
    assert leader.describe() == {
        "process_id": 0,
        "num_processes": 2,
        "healthy": False,
        "reason": heard[0],
    }
    with pytest.raises(SliceBroken, match="process 1"):
        sampler(leader, "generate", b"", stop=None)


def test_a_follower_that_never_finishes_a_command_breaks_the_slice(pair):
    leader, follower = pair
    leader.config = replace(FAST, sync_timeout_s=1.0)
    follower.start()  # alive (heartbeats) but never runs the command: a hang
    leader.start()
    started = time.monotonic()
    with pytest.raises(SliceBroken, match="did not finish command 1|made no progress"):
        sampler(leader, "generate", b"", stop=None)
    assert time.monotonic() - started < 10


def test_a_follower_that_fails_a_command_alone_breaks_the_slice_in_seconds(pair):
    # Its host lacks a model folder, say: it never joins the collectives, so process 0 must
    # not wait for sync_timeout_s (600 s by default) to notice.
    leader, follower = pair
    leader.config = replace(FAST, sync_timeout_s=60.0)

    def run(op: str, payload: bytes) -> None:
        raise FileNotFoundError("no /models/wan on this host")

    threading.Thread(target=follower.serve, args=(run,), daemon=True).start()
    leader.start()
    started = time.monotonic()
    with pytest.raises(SliceBroken, match="process 1 failed command 1: FileNotFoundError"):
        sampler(leader, "generate", b"", stop=lambda: time.sleep(0.2) or False, steps=100)
    assert time.monotonic() - started < 10
