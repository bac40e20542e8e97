"""The deployment files (docs/DEPLOY.md): the example serve configs under deploy/configs, the
Dockerfile and .dockerignore, and the systemd unit deploy/jaxvideo.service.

Each example config parses strictly, its mesh uses every chip of the target its `# target:`
line names, and the memory planner (jaxvideo.memory_plan, on the published full-size configs
of benchmarks/memory_plan.py: no weights, no accelerator) fits its models' default request on
one chip of that target, by the same rule the engine applies at start. The Dockerfile copies
files that exist and the build context keeps, runs the README's server command as a non-root
user and checks /health; the unit starts the `jaxvideo-server` entry point of setup.cfg and
gives gunicorn the time it needs to drain.
"""

from __future__ import annotations

import configparser
import functools
import importlib.util
import json
import math
import re
import shlex
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from jaxvideo.config import DISTRIBUTED_ENV, ConfigError, load_config, parse_config
from jaxvideo.families import family
from jaxvideo.memory_plan import GIB, ModelPlan, gib, shape_of, usable
from jaxvideo.request import build_request
from jaxvideo.results import round_frames

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "deploy" / "configs").glob("*.yaml"))
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = ROOT / "deploy" / "jaxvideo.service"
BENCHMARK = ROOT / "benchmarks" / "memory_plan.py"

# The model folders the example configs serve, and the published model each one converts
# (benchmarks/memory_plan.py MODELS). A config serving another folder needs an entry here.
PLANNED_MODELS = {"/models/wan21-t2v-14b-jax": "wan2.1-t2v-14b"}
# JAX's GPU allocator takes this share of a GPU unless XLA_PYTHON_CLIENT_MEM_FRACTION says
# otherwise, and the memory plan reads that limit: GPU configs must fit in it too.
GPU_DEFAULT_MEM_FRACTION = 0.75
# Wan's frame counts are 4n + 1 (the VAE's temporal factor).
VIDEO_FRAME_MULTIPLE = 4

SERVER_COMMAND = ["jaxvideo-server", "-b", "0.0.0.0:8000"]


@pytest.fixture(autouse=True)
def _no_distributed_env(monkeypatch):
    """The configs alone decide whether they are multi-host."""
    for variable in DISTRIBUTED_ENV:
        monkeypatch.delenv(variable, raising=False)


def target(path: Path) -> dict[str, Any]:
    """The `# target: {name, platform, hosts, chips_per_host, chip_memory_gib}` comment."""
    found = re.search(r"^# target: (\{.*\})\s*$", path.read_text(), re.MULTILINE)
    assert found, f"{path.name}: no '# target: {{...}}' line"
    spec = yaml.safe_load(found.group(1))
    assert set(spec) == {"name", "platform", "hosts", "chips_per_host", "chip_memory_gib"}, spec
    assert spec["platform"] in ("tpu", "gpu"), spec
    return spec


@functools.cache
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmarks_memory_plan", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


@functools.cache
def base_plan(model: str, dtype: str) -> ModelPlan:
    """One published model's plan on one device; meshes share its abstract networks."""
    published = benchmark().MODELS[model]
    return ModelPlan("", dtype, {}, published.configs, published.index)


def mesh_plan(model: str, dtype: str, mesh: dict[str, int]) -> ModelPlan:
    base = base_plan(model, dtype)
    return benchmark()._MeshPlan(base, mesh) if mesh else base


def default_shape(config, spec):
    """What the engine plans at start (Engine._default_shape): a request that sets nothing,
    with the operator's default_request over the family's defaults."""
    model_family = family(spec.family)
    request = build_request({}, config.default_request, model_family.defaults)
    video = model_family.video
    frames = round_frames(request.num_frames, VIDEO_FRAME_MULTIPLE) if video else 1
    return shape_of(request, frames)


def test_there_is_a_config_per_documented_target():
    names = {path.stem for path in CONFIGS}
    assert {"tpu-v5e-8", "tpu-v5e-16", "gpu-8xh100", "gpu-2x8xh100"} <= names


def test_configs_are_parsed_strictly():
    # What makes the next test meaningful: a misspelt key fails instead of being ignored.
    text = CONFIGS[0].read_text()
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(text.replace("compilation_cache_dir:", "compilation_cache:"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_its_mesh_uses_every_chip(path):
    config = load_config(path)
    spec = target(path)
    chips = spec["hosts"] * spec["chips_per_host"]
    assert math.prod(config.mesh.values()) == chips, (dict(config.mesh), spec)
    # Several hosts are one server only with the distributed runtime on.
    assert config.distributed.active == (spec["hosts"] > 1)
    for model in config.models:
        assert model.path in PLANNED_MODELS, f"{path.name}: plan {model.path} in this test"
        assert model.dtype in ("auto", "bf16")  # bf16 on every accelerator
    # Compiled programs are kept where the unit and the image keep their cache.
    assert config.server.compilation_cache_dir.startswith("/var/cache/jaxvideo/")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_planner_fits_the_models_on_one_chip_of_the_target(path):
    """The engine's start-up rule (Engine._check_startup_fits): the weights of every model
    loaded at start plus the largest default request's activations fit one chip's usable
    memory, and each model loaded on demand fits alone."""
    config = load_config(path)
    spec = target(path)
    memories = [spec["chip_memory_gib"]]
    if spec["platform"] == "gpu":
        memories.append(spec["chip_memory_gib"] * GPU_DEFAULT_MEM_FRACTION)
    plans = {
        m.name: mesh_plan(PLANNED_MODELS[m.path], "bf16", dict(config.mesh)) for m in config.models
    }
    startup = [m.name for m in config.models if m.load == "startup"]
    resident = sum(plans[name].weight_bytes for name in startup)
    for model in config.models:
        estimate = plans[model.name].estimate(default_shape(config, model))
        others = resident - (plans[model.name].weight_bytes if model.name in startup else 0)
        need = estimate.total + (others if model.name in startup else 0)
        for memory in memories:
            room = usable(int(memory * GIB))
            assert need <= room, (
                f"{path.name}: {model.name} needs {estimate.describe()}"
                f"{f' next to {gib(others)} of other weights' if others else ''} on mesh "
                f"{dict(config.mesh)}; a {spec['name']} chip has {gib(room)} usable"
            )


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        word, _, rest = whole.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile_instructions() if word == name]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (a top-level name) out of the build context: the
    last matching pattern decides, `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if fnmatch(path, pattern) or path.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def test_dockerfile_copies_files_that_exist_and_the_context_keeps():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = _instruction("COPY")
    assert copies
    for arguments in copies:
        words = shlex.split(arguments)
        if any(word.startswith("--from") for word in words):
            continue  # from another build stage, not the context
        sources = [word for word in words if not word.startswith("--")][:-1]
        assert sources, arguments
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repo"
            assert not _ignored(source.rstrip("/"), patterns), f".dockerignore drops {source}"
    for heavy in (".venv", ".git", "build", "tests"):
        assert _ignored(heavy, patterns), f".dockerignore should leave {heavy} out"


def test_dockerfile_runs_the_readme_server_command_as_a_non_root_user():
    (cmd,) = _instruction("CMD")
    assert json.loads(cmd) == SERVER_COMMAND
    assert " ".join(SERVER_COMMAND) in (ROOT / "README.md").read_text()
    assert _instruction("EXPOSE") == ["8000"]
    users = _instruction("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # The jax flavour is a build argument, cpu by default.
    assert any(re.fullmatch(r"JAX_EXTRA=cpu", arg) for arg in _instruction("ARG"))
    assert any("jax[${JAX_EXTRA}]" in run for run in _instruction("RUN"))
    env = " ".join(_instruction("ENV"))
    for variable in ("JAXVIDEO_STATE_DIR", "JAXVIDEO_OUTPUT_DIR", "JAXVIDEO_CACHE_DIR"):
        assert variable in env


def test_dockerfile_healthcheck_asks_health_with_python():
    (check,) = _instruction("HEALTHCHECK")
    options, _, command = check.partition("CMD")
    assert command, "HEALTHCHECK needs a CMD"
    argv = json.loads(command)
    assert argv[0] in ("python", "python3")
    assert "http://127.0.0.1:8000/health" in argv[-1]


# --- systemd unit -----------------------------------------------------------------------------


def unit_environment() -> dict[str, str]:
    """Every `Environment=` assignment of the unit (configparser keeps only the last line)."""
    env: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for word in shlex.split(line.removeprefix("Environment=")):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def console_scripts() -> dict[str, str]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def test_env_example_names_only_variables_the_server_reads():
    names = re.findall(
        r"^#?([A-Z][A-Z0-9_]+)=", (ROOT / "deploy" / "env.example").read_text(), re.M
    )
    sources = "".join(
        path.read_text()
        for folder in ("jaxvideo", "webapp")
        for path in (ROOT / folder).rglob("*.py")
    )
    outside = {"XLA_PYTHON_CLIENT_MEM_FRACTION", "GUNICORN_CMD_ARGS"}  # read by JAX, gunicorn
    assert {"JAXVIDEO_API_KEY", *DISTRIBUTED_ENV} <= set(names)
    for name in names:
        assert name in outside or f'"{name}"' in sources, f"nothing reads {name}"


def test_unit_starts_the_server_entry_point():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(UNIT)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    script = Path(argv[0])
    assert script.is_absolute() and script.name in console_scripts()
    assert console_scripts()[script.name] == "webapp.serve:main"
    assert argv[1:] == SERVER_COMMAND[1:]
    assert service["User"] not in ("root", "0")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["LimitNOFILE"]) >= 65536

    from webapp import gunicorn_conf

    # gunicorn drains for up to graceful_timeout after SIGTERM; systemd must not kill sooner.
    assert int(service["TimeoutStopSec"]) > gunicorn_conf.graceful_timeout

    env = unit_environment()
    assert env["JAXVIDEO_CONFIG"] == "/etc/jaxvideo/serve.yaml"
    assert service["EnvironmentFile"] == "-/etc/jaxvideo/env"
    # systemd creates /var/lib/<StateDirectory> and /var/cache/<CacheDirectory> for the user.
    state, cache = service["StateDirectory"], service["CacheDirectory"]
    assert env["JAXVIDEO_STATE_DIR"].startswith(f"/var/lib/{state}/")
    assert env["JAXVIDEO_OUTPUT_DIR"].startswith(f"/var/lib/{state}/")
    assert env["JAXVIDEO_CACHE_DIR"] == f"/var/cache/{cache}"
    # The image keeps the same layout, so one serve config works in both.
    docker_env = " ".join(_instruction("ENV"))
    for key in ("JAXVIDEO_STATE_DIR", "JAXVIDEO_OUTPUT_DIR", "JAXVIDEO_CACHE_DIR"):
        assert f"{key}={env[key]}" in docker_env
