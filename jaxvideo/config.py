"""The serve configuration: which models to load, server limits and operator defaults.

Loaded from YAML (`load_config`) and validated strictly: an unknown key or a wrong type raises
`ConfigError` naming its path (`models[0].dtype: ...`), so a typo never silently falls back to a
default. No Flask and no JAX in here: the web layer and the engine both read it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from jaxvideo.errors import InvalidRequest
from jaxvideo.families import FAMILY_NAMES, SD1, FamilySpec, demo_builder, family
from jaxvideo.request import GenerationRequest, check_ranges

# "auto": bf16 on accelerators (GPU/TPU), fp32 on CPU, decided when the model loads.
DTYPES = ("auto", "fp32", "fp16", "bf16")
# When a model's weights are read: at server start, or at the first request that needs it
# (and again after the engine evicted it to make room for another).
LOAD_POLICIES = ("startup", "on_demand")
MESH_AXES = ("data", "fsdp", "tensor", "context")
DEMO_PREFIX = "demo:"
DEFAULT_CONFIG_RESOURCE = "configs/default.yaml"
DEFAULT_OUTPUT_DIR = "~/.cache/jaxvideo/outputs"
DEFAULT_STATE_DIR = "~/.cache/jaxvideo/state"


def family_of(model: str) -> str:
    """The family a model path holds: a demo's row for `demo:<name>`, else what the converted
    folder's model_index.json records (sd1 where it records none)."""
    if model.startswith(DEMO_PREFIX):
        return demo_builder(model[len(DEMO_PREFIX) :])[0].name
    index = Path(model).expanduser() / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{model} is not a converted jaxvideo model (no model_index.json)")
    return json.loads(index.read_text()).get("family") or SD1.name


class ConfigError(ValueError):
    """The serve YAML is invalid; the message starts with the offending path."""


@dataclass(frozen=True)
class ModelSpec:
    """One served model. `path` is a converted model folder, or `demo:<name>` for a demo model."""

    name: str
    family: str
    path: str
    dtype: str = "auto"
    load: str = "startup"

    @property
    def is_demo(self) -> bool:
        return self.path.startswith(DEMO_PREFIX)

    @property
    def family_spec(self) -> FamilySpec:
        return family(self.family)


@dataclass(frozen=True)
class ServerConfig:
    """Limits and housekeeping of the HTTP server and its job table."""

    output_dir: str = field(
        default_factory=lambda: os.path.expanduser(
            os.environ.get("JAXVIDEO_OUTPUT_DIR", DEFAULT_OUTPUT_DIR)
        )
    )
    # The job store (SQLite plus one folder per job): accepted jobs and finished results survive
    # a restart or a crash. One server per folder. None: jobs live in memory only.
    state_dir: str | None = field(
        default_factory=lambda: os.path.expanduser(
            os.environ.get("JAXVIDEO_STATE_DIR", DEFAULT_STATE_DIR)
        )
    )
    max_queue_size: int = 64
    job_retention_s: float = 600
    expired_retention_s: float = 600
    min_width: int = 64
    max_width: int = 2048
    min_height: int = 64
    max_height: int = 2048
    max_batch_count: int = 8
    max_steps: int = 150
    max_body_bytes: int = 64 * 1024 * 1024
    # Characters of a prompt or negative prompt: bounds tokenising and text encoding (a
    # prompt is at most this / 75 chunks of 77 tokens) however large the body may be.
    max_prompt_chars: int = 4096
    # The work one request may ask for, in megapixel-steps: width x height x frames x steps x
    # images / 1e6 (a hires pass adds its own). A cancel waits for the step in progress, so
    # this also bounds how long one takes. 4000 admits Wan 720p x 81 frames x 50 steps.
    max_work: int = 4000
    # The job worker runs up to this many compatible queued jobs (same model, size, frames,
    # sampler, steps, ...) as one batched call; each keeps its own seed, prompt and cancel.
    # 1 = one job at a time.
    max_batch_size: int = 4
    lora_dir: str | None = None
    # Folder that `input_reference` file paths (FastVideo) must lie in; unset = paths refused
    # (uploads and data URLs still work).
    input_dir: str | None = None
    # Persistent XLA compilation cache: compiled denoisers and decoders are written here and
    # reused by the next start (a restart skips most compile time). Unset = no cache.
    compilation_cache_dir: str | None = None
    # Memory of one device in GiB for the memory plan (jaxvideo.memory_plan). Unset: what
    # JAX reports for a GPU or TPU; on CPU the host's memory divided among the mesh's devices.
    device_memory_gib: float | None = None
    # Origins (scheme://host[:port]) whose web pages may call this server from a browser; "*"
    # allows any. Empty: same-origin only, so no other site's page can submit jobs or read
    # results through a visitor's browser.
    cors_origins: tuple[str, ...] = ()
    # Secrets are better kept out of YAML files, so the environment may supply the key.
    api_key: str | None = field(
        default_factory=lambda: os.environ.get("JAXVIDEO_API_KEY") or None, repr=False
    )


@dataclass(frozen=True)
class DistributedConfig:
    """One JAX process per host (jaxvideo.distributed): where they meet and how long process 0
    trusts a silent one. Every host runs the same command; the environment overrides the YAML
    (JAXVIDEO_DISTRIBUTED, JAXVIDEO_COORDINATOR, JAXVIDEO_NUM_PROCESSES, JAXVIDEO_PROCESS_ID)."""

    # On when set, or when a coordinator or a process count is given. On TPU VMs and under
    # SLURM, JAX finds the coordinator, count and id itself, so `enabled: true` is enough.
    enabled: bool = False
    coordinator: str | None = None  # "host:port" of process 0's coordination service
    num_processes: int | None = None
    process_id: int | None = None
    # Seconds a process may go without a heartbeat before the others count it dead.
    heartbeat_timeout_s: float = 10.0
    # Seconds process 0 waits for the others at a job's end, and for a running job to make
    # progress (a compile counts), before it fails the job and reports the slice unhealthy.
    sync_timeout_s: float = 600.0
    # Seconds the processes wait for each other at start.
    initialization_timeout_s: int = 300

    @property
    def active(self) -> bool:
        return self.enabled or self.coordinator is not None or self.num_processes is not None


# Environment variables that override the `distributed:` section, and the field each sets.
DISTRIBUTED_ENV = {
    "JAXVIDEO_DISTRIBUTED": "enabled",
    "JAXVIDEO_COORDINATOR": "coordinator",
    "JAXVIDEO_NUM_PROCESSES": "num_processes",
    "JAXVIDEO_PROCESS_ID": "process_id",
}


@dataclass(frozen=True)
class ServeConfig:
    """What `gunicorn webapp:app` serves. `default_request` holds only operator-written keys."""

    models: tuple[ModelSpec, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    default_request: Mapping[str, Any] = field(default_factory=dict)
    mesh: Mapping[str, int] = field(default_factory=dict)
    source: str | None = None
    # Requests (scalar GenerationRequest fields) run once at start, so the shapes clients
    # will send are compiled before the first client waits for them.
    warmup: tuple[Mapping[str, Any], ...] = ()
    # How self-attention over a sequence split over `mesh.context` runs: "ulysses" (explicit
    # all-to-all between sequence and heads) or "gspmd" (the partitioner gathers keys/values).
    context_parallel: str = "ulysses"
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# How sequence-parallel self-attention runs (jaxvideo.models.context_parallel).
CONTEXT_PARALLEL_MODES = ("ulysses", "gspmd")


def load_config(path: str | os.PathLike[str] | None = None) -> ServeConfig:
    """Loads `path`, else `$JAXVIDEO_CONFIG`, else the embedded default demo config."""
    path = path or os.environ.get("JAXVIDEO_CONFIG") or None
    if path is None:
        text = resources.files("jaxvideo").joinpath(DEFAULT_CONFIG_RESOURCE).read_text("utf-8")
        return parse_config(text, base_dir=None, source="<embedded default.yaml>")
    file = Path(path).expanduser()
    try:
        text = file.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(file)!r}: {exc.strerror or exc}") from exc
    return parse_config(text, base_dir=file.resolve().parent, source=str(file))


def parse_config(text: str, base_dir: Path | None = None, source: str | None = None) -> ServeConfig:
    """Parses YAML text; relative paths resolve against `base_dir` (the YAML file's folder)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {source or 'config'}: {exc}") from exc
    return config_from_dict({} if raw is None else raw, base_dir=base_dir, source=source)


TOP_KEYS = (
    "models",
    "server",
    "default_request",
    "mesh",
    "context_parallel",
    "warmup",
    "distributed",
)


def config_from_dict(
    raw: Any, base_dir: Path | None = None, source: str | None = None
) -> ServeConfig:
    """Validates an already-parsed YAML document."""
    top = _mapping(raw, "", TOP_KEYS)
    if "models" not in top:
        raise ConfigError("models: required (a list of at least one model)")
    models = _models(top["models"], base_dir)
    server = _server(top.get("server") or {}, base_dir)
    default_request = _default_request(top.get("default_request") or {})
    mesh = _mesh(top.get("mesh") or {})
    warmup = _warmup(top.get("warmup") or [], {spec.name for spec in models})
    context_parallel = top.get("context_parallel", "ulysses")
    if context_parallel not in CONTEXT_PARALLEL_MODES:
        raise ConfigError(
            f"context_parallel: expected one of {', '.join(CONTEXT_PARALLEL_MODES)}, got "
            f"{_show(context_parallel)}"
        )
    distributed = _distributed(top.get("distributed") or {}, os.environ)
    return ServeConfig(
        models, server, default_request, mesh, source, warmup, context_parallel, distributed
    )


def _models(raw: Any, base_dir: Path | None) -> tuple[ModelSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"models: expected a non-empty list, got {_show(raw)}")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"models[{i}]"
        entry = _mapping(item, where, ("name", "family", "path", "dtype", "load"))
        for key in ("name", "family", "path"):
            if key not in entry:
                raise ConfigError(f"{where}.{key}: required")
        name = _typed(entry["name"], f"{where}.name", str)
        if not name.strip():
            raise ConfigError(f"{where}.name: must not be empty")
        if name in seen:
            raise ConfigError(f"{where}.name: duplicate model name {name!r}")
        seen.add(name)
        family = _choice(entry["family"], f"{where}.family", FAMILY_NAMES)
        dtype = _choice(entry.get("dtype", "auto"), f"{where}.dtype", DTYPES)
        load = _choice(entry.get("load", "startup"), f"{where}.load", LOAD_POLICIES)
        path = _typed(entry["path"], f"{where}.path", str)
        if not path.startswith(DEMO_PREFIX):
            path = _resolve(path, base_dir)
        elif path == DEMO_PREFIX:
            raise ConfigError(f"{where}.path: 'demo:' needs a demo model name, e.g. demo:sd1-tiny")
        specs.append(ModelSpec(name=name, family=family, path=path, dtype=dtype, load=load))
    return tuple(specs)


def _server(raw: Any, base_dir: Path | None) -> ServerConfig:
    names = tuple(f.name for f in dataclasses.fields(ServerConfig))
    entry = _mapping(raw, "server", names)
    values: dict[str, Any] = {}
    for key, value in entry.items():
        where = f"server.{key}"
        if key in ("output_dir", "state_dir", "lora_dir", "input_dir", "compilation_cache_dir"):
            values[key] = None if value is None else _resolve(_typed(value, where, str), base_dir)
        elif key == "api_key":
            values[key] = None if value is None else _typed(value, where, str)
        elif key == "cors_origins":
            if not isinstance(value, list):
                raise ConfigError(f"{where}: expected a list of origins, got {_show(value)}")
            values[key] = tuple(
                _typed(origin, f"{where}[{i}]", str).rstrip("/") for i, origin in enumerate(value)
            )
        elif key in ("job_retention_s", "expired_retention_s"):
            values[key] = _number(value, where, minimum=0)
        elif key == "device_memory_gib":
            values[key] = None if value is None else _number(value, where, minimum=0)
        else:
            values[key] = _integer(value, where, minimum=1)
    if values.get("output_dir", "") is None:
        raise ConfigError("server.output_dir: expected a string, got null")
    server = ServerConfig(**values)
    for low, high in (("min_width", "max_width"), ("min_height", "max_height")):
        if getattr(server, low) > getattr(server, high):
            raise ConfigError(f"server.{low}: must not exceed server.{high}")
    return server


# Types a GenerationRequest field accepts in YAML, from its annotation ("int", "float | None").
_ANNOTATION_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "None": (type(None),),
    "bool": (bool,),
}


# Per-request inputs, not defaults: images, LoRA files (resolved per request inside
# server.lora_dir), tiling and sigma lists have no sensible YAML form as an operator default.
NON_DEFAULT_FIELDS = (
    "init_image",
    "mask_image",
    "end_image",
    "loras",
    "vae_tiling",
    "custom_sigmas",
    "hires",
    "high_noise",
    "continuation",
)


def _default_request(raw: Any, where_prefix: str = "default_request") -> Mapping[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(GenerationRequest)}
    entry = _mapping(raw, where_prefix, tuple(fields))
    out: dict[str, Any] = {}
    for key, value in entry.items():
        where = f"{where_prefix}.{key}"
        if key in NON_DEFAULT_FIELDS:
            raise ConfigError(
                f"{where}: not allowed here; {where_prefix} holds scalar request fields "
                f"(not {', '.join(NON_DEFAULT_FIELDS)}), which requests send themselves"
            )
        names = [part.strip() for part in str(fields[key].type).split("|")]
        allowed = tuple(t for name in names for t in _ANNOTATION_TYPES.get(name, (object,)))
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            raise ConfigError(f"{where}: expected {' | '.join(names)}, got {_show(value)}")
        out[key] = float(value) if "float" in names and isinstance(value, int) else value
    try:
        check_ranges(out)
    except InvalidRequest as exc:
        raise ConfigError(f"{where_prefix}.{exc.field}: {exc}") from exc
    return types.MappingProxyType(out)


def _warmup(raw: Any, model_names: set[str]) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"warmup: expected a list of requests, got {_show(raw)}")
    entries = tuple(_default_request(item, f"warmup[{i}]") for i, item in enumerate(raw))
    for i, entry in enumerate(entries):
        if entry.get("model") is not None and entry["model"] not in model_names:
            raise ConfigError(f"warmup[{i}].model: no served model named {entry['model']!r}")
    return entries


def _distributed(raw: Any, environ: Mapping[str, str]) -> DistributedConfig:
    """The `distributed:` section with the environment's overrides applied."""
    names = tuple(f.name for f in dataclasses.fields(DistributedConfig))
    entry = _mapping(raw, "distributed", names)
    for variable, key in DISTRIBUTED_ENV.items():
        text = environ.get(variable, "").strip()
        if not text:
            continue
        if key == "enabled":
            entry[key] = text.lower() not in ("0", "false", "no", "off")
        elif key == "coordinator":
            entry[key] = text
        else:
            try:
                entry[key] = int(text)
            except ValueError:
                raise ConfigError(f"{variable}: expected an integer, got {text!r}") from None
    values: dict[str, Any] = {}
    for key, value in entry.items():
        where = f"distributed.{key}"
        if key == "enabled":
            values[key] = _typed(value, where, bool)
        elif key == "coordinator":
            values[key] = None if value is None else _typed(value, where, str)
            if value is not None and ":" not in value:
                raise ConfigError(f"{where}: expected host:port, got {_show(value)}")
        elif key in ("num_processes", "initialization_timeout_s"):
            values[key] = None if value is None else _integer(value, where, minimum=1)
        elif key == "process_id":
            values[key] = None if value is None else _integer(value, where, minimum=0)
        else:
            values[key] = _number(value, where, minimum=1)
    config = DistributedConfig(**values)
    count, index = config.num_processes, config.process_id
    if count is not None and index is not None and index >= count:
        raise ConfigError(f"distributed.process_id: must be < num_processes ({count}), got {index}")
    return config


def _mesh(raw: Any) -> Mapping[str, int]:
    entry = _mapping(raw, "mesh", MESH_AXES)
    return types.MappingProxyType(
        {axis: _integer(size, f"mesh.{axis}", minimum=1) for axis, size in entry.items()}
    )


def _mapping(raw: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or '<top level>'}: expected a mapping, got {_show(raw)}")
    for key in raw:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown key (expected one of {', '.join(allowed)})")
    return dict(raw)


def _typed(value: Any, where: str, kind: type) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {_show(value)}")
    return value


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices or not isinstance(value, str):
        raise ConfigError(f"{where}: expected one of {'|'.join(choices)}, got {_show(value)}")
    return value


def _integer(value: Any, where: str, minimum: int) -> int:
    value = _typed(value, where, int)
    if value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
    return value


def _number(value: Any, where: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {_show(value)}")
    if value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
    return value


def _resolve(path: str, base_dir: Path | None) -> str:
    expanded = Path(os.path.expanduser(path))
    if not expanded.is_absolute() and base_dir is not None:
        expanded = base_dir / expanded
    return str(expanded)


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)
