"""Serve config loading and validation: every error names the offending path."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxvideo.config import ConfigError, ModelSpec, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]

MODEL = "models: [{name: m, family: sd1, path: 'demo:sd1-tiny'}]\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return str(info.value)


def test_default_config_serves_the_demo_models(monkeypatch):
    monkeypatch.delenv("JAXVIDEO_CONFIG", raising=False)
    config = load_config()
    assert config.models == (
        ModelSpec("sd1-shapes-demo", "sd1", "demo:sd1-shapes", "auto"),
        ModelSpec("wan-shapes-demo", "wan21", "demo:wan-shapes", "auto"),
        ModelSpec("wan22-tiny-demo", "wan22", "demo:wan22-tiny", "auto"),
        ModelSpec("flux-tiny-demo", "flux", "demo:flux-tiny", "auto"),
        ModelSpec("sd3-tiny-demo", "sd3", "demo:sd3-tiny", "auto"),
    )
    assert dict(config.default_request) == {}
    assert config.server.max_queue_size == 64
    assert dict(config.mesh) == {}


def test_the_packaged_default_yaml_is_the_only_one_and_the_example_parses():
    assert not (REPO / "configs" / "default.yaml").exists()
    assert "jaxvideo/configs/default.yaml" in (REPO / "README.md").read_text()
    example = load_config(REPO / "configs" / "real-models.example.yaml")
    assert [m.family for m in example.models] == ["sdxl", "sdxl_refiner", "sd1", "wan21"]
    assert example.warmup[0]["model"] == "sdxl"


def test_jaxvideo_config_env_is_honoured_and_an_explicit_path_wins(tmp_path, monkeypatch):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("models: [{name: from-env, family: sd1, path: 'demo:sd1-tiny'}]\n")
    arg_file = tmp_path / "arg.yaml"
    arg_file.write_text("models: [{name: from-arg, family: sd1, path: 'demo:sd1-tiny'}]\n")
    monkeypatch.setenv("JAXVIDEO_CONFIG", str(env_file))
    assert load_config().models[0].name == "from-env"
    assert load_config(arg_file).models[0].name == "from-arg"


def test_unknown_keys_are_named_with_their_path():
    assert error_of(MODEL + "server: {max_queue_sizee: 3}").startswith(
        "server.max_queue_sizee: unknown key"
    )
    assert error_of("models: [{name: m, family: sd1, path: x, dtpye: fp32}]").startswith(
        "models[0].dtpye: unknown key"
    )
    assert error_of(MODEL + "default_request: {stepz: 3}").startswith(
        "default_request.stepz: unknown key"
    )
    assert error_of(MODEL + "extra: 1").startswith("extra: unknown key")


def test_wrong_types_and_values_are_named_with_their_path():
    assert (
        error_of("models: [{name: m, family: sd1, path: x, dtype: x}]")
        == "models[0].dtype: expected one of auto|fp32|fp16|bf16, got 'x'"
    )
    assert error_of("models: [{name: m, family: sd9, path: x}]").startswith(
        "models[0].family: expected one of sd1|"
    )
    assert error_of(MODEL + "server: {max_queue_size: ten}") == (
        "server.max_queue_size: expected int, got 'ten'"
    )
    assert error_of(MODEL + "server: {max_steps: true}").startswith(
        "server.max_steps: expected int"
    )
    assert error_of(MODEL + "server: {max_width: 0}").startswith("server.max_width: must be >= 1")
    assert error_of(MODEL + "default_request: {steps: '8'}") == (
        "default_request.steps: expected int, got '8'"
    )
    assert error_of(MODEL + "default_request: {guidance_scale: high}").startswith(
        "default_request.guidance_scale: expected float"
    )
    assert error_of(MODEL + "mesh: {tensor: 0}").startswith("mesh.tensor: must be >= 1")
    assert error_of(MODEL + "mesh: {model: 2}").startswith("mesh.model: unknown key")
    assert error_of(MODEL + "context_parallel: ring").startswith("context_parallel: expected")
    assert parse_config(MODEL + "context_parallel: gspmd").context_parallel == "gspmd"


def test_models_must_be_a_non_empty_list_with_unique_names():
    assert error_of("server: {}").startswith("models: required")
    assert error_of("models: []").startswith("models: expected a non-empty list")
    assert error_of(
        "models: [{name: a, family: sd1, path: x}, {name: a, family: sd1, path: y}]"
    ).startswith("models[1].name: duplicate model name 'a'")
    assert error_of("models: [{name: a, family: sd1}]") == "models[0].path: required"


def test_default_request_keeps_only_the_keys_the_operator_wrote():
    config = parse_config(MODEL + "default_request: {guidance_scale: 5, sampler: euler}")
    assert dict(config.default_request) == {"guidance_scale": 5.0, "sampler": "euler"}
    assert isinstance(config.default_request["guidance_scale"], float)
    assert dict(parse_config(MODEL).default_request) == {}


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    file = tmp_path / "serve.yaml"
    file.write_text(
        "models:\n"
        "  - {name: real, family: sd1, path: weights/sd15}\n"
        "  - {name: demo, family: sd1, path: 'demo:sd1-tiny'}\n"
        "server: {output_dir: out, lora_dir: /abs/loras, state_dir: state}\n"
    )
    config = load_config(file)
    assert config.models[0].path == str(tmp_path / "weights" / "sd15")
    assert config.models[1].path == "demo:sd1-tiny" and config.models[1].is_demo
    assert config.server.output_dir == str(tmp_path / "out")
    assert config.server.lora_dir == "/abs/loras"
    assert config.server.state_dir == str(tmp_path / "state")


def test_output_and_state_dirs_default_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXVIDEO_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("JAXVIDEO_STATE_DIR", str(tmp_path / "state"))
    server = parse_config(MODEL).server
    assert (server.output_dir, server.state_dir) == (str(tmp_path / "out"), str(tmp_path / "state"))
    # null: the operator chose jobs in memory only.
    assert parse_config(MODEL + "server: {state_dir: null}\n").server.state_dir is None


def test_api_key_is_kept_out_of_the_repr():
    config = parse_config(MODEL + "server: {api_key: s3cret}")
    assert config.server.api_key == "s3cret"
    assert "s3cret" not in repr(config)


def test_unreadable_or_invalid_files_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_config("models: [")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("init_image", "aGk="),
        ("mask_image", "null"),
        ("loras", "[{path: style.safetensors}]"),
        ("vae_tiling", "{enabled: true}"),
        ("custom_sigmas", "[14.6, 1.0, 0.0]"),
    ],
)
def test_per_request_inputs_are_not_operator_defaults(key, value):
    message = error_of(MODEL + f"default_request: {{{key}: {value}}}")
    assert message.startswith(f"default_request.{key}: not allowed here")
    assert "scalar request fields" in message


def test_cors_origins_are_a_list_of_origins():
    config = parse_config(MODEL + "server: {cors_origins: ['https://a.example/', '*']}")
    assert config.server.cors_origins == ("https://a.example", "*")
    assert parse_config(MODEL).server.cors_origins == ()  # same-origin by default
    assert error_of(MODEL + "server: {cors_origins: 'https://a.example'}").startswith(
        "server.cors_origins: expected a list of origins"
    )
    assert error_of(MODEL + "server: {cors_origins: [3]}").startswith(
        "server.cors_origins[0]: expected str"
    )
