"""The engine's memory plan with fake device memory sizes on CPU: it refuses to start a model
that cannot fit, answers 400 at submission for a request that cannot, loads `on_demand` models
at their first request and unloads the least recently used one when the plan needs room."""

from dataclasses import replace

import jax
import pytest

from jaxvideo.config import parse_config
from jaxvideo.cost import Shape
from jaxvideo.demo import resolve_demo
from jaxvideo.engine import LOADING, Engine
from jaxvideo.errors import InvalidRequest
from jaxvideo.memory_plan import GIB, RESERVE_FRACTION, ModelPlan
from jaxvideo.request import GenerationRequest

SMALL = Shape(64, 64, 1, 1, True)  # the configs' default request below


def config(memory_bytes: float, second_load: str = "on_demand"):
    return parse_config(f"""
models:
  - {{name: a, family: sd1, path: "demo:sd1-tiny"}}
  - {{name: b, family: sd1, path: "demo:sd1-tiny", load: {second_load}}}
server: {{device_memory_gib: {memory_bytes / GIB / (1 - RESERVE_FRACTION)!r}}}
default_request: {{width: 64, height: 64, steps: 1}}
""")


@pytest.fixture(scope="module")
def plan() -> ModelPlan:
    return ModelPlan(resolve_demo("demo:sd1-tiny"), "fp32", {})


def live_bytes() -> int:
    return sum(array.nbytes for array in jax.live_arrays())


def test_a_model_that_cannot_serve_its_default_request_refuses_to_start(plan):
    need = plan.estimate(SMALL).total
    with pytest.raises(ValueError) as caught:
        Engine(config(need * 0.9))
    message = str(caught.value)
    assert "model 'a'" in message and "mesh none" in message
    assert "per device" in message and "usable" in message


def test_models_loaded_at_start_must_fit_together(plan):
    one = plan.estimate(SMALL).total
    with pytest.raises(ValueError, match="does not fit next to the other models"):
        Engine(config(one + plan.weight_bytes // 2, second_load="startup"))


def test_on_demand_models_load_at_first_use_and_evict_the_least_recently_used(plan):
    # Room for one model's weights and a small request, never for two models.
    engine = Engine(config(plan.estimate(SMALL).total + plan.weight_bytes // 2))
    assert engine.is_loaded("a") and not engine.is_loaded("b")
    states = {s["name"]: s for s in engine.model_states()}
    assert states["b"]["load"] == "on_demand" and not states["b"]["loaded"]
    assert states["a"]["weights_bytes_per_device"] == plan.weight_bytes

    # b's request is checked while b is not loaded (validate runs on its shapes-only pipeline).
    request = GenerationRequest(model="b", width=64, height=64, steps=1, seed=3)
    prepared = engine.prepare(request)
    phases = []

    def progress(step, total, phase=None):
        phases.append(phase)

    before = live_bytes()
    result = engine.generate(prepared, progress=progress)
    assert len(result.images) == 1
    assert phases[0] == LOADING and phases[-1] is None  # loading, then steps
    assert engine.is_loaded("b") and not engine.is_loaded("a")  # a made room
    # a's device buffers were freed, not merely dropped (b's are the same size).
    assert live_bytes() - before < plan.weight_bytes // 2

    again = engine.generate(replace(request, model="a"))
    assert engine.is_loaded("a") and not engine.is_loaded("b")
    # The same request on a freshly loaded model gives the same image.
    assert (again.images[0] == engine.generate(replace(request, model="a")).images[0]).all()


def test_a_request_that_cannot_fit_is_refused_at_submission(plan):
    engine = Engine(config(plan.estimate(SMALL).total * 1.5))
    big = GenerationRequest(model="a", width=512, height=512, steps=1, batch_count=4)
    assert plan.estimate(Shape(512, 512, 1, 4, True)).total > plan.estimate(SMALL).total * 1.5
    with pytest.raises(InvalidRequest) as caught:
        engine.prepare(big)
    assert caught.value.field == "batch_count"
    assert "cannot run this request" in str(caught.value) and "512x512" in str(caught.value)
    engine.prepare(replace(big, width=64, height=64, batch_count=1))  # a small one is fine


def test_batches_are_limited_to_what_fits(plan):
    small = plan.estimate(SMALL)
    engine = Engine(config(small.weights + 2.5 * small.activations))
    request = GenerationRequest(model="a", width=64, height=64, steps=1)
    assert engine.batch_limit(request) == 2


def test_admin_load_and_unload(plan):
    engine = Engine(config(plan.estimate(SMALL).total * 3))
    assert not engine.is_loaded("b")
    engine.load("b")
    assert engine.is_loaded("a") and engine.is_loaded("b")  # both fit: nothing evicted
    assert engine.unload("b") is True and not engine.is_loaded("b")
    assert engine.unload("b") is False
    with pytest.raises(InvalidRequest):
        engine.load("nope")
