"""LoRA files merged into Flax states match diffusers' own LoRA loading and fusing.

A tiny SD1 UNet and CLIP text encoder get random PEFT LoRAs (attention projections, a 1x1-conv
proj_in, 3x3 resnet convs, a feed-forward Linear; q/k/v/out on the text encoder), saved with
diffusers' `save_lora_weights`. diffusers loads and fuses them; our `merge_loras` must give the
same network outputs. The same deltas written as kohya keys (diffusers-style and LDM-style
module names, safetensors and .pt) must merge to bit-identical Flax weights.
"""

from __future__ import annotations

import copy
import os
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import peft  # noqa: E402, F401 - diffusers' load_lora_weights needs it
import pytest
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from flax import nnx  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from jaxvideo.convert.diffusers_folder import convert_component  # noqa: E402
from jaxvideo.lora import (  # noqa: E402
    LoraCache,
    LoraError,
    LoraSpec,
    list_loras,
    merge_loras,
    resolve_lora_path,
)
from jaxvideo.lora.targets import ldm_name, ldm_prefixes  # noqa: E402
from jaxvideo.weights import load_component  # noqa: E402
from tests.support import tiny_sd  # noqa: E402

TOL = 1e-4
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
UNET_RANK, UNET_ALPHA = 4, 8.0
TEXT_RANK, TEXT_ALPHA = 2, 3.0


def _base_models() -> tuple[CLIPTextModel, UNet2DConditionModel]:
    torch.manual_seed(0)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=998,
            eos_token_id=999,
            pad_token_id=1,
        )
    ).eval()
    unet = tiny_sd.unet().eval()
    with torch.no_grad():  # diffusers zero-inits some layers; noise everywhere
        for p in [*text.parameters(), *unet.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    return text, unet


def _torch_pipe(text: CLIPTextModel, unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=None,
        text_encoder=copy.deepcopy(text),
        tokenizer=None,
        unet=copy.deepcopy(unet),
        scheduler=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _kohya_name(module: str, ldm: dict[str, str] | None = None) -> str:
    if ldm is not None:
        module = ldm_name(module, ldm) or module
    return module.replace(".", "_")


def _write_kohya(
    diffusers_file: Path, out: Path, unet: UNet2DConditionModel, *, ldm: bool = False, text=True
) -> None:
    """The diffusers file's pairs as kohya keys (alpha written out, text tower as text_model)."""
    tensors = load_file(str(diffusers_file))
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})
    # LDM block numbers depend on the whole UNet layout (downsamplers count), not the LoRA's.
    prefixes = ldm_prefixes([n for n, _ in unet.named_modules()]) if ldm else None
    kohya: dict[str, torch.Tensor] = {}
    for module in modules:
        component, name = module.split(".", 1)
        if component == "unet":
            key, alpha = "lora_unet_" + _kohya_name(name, prefixes), UNET_ALPHA
        elif text:
            key, alpha = "lora_te_" + _kohya_name("text_model." + name), TEXT_ALPHA
        else:
            continue
        kohya[f"{key}.lora_down.weight"] = tensors[f"{module}.lora_A.weight"]
        kohya[f"{key}.lora_up.weight"] = tensors[f"{module}.lora_B.weight"]
        kohya[f"{key}.alpha"] = torch.tensor(alpha)
    if out.suffix == ".pt":
        torch.save(kohya, out)
    else:
        save_file(kohya, str(out))


def _write_old_diffusers(diffusers_file: Path, out: Path) -> None:
    """Pre-PEFT diffusers keys: `.lora.down/up` (UNet), `.lora_linear_layer` (text), `.alpha`."""
    tensors = load_file(str(diffusers_file))
    old: dict[str, torch.Tensor] = {}
    for module in sorted({k.rsplit(".lora_", 1)[0] for k in tensors}):
        unet = module.startswith("unet.")
        layer = "lora" if unet else "lora_linear_layer"
        old[f"{module}.{layer}.down.weight"] = tensors[f"{module}.lora_A.weight"]
        old[f"{module}.{layer}.up.weight"] = tensors[f"{module}.lora_B.weight"]
        old[f"{module}.alpha"] = torch.tensor(UNET_ALPHA if unet else TEXT_ALPHA)
    save_file(old, str(out))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("lora")
    text, unet = _base_models()
    text.save_pretrained(root / "src" / "text_encoder")
    unet.save_pretrained(root / "src" / "unet")
    for name in ("text_encoder", "unet"):
        convert_component(root / "src" / name, root / "dst" / name)
    defs, states = {}, {}
    for name in ("text_encoder", "unet"):
        defs[name], states[name] = nnx.split(load_component(root / "dst", name))

    # PEFT LoRAs with random (non-zero) A and B, saved as diffusers writes them.
    torch.manual_seed(1)
    unet_cfg = LoraConfig(
        r=UNET_RANK, lora_alpha=UNET_ALPHA, target_modules=UNET_TARGETS, init_lora_weights=False
    )
    text_cfg = LoraConfig(
        r=TEXT_RANK, lora_alpha=TEXT_ALPHA, target_modules=TEXT_TARGETS, init_lora_weights=False
    )
    lora_unet, lora_text = copy.deepcopy(unet), copy.deepcopy(text)
    lora_unet.add_adapter(unet_cfg)
    lora_text.add_adapter(text_cfg)
    unet_layers = get_peft_model_state_dict(lora_unet)
    StableDiffusionPipeline.save_lora_weights(
        root / "diffusers",
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=get_peft_model_state_dict(lora_text),
        unet_lora_adapter_metadata=unet_cfg.to_dict(),
        text_encoder_lora_adapter_metadata=text_cfg.to_dict(),
    )
    diffusers_file = root / "diffusers" / "pytorch_lora_weights.safetensors"
    save_file({k: v.contiguous() for k, v in unet_layers.items()}, str(root / "peft.safetensors"))
    _write_kohya(diffusers_file, root / "kohya.safetensors", unet)
    _write_kohya(diffusers_file, root / "kohya_ldm.safetensors", unet, ldm=True)
    _write_kohya(diffusers_file, root / "kohya.pt", unet)
    _write_kohya(diffusers_file, root / "kohya_unet.safetensors", unet, text=False)
    _write_old_diffusers(diffusers_file, root / "old_diffusers.safetensors")

    rng = np.random.default_rng(0)
    return SimpleNamespace(
        root=root,
        text=text,
        unet=unet,
        defs=defs,
        states=states,
        diffusers_file=diffusers_file,
        ids=rng.integers(2, 998, size=(2, 77)).astype(np.int64),
        sample=rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
        timesteps=np.array([999.0, 17.5], np.float32),
        context=rng.standard_normal((2, 7, 32), dtype=np.float32),
    )


@partial(jax.jit, static_argnums=0)
def _unet_fwd(graphdef, state, x, t, ctx):
    return nnx.merge(graphdef, state)(x, t, ctx)


@partial(jax.jit, static_argnums=0)
def _text_fwd(graphdef, state, ids):
    return nnx.merge(graphdef, state)(ids)[0]


def _flax_outputs(env: SimpleNamespace, states: dict) -> tuple[np.ndarray, np.ndarray]:
    x = jnp.asarray(env.sample.transpose(0, 2, 3, 1))
    ctx = jnp.asarray(env.context)
    eps = _unet_fwd(env.defs["unet"], states["unet"], x, jnp.asarray(env.timesteps), ctx)
    hidden = _text_fwd(env.defs["text_encoder"], states["text_encoder"], jnp.asarray(env.ids))
    return np.asarray(eps).transpose(0, 3, 1, 2), np.asarray(hidden)


def _torch_outputs(env: SimpleNamespace, pipe: StableDiffusionPipeline) -> tuple:
    with torch.no_grad():
        eps = pipe.unet(
            torch.from_numpy(env.sample),
            torch.from_numpy(env.timesteps),
            torch.from_numpy(env.context),
        ).sample.numpy()
        hidden = pipe.text_encoder(torch.from_numpy(env.ids)).last_hidden_state.numpy()
    return eps, hidden


def _flat(state: nnx.State) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _merged_flat(env: SimpleNamespace, loras: list[LoraSpec]) -> dict[str, np.ndarray]:
    merged = merge_loras(env.states, loras)
    return {f"{c}:{k}": v for c in merged for k, v in _flat(merged[c]).items()}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --- parity with diffusers --------------------------------------------------------------------


def test_diffusers_format_matches_fused_diffusers(env: SimpleNamespace) -> None:
    multiplier = 0.7
    pipe = _torch_pipe(env.text, env.unet)
    pipe.load_lora_weights(str(env.diffusers_file))
    pipe.fuse_lora(lora_scale=multiplier)
    want_eps, want_hidden = _torch_outputs(env, pipe)

    merged = merge_loras(env.states, [LoraSpec(env.diffusers_file, multiplier)])
    base_eps, base_hidden = _flax_outputs(env, env.states)
    compiled = _unet_fwd._cache_size(), _text_fwd._cache_size()
    eps, hidden = _flax_outputs(env, merged)
    # Merged states must be drop-in arguments: same tree, dtypes and placement, no recompile.
    assert (_unet_fwd._cache_size(), _text_fwd._cache_size()) == compiled
    # The LoRA must matter far beyond the tolerance, or the comparison proves nothing.
    assert np.abs(base_eps - want_eps).max() > 100 * TOL
    assert np.abs(base_hidden - want_hidden).max() > 100 * TOL
    assert np.abs(eps - want_eps).max() < TOL
    assert np.abs(hidden - want_hidden).max() < TOL


def test_kohya_unet_matches_diffusers_kohya_loader(env: SimpleNamespace) -> None:
    # diffusers' kohya loader names the text tower `text_model.`, which transformers 5's bare
    # CLIPTextModel lacks, and does not map SD1 LDM-style names (input_blocks_...), so this
    # cross-check covers diffusers-style UNet names; the equality test below covers the rest.
    pipe = _torch_pipe(env.text, env.unet)
    pipe.load_lora_weights(str(env.root / "kohya_unet.safetensors"))
    pipe.fuse_lora(lora_scale=1.3)
    want_eps, _ = _torch_outputs(env, pipe)
    spec = LoraSpec(env.root / "kohya_unet.safetensors", 1.3)
    eps, _ = _flax_outputs(env, merge_loras(env.states, [spec]))
    assert np.abs(eps - want_eps).max() < TOL


@pytest.mark.parametrize(
    "name", ["kohya.safetensors", "kohya_ldm.safetensors", "kohya.pt", "old_diffusers.safetensors"]
)
def test_kohya_merges_to_the_same_weights_as_diffusers_format(
    env: SimpleNamespace, name: str
) -> None:
    want = _merged_flat(env, [LoraSpec(env.diffusers_file, 0.7)])
    _assert_same(_merged_flat(env, [LoraSpec(env.root / name, 0.7)]), want)


def test_unprefixed_peft_adapter_goes_to_the_unet(env: SimpleNamespace) -> None:
    # No metadata: alpha = rank, so scale 1 where the diffusers file has alpha/rank = 2.
    got = merge_loras(env.states, [LoraSpec(env.root / "peft.safetensors", 1.4)])
    want = merge_loras(env.states, [LoraSpec(env.diffusers_file, 0.7)])
    assert got["text_encoder"] is env.states["text_encoder"]
    _assert_same(_flat(got["unet"]), _flat(want["unet"]))


def test_bf16_file_reads(env: SimpleNamespace, tmp_path: Path) -> None:
    tensors = load_file(str(env.root / "kohya.safetensors"))
    save_file(
        {k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(tmp_path / "b.safetensors")
    )
    got = _merged_flat(env, [LoraSpec(tmp_path / "b.safetensors", 1.0)])
    want = _merged_flat(env, [LoraSpec(env.root / "kohya.safetensors", 1.0)])
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=2e-3, err_msg=key)


def test_ldm_names_follow_the_unet_layout() -> None:
    """LDM block numbering for the real SD1.5 and SDXL layouts (tiny widths: names only)."""
    sd15 = UNet2DConditionModel(
        block_out_channels=(8, 8, 8, 8), norm_num_groups=4, cross_attention_dim=8
    )
    prefixes = ldm_prefixes([n for n, _ in sd15.named_modules()])
    expected = {
        "conv_in": "input_blocks.0.0",
        "down_blocks.0.resnets.1.conv1": "input_blocks.2.0.in_layers.2",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.1.attentions.0.proj_in": "input_blocks.4.1.proj_in",
        "down_blocks.3.resnets.1.time_emb_proj": "input_blocks.11.0.emb_layers.1",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k": (
            "middle_block.1.transformer_blocks.0.attn2.to_k"
        ),
        "mid_block.resnets.1.conv2": "middle_block.2.out_layers.3",
        "up_blocks.0.resnets.2.conv_shortcut": "output_blocks.2.0.skip_connection",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.1.conv",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2": (
            "output_blocks.11.1.transformer_blocks.0.ff.net.2"
        ),
        "time_embedding.linear_2": "time_embed.2",
        "conv_out": "out.2",
    }
    assert {m: ldm_name(m, prefixes) for m in expected} == expected
    sdxl = UNet2DConditionModel(
        block_out_channels=(8, 8, 8),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        cross_attention_dim=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 6 * 4,
    )
    prefixes = ldm_prefixes([n for n, _ in sdxl.named_modules()])
    expected = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
        ),
        "down_blocks.2.attentions.1.proj_out": "input_blocks.8.1.proj_out",
        "up_blocks.0.attentions.2.proj_in": "output_blocks.2.1.proj_in",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.2.resnets.2.conv1": "output_blocks.8.0.in_layers.2",
        "add_embedding.linear_1": "label_emb.0.0",
    }
    assert {m: ldm_name(m, prefixes) for m in expected} == expected


# --- merge arithmetic and caching -------------------------------------------------------------


def _locon(path: Path) -> None:
    """A second LoRA: a 3x3 conv LoCon and a Linear-shaped pair on a 1x1 conv_shortcut."""
    g = torch.Generator().manual_seed(5)
    base = "lora_unet_down_blocks_1_resnets_0_"
    save_file(
        {
            base + "conv1.lora_down.weight": torch.randn(3, 32, 3, 3, generator=g),
            base + "conv1.lora_up.weight": torch.randn(64, 3, 1, 1, generator=g),
            base + "conv1.alpha": torch.tensor(1.5),
            base + "conv_shortcut.lora_down.weight": torch.randn(2, 32, generator=g),
            base + "conv_shortcut.lora_up.weight": torch.randn(64, 2, generator=g),
        },
        str(path),
    )


def test_multipliers_and_sums(env: SimpleNamespace, tmp_path: Path) -> None:
    before = {c: _flat(s) for c, s in env.states.items()}
    lora = env.diffusers_file
    _locon(tmp_path / "locon.safetensors")
    locon = tmp_path / "locon.safetensors"

    zero = merge_loras(env.states, [LoraSpec(lora, 0.0)])
    for c in env.states:
        _assert_same(_flat(zero[c]), before[c])
    one = merge_loras(env.states, [LoraSpec(lora, 1.0)])
    two = merge_loras(env.states, [LoraSpec(lora, 2.0)])
    other = merge_loras(env.states, [LoraSpec(locon, 0.5)])
    both = merge_loras(env.states, [LoraSpec(lora, 1.0), LoraSpec(locon, 0.5)])
    changed = 0
    for c in env.states:
        base, f1, f2, fo, fb = (_flat(s[c]) for s in (env.states, one, two, other, both))
        for key in base:
            d1, d2, do = f1[key] - base[key], f2[key] - base[key], fo[key] - base[key]
            np.testing.assert_allclose(d2, 2 * d1, atol=1e-6, err_msg=key)
            np.testing.assert_allclose(fb[key] - base[key], d1 + do, atol=1e-6, err_msg=key)
            changed += bool(np.any(d1) or np.any(do))
    modules = {k.rsplit(".lora_", 1)[0] for k in load_file(str(lora))}
    assert changed == len(modules) + 1  # the LoCon adds conv_shortcut; its conv1 is shared

    # The LoCon conv delta is the composition of its two convolutions.
    x = torch.randn(1, 32, 6, 6)
    down = load_file(str(locon))["lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight"]
    up = load_file(str(locon))["lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight"]
    composed = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, padding=1), up)
    key = "down_blocks.1.resnets.0.conv1.kernel"
    delta = (_flat(other["unet"])[key] - before["unet"][key]) / (0.5 * 1.5 / 3)
    ours = jax.lax.conv_general_dilated(
        jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
        jnp.asarray(delta),
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), composed, atol=1e-3)

    # Nothing above touched the base states.
    for c in env.states:
        _assert_same(_flat(env.states[c]), before[c])
    assert one["unet"] is not env.states["unet"]


def test_cache_reuses_merges(env: SimpleNamespace, tmp_path: Path) -> None:
    calls = []

    def counting(states, loras):
        calls.append([(s.path.name, s.multiplier) for s in loras])
        return merge_loras(states, loras)

    _locon(tmp_path / "a.safetensors")
    _locon(tmp_path / "b.safetensors")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    cache = LoraCache(max_entries=2, merge_fn=counting)
    assert cache.get_or_merge(env.states, []) is env.states
    first = cache.get_or_merge(env.states, [LoraSpec(a, 1.0), LoraSpec(b, 0.5)])
    assert cache.get_or_merge(env.states, [LoraSpec(b, 0.5), LoraSpec(a, 1.0)]) is first
    assert len(calls) == 1 and cache.hits == 1
    cache.get_or_merge(env.states, [LoraSpec(a, 0.9), LoraSpec(b, 0.5)])  # new multiplier
    assert len(calls) == 2
    stat = a.stat()
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # file edited on disk
    edited = [LoraSpec(a, 1.0), LoraSpec(b, 0.5)]
    assert cache.get_or_merge(env.states, edited) is not first
    assert len(calls) == 3
    cache.get_or_merge(env.states, edited)
    assert len(calls) == 3
    cache.get_or_merge(env.states, [LoraSpec(b, 0.5)])  # max_entries=2: evicts the 0.9 set
    cache.get_or_merge(env.states, [LoraSpec(a, 0.9), LoraSpec(b, 0.5)])
    assert len(calls) == 5


# --- errors -----------------------------------------------------------------------------------


def _pair(path: Path, prefix: str, rank: int = 2, dims: tuple[int, int] = (32, 32)) -> Path:
    save_file(
        {
            f"{prefix}.lora_down.weight": torch.ones(rank, dims[0]),
            f"{prefix}.lora_up.weight": torch.ones(dims[1], rank),
        },
        str(path),
    )
    return path


def test_unknown_modules_are_named(env: SimpleNamespace, tmp_path: Path) -> None:
    bad = _pair(tmp_path / "bad.safetensors", "lora_unet_nowhere_block_to_q")
    with pytest.raises(LoraError, match="matches no module.*lora_unet_nowhere_block_to_q"):
        merge_loras(env.states, [LoraSpec(bad, 1.0)])
    # One unknown module among known ones is still an error naming it.
    tensors = load_file(str(env.root / "kohya.safetensors"))
    tensors.update(load_file(str(bad)))
    save_file(tensors, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(LoraError, match="1 LoRA module.*lora_unet_nowhere_block_to_q"):
        merge_loras(env.states, [LoraSpec(tmp_path / "mixed.safetensors", 1.0)])


def test_malformed_loras_are_refused(env: SimpleNamespace, tmp_path: Path) -> None:
    attn = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    wrong = _pair(tmp_path / "wrong.safetensors", attn, dims=(48, 48))
    with pytest.raises(LoraError, match=f"{attn}.*another model size"):
        merge_loras(env.states, [LoraSpec(wrong, 1.0)])
    save_file({f"{attn}.hada_w1_a": torch.ones(2, 2)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(LoraError, match="LoHa"):
        merge_loras(env.states, [LoraSpec(tmp_path / "loha.safetensors", 1.0)])
    save_file({"model.weight": torch.ones(2, 2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(LoraError, match="not LoRA weights.*model.weight"):
        merge_loras(env.states, [LoraSpec(tmp_path / "plain.safetensors", 1.0)])
    te2 = _pair(tmp_path / "te2.safetensors", "lora_te2_text_model_encoder_layers_0_mlp_fc1")
    with pytest.raises(LoraError, match="text_encoder_2"):
        merge_loras(env.states, [LoraSpec(te2, 1.0)])
    with pytest.raises(LoraError, match="high-noise"):
        merge_loras(env.states, [LoraSpec(env.root / "kohya_unet.safetensors", 1.0, True)])


# --- files ------------------------------------------------------------------------------------


def test_list_and_resolve_stay_inside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    (folder / "sub").mkdir(parents=True)
    for rel in ("b.safetensors", "sub/a.safetensors", "sub/c.v2.pt", "notes.txt"):
        (folder / rel).write_bytes(b"x")
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"x")
    (folder / "link.safetensors").symlink_to(outside)
    (folder / "linkdir").symlink_to(tmp_path, target_is_directory=True)

    assert list_loras(folder) == [
        {"name": "b", "path": "b.safetensors"},
        {"name": "a", "path": "sub/a.safetensors"},
        {"name": "c.v2", "path": "sub/c.v2.pt"},
    ]
    root = folder.resolve()
    assert resolve_lora_path(folder, "b") == root / "b.safetensors"
    assert resolve_lora_path(folder, "a") == root / "sub" / "a.safetensors"
    assert resolve_lora_path(folder, "sub/a") == root / "sub" / "a.safetensors"
    assert resolve_lora_path(folder, "sub/a.safetensors") == root / "sub" / "a.safetensors"
    assert resolve_lora_path(folder, "c.v2") == root / "sub" / "c.v2.pt"
    assert resolve_lora_path(folder, str(root / "b.safetensors")) == root / "b.safetensors"
    for bad in (
        "../secret.safetensors",
        "../secret",
        "sub/../../secret",
        str(outside),
        "link",
        "link.safetensors",
        "linkdir/secret",
    ):
        with pytest.raises(LoraError, match="outside"):
            resolve_lora_path(folder, bad)
    for missing in ("nope", "notes", "sub/b", ""):
        with pytest.raises(LoraError):
            resolve_lora_path(folder, missing)
