"""Original Wan release checkpoints through tools/convert_weights.py.

Tiny random files are written under the Wan code's names and layouts (`WanModel`, `WanVAE_`,
its `T5Encoder`; shapes as its constructors build them): a release folder (sharded transformer +
the Wan code's config.json, Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl),
Wan 2.2 A14B's two expert folders, ComfyUI single files. The converted transformer must run like
diffusers' `WanTransformer3DModel` filled by diffusers' own single-file converter; the VAE and
text encoder must convert to the same Flax weights as the diffusers / transformers models that
diffusers' VAE converter and our key table fill (their parity is tested in tests/models).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
from diffusers import WanTransformer3DModel as TorchWan
from diffusers.loaders.single_file_utils import (
    convert_wan_transformer_to_diffusers,
    convert_wan_vae_to_diffusers,
)
from flax import nnx
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    UMT5Config,
    UMT5EncoderModel,
)

from jaxvideo.convert.core import ConversionError
from jaxvideo.convert.diffusers_folder import convert_component
from jaxvideo.convert.wan_release.checkpoint import WanOriginalCheckpoint
from jaxvideo.convert.wan_release.t5 import wan_t5_original_config, wan_t5_original_plan
from jaxvideo.convert.wan_release.transformer import LDM_PREFIX
from jaxvideo.convert.wan_release.vae import wan_vae_original_config, wan_vae_original_plan
from jaxvideo.tokenizers import write_tiny_t5_tokenizer
from jaxvideo.weights import WEIGHTS_FILE, load_component

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-4
TEXT_DIM = 32  # the T5 width the transformer's text embedding reads
IMAGE_DIM = 24  # the CLIP vision width of the I2V branch
_spec = importlib.util.spec_from_file_location("convert_weights", REPO / "tools/convert_weights.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

# --- tiny files under the Wan code's names ----------------------------------------------------


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Every tensor random (no zero-init hides a mis-mapping); weights scaled by fan-in so
    activations stay O(1) and the absolute tolerance means something."""
    gen = torch.Generator().manual_seed(seed)
    scale = {k: 0.3 if len(s) < 2 else math.prod(s[1:]) ** -0.5 for k, s in shapes.items()}
    return {k: torch.randn(s, generator=gen) * scale[k] for k, s in shapes.items()}


# The Wan code's config.json for a tiny T2V `WanModel` (Wan2.1-T2V-1.3B's keys). Heads are
# 128 wide, as in every release, so files without a config.json infer the same model.
T2V_CONFIG: dict[str, Any] = {
    "_class_name": "WanModel",
    "dim": 256,
    "eps": 1e-06,
    "ffn_dim": 48,
    "freq_dim": 32,
    "in_dim": 16,
    "model_type": "t2v",
    "num_heads": 2,
    "num_layers": 2,
    "out_dim": 16,
    "text_dim": TEXT_DIM,  # releases leave it out: the Wan code's default, 4096
    "text_len": 512,
}


def _transformer_tensors(config: dict[str, Any], seed: int, image: bool = False) -> dict:
    """A `WanModel` state dict as the Wan code names and shapes it (I2V: its CLIP branch)."""
    dim, ffn, out = config["dim"], config["ffn_dim"], config["out_dim"] * 4
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, config["in_dim"], 1, 2, 2),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, TEXT_DIM),
        "text_embedding.2.weight": (dim, dim),
        "time_embedding.0.weight": (dim, config["freq_dim"]),
        "time_embedding.2.weight": (dim, dim),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (out, dim),
        "head.head.bias": (out,),
        "head.modulation": (1, 2, dim),
    }
    for name in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2"):
        shapes[f"{name}.bias"] = (dim,)
    if image:
        shapes |= {
            "img_emb.proj.0.weight": (IMAGE_DIM,),
            "img_emb.proj.0.bias": (IMAGE_DIM,),
            "img_emb.proj.1.weight": (IMAGE_DIM, IMAGE_DIM),
            "img_emb.proj.1.bias": (IMAGE_DIM,),
            "img_emb.proj.3.weight": (dim, IMAGE_DIM),
            "img_emb.proj.3.bias": (dim,),
            "img_emb.proj.4.weight": (dim,),
            "img_emb.proj.4.bias": (dim,),
        }
    projections = ("q", "k", "v", "o") + (("k_img", "v_img") if image else ())
    for n in range(config["num_layers"]):
        b = f"blocks.{n}."
        shapes[b + "modulation"] = (1, 6, dim)
        for attn, projs in (("self_attn", "qkvo"), ("cross_attn", projections)):
            for proj in projs:
                shapes[f"{b}{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{b}{attn}.{proj}.bias"] = (dim,)
            norms = ("norm_q", "norm_k") + (
                ("norm_k_img",) if attn == "cross_attn" and image else ()
            )
            for norm in norms:
                shapes[f"{b}{attn}.{norm}.weight"] = (dim,)
        shapes[b + "norm3.weight"] = shapes[b + "norm3.bias"] = (dim,)
        shapes[b + "ffn.0.weight"], shapes[b + "ffn.0.bias"] = (ffn, dim), (ffn,)
        shapes[b + "ffn.2.weight"], shapes[b + "ffn.2.bias"] = (dim, ffn), (dim,)
    return _random(shapes, seed)


def _diffusers_kwargs(config: dict[str, Any], image: bool = False) -> dict[str, Any]:
    """The same tiny model as diffusers' constructor arguments, written out by hand."""
    kwargs = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=config["num_heads"],
        attention_head_dim=config["dim"] // config["num_heads"],
        in_channels=config["in_dim"],
        out_channels=config["out_dim"],
        text_dim=TEXT_DIM,
        freq_dim=config["freq_dim"],
        ffn_dim=config["ffn_dim"],
        num_layers=config["num_layers"],
        rope_max_seq_len=1024,
    )
    if image:
        kwargs |= dict(image_dim=IMAGE_DIM, added_kv_proj_dim=config["dim"])
    return kwargs


def _vae_tensors(dim: int, z: int, dim_mult, num_res: int, temporal, seed: int) -> dict:
    """A `WanVAE_` state dict built the way the Wan code's Encoder3d / Decoder3d build theirs."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, o: int, i: int, k=(3, 3, 3)) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (o, i, *k), (o,)

    def resnet(name: str, i: int, o: int) -> None:
        shapes[f"{name}.residual.0.gamma"] = (i, 1, 1, 1)
        conv(f"{name}.residual.2", o, i)
        shapes[f"{name}.residual.3.gamma"] = (o, 1, 1, 1)
        conv(f"{name}.residual.6", o, o)
        if i != o:
            conv(f"{name}.shortcut", o, i, (1, 1, 1))

    def middle(name: str, d: int) -> None:
        resnet(f"{name}.middle.0", d, d)
        shapes[f"{name}.middle.1.norm.gamma"] = (d, 1, 1)
        conv(f"{name}.middle.1.to_qkv", 3 * d, d, (1, 1))
        conv(f"{name}.middle.1.proj", d, d, (1, 1))
        resnet(f"{name}.middle.2", d, d)

    levels = len(dim_mult)
    dims = [dim * u for u in [1, *dim_mult]]
    conv("encoder.conv1", dims[0], 3)
    index = 0
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        for _ in range(num_res):
            resnet(f"encoder.downsamples.{index}", d_in, d_out)
            d_in, index = d_out, index + 1
        if i != levels - 1:
            conv(f"encoder.downsamples.{index}.resample.1", d_out, d_out, (3, 3))
            if temporal[i]:
                conv(f"encoder.downsamples.{index}.time_conv", d_out, d_out, (3, 1, 1))
            index += 1
    middle("encoder", dims[-1])
    shapes["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("encoder.head.2", 2 * z, dims[-1])
    conv("conv1", 2 * z, 2 * z, (1, 1, 1))
    conv("conv2", z, z, (1, 1, 1))

    dims = [dim * u for u in [dim_mult[-1], *dim_mult[::-1]]]
    conv("decoder.conv1", dims[0], z)
    middle("decoder", dims[0])
    index = 0
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        d_in = d_in // 2 if i > 0 else d_in  # each upsample halves the channels
        for _ in range(num_res + 1):
            resnet(f"decoder.upsamples.{index}", d_in, d_out)
            d_in, index = d_out, index + 1
        if i != levels - 1:
            conv(f"decoder.upsamples.{index}.resample.1", d_out // 2, d_out, (3, 3))
            if temporal[::-1][i]:
                conv(f"decoder.upsamples.{index}.time_conv", 2 * d_out, d_out, (3, 1, 1))
            index += 1
    shapes["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("decoder.head.2", 3, dims[-1])
    return _random(shapes, seed)


# Wan 2.1's VAE layout (dim_mult, resnets per level, temporal downsamples) at a tiny width.
WAN21_VAE = dict(dim_mult=[1, 2, 4, 4], num_res=2, temporal=[False, True, True])
T5 = dict(vocab=300, dim=TEXT_DIM, heads=4, d_kv=8, ffn=48, layers=2, buckets=8)


def _t5_tensors(seed: int) -> dict[str, torch.Tensor]:
    """The Wan code's `T5Encoder` state dict (umt5: a position embedding in every block)."""
    d, inner, f = T5["dim"], T5["heads"] * T5["d_kv"], T5["ffn"]
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": (T5["vocab"], d),
        "norm.weight": (d,),
    }
    for n in range(T5["layers"]):
        b = f"blocks.{n}."
        shapes |= {
            b + "norm1.weight": (d,),
            b + "attn.q.weight": (inner, d),
            b + "attn.k.weight": (inner, d),
            b + "attn.v.weight": (inner, d),
            b + "attn.o.weight": (d, inner),
            b + "norm2.weight": (d,),
            b + "ffn.gate.0.weight": (f, d),
            b + "ffn.fc1.weight": (f, d),
            b + "ffn.fc2.weight": (d, f),
            b + "pos_embedding.embedding.weight": (T5["buckets"], T5["heads"]),
        }
    return _random(shapes, seed)


def _write_release(root: Path, config: dict[str, Any], tensors: dict, *, shards: int = 2) -> Path:
    """A release folder: config.json, sharded diffusion_pytorch_model + index."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    keys = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s::shards]
        save_file({k: tensors[k].contiguous() for k in part}, str(root / name))
        weight_map |= dict.fromkeys(part, name)
    index = {"metadata": {}, "weight_map": weight_map}
    (root / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return root


def _write_extras(root: Path, seed: int) -> None:
    """The release's VAE, T5 and tokenizer files next to the transformer."""
    vae = _vae_tensors(
        8, 16, WAN21_VAE["dim_mult"], WAN21_VAE["num_res"], WAN21_VAE["temporal"], seed
    )
    torch.save(vae, root / "Wan2.1_VAE.pth")
    torch.save(_t5_tensors(seed), root / "models_t5_umt5-xxl-enc-bf16.pth")
    write_tiny_t5_tokenizer(root / "google" / "umt5-xxl")


def _convert(*args: Any) -> int:
    return cli.main([str(a) for a in args] + ["--quiet"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("wan_original")
    t2v = _transformer_tensors(T2V_CONFIG, seed=0)
    release = _write_release(root / "Wan2.1-T2V-tiny", T2V_CONFIG, t2v)
    _write_extras(release, seed=1)
    assert _convert(release, root / "t2v") == 0
    return SimpleNamespace(root=root, t2v=t2v, release=release, dst=root / "t2v")


# --- the transformer --------------------------------------------------------------------------


def _torch_reference(tensors: dict, kwargs: dict[str, Any]) -> TorchWan:
    model = TorchWan(**kwargs)
    model.load_state_dict(convert_wan_transformer_to_diffusers(dict(tensors)), strict=True)
    return model.eval()


def _max_error(model_dir: Path, name: str, ref: TorchWan, image: bool = False) -> float:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 12, ref.config.in_channels)).astype(np.float32)
    t = np.array([999.0, 250.5], np.float32)
    # diffusers reads the context's last 512 tokens as text when the model has an image branch.
    context = rng.standard_normal((2, 512 if image else 7, TEXT_DIM)).astype(np.float32)
    clip = rng.standard_normal((2, 5, IMAGE_DIM)).astype(np.float32) if image else None
    with torch.no_grad():
        want = ref(
            torch.from_numpy(x).permute(0, 4, 1, 2, 3),
            torch.from_numpy(t),
            torch.from_numpy(context),
            encoder_hidden_states_image=None if clip is None else torch.from_numpy(clip),
        ).sample.permute(0, 2, 3, 4, 1)
    graphdef, state = nnx.split(load_component(model_dir, name))
    forward = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
    got = forward(state, jnp.asarray(x), jnp.asarray(t), jnp.asarray(context), clip)
    assert np.abs(want.numpy()).max() > 1.0  # a real signal, not zeros
    return float(np.abs(np.asarray(got) - want.numpy()).max())


def test_release_folder_transformer_runs_like_diffusers(env: SimpleNamespace) -> None:
    ref = _torch_reference(env.t2v, _diffusers_kwargs(T2V_CONFIG))
    err = _max_error(env.dst, "transformer", ref)
    print(f"t2v transformer from a sharded release folder: max abs err {err:.2e}")
    assert err < ATOL


def test_release_folder_is_a_servable_model(env: SimpleNamespace) -> None:
    index = json.loads((env.dst / "model_index.json").read_text())
    assert index["family"] == "wan21" and index["source_file"] == "Wan2.1-T2V-tiny"
    assert set(index["components"]) == {
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
    }
    assert "boundary_ratio" not in index and "expand_timesteps" not in index
    scheduler = json.loads((env.dst / "scheduler" / "scheduler_config.json").read_text())
    UniPCMultistepScheduler.from_config(scheduler)  # a config diffusers reads as Wan's
    assert (scheduler["prediction_type"], scheduler["flow_shift"]) == ("flow_prediction", 3.0)
    assert (env.dst / "tokenizer" / "tokenizer.json").is_file()
    for name in ("vae", "text_encoder"):
        load_component(env.dst, name)  # every tensor present with its shape


def test_converted_release_generates_a_video(env: SimpleNamespace) -> None:
    from jaxvideo.pipelines.wan import WanPipeline
    from jaxvideo.request import build_request

    fields = {"prompt": "a fox", "mode": "vid_gen", "width": 32, "height": 32, "num_frames": 1}
    result = WanPipeline(env.dst).generate(build_request({**fields, "steps": 2, "seed": 3}))
    video = np.stack(result.videos)
    assert video.shape == (1, 1, 32, 32, 3) and video.std() > 0


def test_configless_comfyui_file_and_converted_base(env: SimpleNamespace, tmp_path: Path) -> None:
    """A ComfyUI repack (prefixed, no config.json) with the rest lent by a converted folder."""
    tensors = {LDM_PREFIX + k: v.contiguous() for k, v in env.t2v.items()}
    save_file(tensors, str(tmp_path / "wan_finetune.safetensors"))
    assert _convert(tmp_path / "wan_finetune.safetensors", tmp_path / "out", "--base", env.dst) == 0
    _assert_same_weights(tmp_path / "out" / "transformer", env.dst / "transformer")
    ours = json.loads((tmp_path / "out" / "transformer" / "config.json").read_text())
    assert ours == json.loads((env.dst / "transformer" / "config.json").read_text())
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert sorted(p.name for p in (tmp_path / "out" / name).iterdir()) == sorted(
            p.name for p in (env.dst / name).iterdir()
        )
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["family"] == "wan21"
    assert index["components"]["vae"] == "AutoencoderKLWan"

    # --transformer-only: the transformer alone, no model_index.json.
    assert (
        _convert(tmp_path / "wan_finetune.safetensors", tmp_path / "t", "--transformer-only") == 0
    )
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["transformer"]
    _assert_same_weights(tmp_path / "t" / "transformer", env.dst / "transformer")


def _assert_same_weights(ours: Path, theirs: Path) -> None:
    a, b = load_numpy(str(ours / WEIGHTS_FILE)), load_numpy(str(theirs / WEIGHTS_FILE))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_wan22_expert_folders(env: SimpleNamespace, tmp_path: Path) -> None:
    release = tmp_path / "Wan2.2-T2V-A14B-tiny"
    high = _transformer_tensors(T2V_CONFIG, seed=3)
    _write_release(release / "high_noise_model", T2V_CONFIG, high)
    _write_release(release / "low_noise_model", T2V_CONFIG, env.t2v, shards=1)
    _write_extras(release, seed=1)
    assert _convert(release, tmp_path / "out") == 0
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert (index["family"], index["boundary_ratio"]) == ("wan22", 0.875)
    # diffusers' order: `transformer` is the high-noise expert, `transformer_2` the low-noise one.
    _assert_same_weights(tmp_path / "out" / "transformer_2", env.dst / "transformer")
    ref = _torch_reference(high, _diffusers_kwargs(T2V_CONFIG))
    assert _max_error(tmp_path / "out", "transformer", ref) < ATOL

    # The experts as two files (ComfyUI's high_noise / low_noise), the rest from a base folder.
    high_file, low_file = tmp_path / "high.safetensors", tmp_path / "low.safetensors"
    for path, tensors in ((high_file, high), (low_file, env.t2v)):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    args = ["--transformer-2", low_file, "--base", tmp_path / "out", "--config-override"]
    assert _convert(high_file, tmp_path / "files", *args, "scheduler.flow_shift=12.0") == 0
    index = json.loads((tmp_path / "files" / "model_index.json").read_text())
    assert (index["family"], index["boundary_ratio"]) == ("wan22", 0.875)
    for name in ("transformer", "transformer_2"):
        _assert_same_weights(tmp_path / "files" / name, tmp_path / "out" / name)
    scheduler = json.loads((tmp_path / "files" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["flow_shift"] == 12.0


def test_i2v_file_with_diffusers_base(tmp_path: Path) -> None:
    """Wan 2.1 I2V: the CLIP image encoder (and here everything else) from a diffusers folder."""
    config = dict(T2V_CONFIG, model_type="i2v", in_dim=36)
    tensors = _transformer_tensors(config, seed=4, image=True)
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "file" / "i2v.safetensors")
    )
    src = tmp_path / "file" / "i2v.safetensors"

    code = _convert(src, tmp_path / "none")
    assert code == 1 and not (tmp_path / "none").exists()  # nothing written
    with pytest.raises(ConversionError) as info:
        WanOriginalCheckpoint(src)
    for needed in (
        "vae (--vae Wan2.1_VAE.pth",
        "text_encoder (--text-encoder",
        "tokenizer (--tokenizer",
        "image_encoder (",
        "--transformer-only",
    ):
        assert needed in str(info.value)

    base = _diffusers_base(tmp_path / "base")
    assert _convert(src, tmp_path / "out", "--base", base) == 0
    out = tmp_path / "out"
    index = json.loads((out / "model_index.json").read_text())
    assert index["source_class"] == "WanImageToVideoPipeline"
    assert set(index["components"]) == {
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "image_encoder",
        "image_processor",
    }
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["flow_shift"] == 5.0  # the base's
    for name in ("image_encoder", "vae", "text_encoder"):
        convert_component(base / name, tmp_path / "direct" / name)
        _assert_same_weights(out / name, tmp_path / "direct" / name)
    ref = _torch_reference(tensors, _diffusers_kwargs(config, image=True))
    err = _max_error(out, "transformer", ref, image=True)
    print(f"i2v transformer from a single file: max abs err {err:.2e}")
    assert err < ATOL


def _diffusers_base(root: Path) -> Path:
    """A tiny diffusers Wan I2V folder minus its transformer."""
    torch.manual_seed(0)
    AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).save_pretrained(root / "vae")
    write_tiny_t5_tokenizer(root / "tokenizer")
    UMT5EncoderModel(
        UMT5Config(vocab_size=300, d_model=TEXT_DIM, d_kv=8, d_ff=48, num_layers=1, num_heads=4)
    ).save_pretrained(root / "text_encoder")
    CLIPVisionModel(
        CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=IMAGE_DIM,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
    ).save_pretrained(root / "image_encoder")
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "image_processor")
    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    ).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    return root


# --- the VAE and the text encoder -------------------------------------------------------------


def _vae_case(layout: dict[str, Any]) -> tuple[dict, dict[str, Any], dict]:
    tensors = _vae_tensors(8, 16, layout["dim_mult"], layout["num_res"], layout["temporal"], seed=5)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    config = wan_vae_original_config(tensors, shapes.__getitem__)
    plan = wan_vae_original_plan(tensors, config["num_res_blocks"])
    return tensors, config, {name: tensors[src.key] for name, src in plan.items()}


def test_vae_table_matches_diffusers_converter(tmp_path: Path) -> None:
    tensors, config, ours = _vae_case(WAN21_VAE)
    theirs = convert_wan_vae_to_diffusers(dict(tensors))
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k] is theirs[k] for k in ours)
    assert {k: config[k] for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks")} == {
        "base_dim": 8,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
    }
    assert config["temperal_downsample"] == [False, True, True]
    # The renamed tensors fill exactly the diffusers model the inferred config describes.
    model = AutoencoderKLWan(**{k: v for k, v in config.items() if not k.startswith("_")})
    model.load_state_dict(ours, strict=True)


def test_vae_of_another_layout_and_the_converted_weights(tmp_path: Path) -> None:
    """A layout diffusers' converter hard-codes away from (one resnet per level, other widths):
    the table follows it, and the CLI's VAE equals the diffusers model's converted weights."""
    layout = dict(dim_mult=[1, 2, 2, 2], num_res=1, temporal=[False, True, True])
    tensors, config, ours = _vae_case(layout)
    assert (config["dim_mult"], config["num_res_blocks"]) == ([1, 2, 2, 2], 1)
    model = AutoencoderKLWan(**{k: v for k, v in config.items() if not k.startswith("_")})
    model.load_state_dict(ours, strict=True)
    model.save_pretrained(tmp_path / "diffusers" / "vae")
    convert_component(tmp_path / "diffusers" / "vae", tmp_path / "direct" / "vae")

    release = _write_release(tmp_path / "release", T2V_CONFIG, _transformer_tensors(T2V_CONFIG, 0))
    torch.save(tensors, tmp_path / "vae.pth")
    torch.save(_t5_tensors(1), tmp_path / "t5.pth")
    write_tiny_t5_tokenizer(tmp_path / "tok")
    args = [
        "--vae",
        tmp_path / "vae.pth",
        "--text-encoder",
        tmp_path / "t5.pth",
        "--tokenizer",
        tmp_path / "tok",
    ]
    assert _convert(release, tmp_path / "out", *args) == 0
    _assert_same_weights(tmp_path / "out" / "vae", tmp_path / "direct" / "vae")


def _wan_t5_forward(t: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """The Wan code's T5Encoder written out: RMS norms, unscaled attention plus each block's
    bidirectional relative position bias, `fc2(fc1(x) * gelu_tanh(gate(x)))`, final norm."""

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    length, heads = ids.shape[1], T5["heads"]
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    half = T5["buckets"] // 2
    exact = half // 2
    far = exact + (torch.log(rel.abs().float() / exact) / np.log(128 / exact) * (half - exact))
    far = torch.clamp(far.long(), max=half - 1)
    buckets = (rel > 0).long() * half + torch.where(rel.abs() < exact, rel.abs(), far)
    x = t["token_embedding.weight"][ids]
    for n in range(T5["layers"]):
        b = f"blocks.{n}."
        h = rms(x, t[b + "norm1.weight"])
        q, k, v = ((h @ t[f"{b}attn.{p}.weight"].T).unflatten(-1, (heads, -1)) for p in "qkv")
        bias = t[b + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)
        weights = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, dim=-1)
        attended = torch.einsum("bnij,bjnc->binc", weights, v).flatten(2)
        x = x + attended @ t[b + "attn.o.weight"].T
        h = rms(x, t[b + "norm2.weight"])
        gate = torch.nn.functional.gelu(h @ t[b + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ t[b + "ffn.fc1.weight"].T) * gate) @ t[b + "ffn.fc2.weight"].T
    return rms(x, t["norm.weight"])


def test_text_encoder_computes_what_the_wan_code_does(env: SimpleNamespace) -> None:
    tensors = _t5_tensors(seed=1)  # what _write_extras saved for the release folder
    ids = np.random.default_rng(0).integers(0, T5["vocab"], size=(2, 40))  # beyond exact buckets
    with torch.no_grad():
        want = _wan_t5_forward(tensors, torch.from_numpy(ids)).numpy()
    encoder = load_component(env.dst, "text_encoder")
    got = np.asarray(encoder(jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32)))
    err = float(np.abs(got - want).max())
    print(f"text encoder vs the Wan code's T5 forward: max abs err {err:.2e}")
    assert err < ATOL


def test_t5_table_fills_transformers_umt5(env: SimpleNamespace, tmp_path: Path) -> None:
    tensors = _t5_tensors(seed=1)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    config = wan_t5_original_config(tensors, shapes.__getitem__)
    plan = wan_t5_original_plan(tensors)
    model = UMT5EncoderModel(UMT5Config(**config))
    state = {name: tensors[src.key] for name, src in plan.items()}
    state["encoder.embed_tokens.weight"] = state["shared.weight"]  # tied in transformers
    model.load_state_dict(state, strict=True)
    model.save_pretrained(tmp_path / "text_encoder")
    convert_component(tmp_path / "text_encoder", tmp_path / "direct" / "text_encoder")
    _assert_same_weights(env.dst / "text_encoder", tmp_path / "direct" / "text_encoder")


# --- refusals ---------------------------------------------------------------------------------


def _single(tmp_path: Path, edit) -> Path:
    tensors = _transformer_tensors(T2V_CONFIG, seed=0)
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    return tmp_path / "model.safetensors"


def test_mis_shaped_and_unknown_keys_name_the_file_key(tmp_path: Path) -> None:
    def narrow(tensors: dict) -> None:
        tensors["blocks.1.cross_attn.k.weight"] = tensors["blocks.1.cross_attn.k.weight"][:, :-1]

    src = _single(tmp_path, narrow)
    ckpt = WanOriginalCheckpoint(src, transformer_only=True)
    with pytest.raises(ConversionError, match="shape mismatch") as info:
        ckpt.convert(tmp_path / "out")
    assert "blocks.1.cross_attn.k.weight (as blocks.1.attn2.to_k.weight)" in str(info.value)

    def vace(tensors: dict) -> None:
        tensors["vace_blocks.0.after_proj.weight"] = torch.zeros(2, 2)

    with pytest.raises(ConversionError, match="vace_blocks.0.after_proj.weight"):
        WanOriginalCheckpoint(_single(tmp_path, vace), transformer_only=True)


def test_components_of_other_models_are_refused(env: SimpleNamespace, tmp_path: Path) -> None:
    src = _single(tmp_path, lambda tensors: None)
    release = dict(
        vae=env.release / "Wan2.1_VAE.pth",
        text_encoder=env.release / "models_t5_umt5-xxl-enc-bf16.pth",
        tokenizer=env.release / "google" / "umt5-xxl",
    )
    t5 = {k: v[..., :16] if v.shape[-1] == TEXT_DIM else v for k, v in _t5_tensors(1).items()}
    torch.save(t5, tmp_path / "narrow_t5.pth")
    with pytest.raises(ConversionError, match="expects 32 where the text encoder width"):
        WanOriginalCheckpoint(src, **{**release, "text_encoder": tmp_path / "narrow_t5.pth"})

    wan22_vae = {
        "encoder.downsamples.0.downsamples.0.residual.0.gamma": torch.ones(1),
        "decoder.middle.0.residual.0.gamma": torch.ones(1),
    }
    torch.save(wan22_vae, tmp_path / "Wan2.2_VAE.pth")
    with pytest.raises(ConversionError, match="Wan 2.2 .*48-channel.*--base"):
        WanOriginalCheckpoint(src, **{**release, "vae": tmp_path / "Wan2.2_VAE.pth"})

    sd_base = tmp_path / "sd"
    (sd_base / "vae").mkdir(parents=True)
    (sd_base / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (sd_base / "model_index.json").write_text("{}")
    with pytest.raises(ConversionError, match="its vae is not a AutoencoderKLWan"):
        WanOriginalCheckpoint(src, **{**release, "vae": None}, base=sd_base)


def test_misused_options_are_refused(env: SimpleNamespace, tmp_path: Path) -> None:
    src = _single(tmp_path, lambda tensors: None)
    # A TI2V-style release whose VAE is Wan 2.2's: the missing VAE says why and where from.
    release = _write_release(tmp_path / "release", T2V_CONFIG, env.t2v)
    (release / "Wan2.2_VAE.pth").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"vae \(Wan2.2_VAE.pth \(48 channels\).*--base"):
        WanOriginalCheckpoint(
            release,
            text_encoder=env.release / "models_t5_umt5-xxl-enc-bf16.pth",
            tokenizer=env.release / "google" / "umt5-xxl",
        )
    with pytest.raises(ConversionError, match="--transformer-only converts the transformer alone"):
        WanOriginalCheckpoint(src, transformer_only=True, vae=env.release / "Wan2.1_VAE.pth")
    with pytest.raises(ConversionError, match="unknown component"):
        WanOriginalCheckpoint(src, transformer_only=True, config_overrides={"unet": {"a": 1}})
    # Wan-only flags on a diffusers folder.
    (tmp_path / "diffusers").mkdir()
    (tmp_path / "diffusers" / "model_index.json").write_text("{}")
    assert _convert(tmp_path / "diffusers", tmp_path / "x", "--vae", src) == 1
    assert not (tmp_path / "x").exists()
