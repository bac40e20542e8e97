"""The Wan-2.1-architecture shapes demo (`wan-shapes`): text to video, trained here on the CPU.

Three stages on `jaxvideo.demo_data` clips (64x64 px, 9 frames: one flat shape moving in a
straight line on a flat background, captioned `a {color} {shape} moving {direction} on a
{color} background`):

1. the causal video VAE (AutoencoderKLWan: 8x down in space, 4x in time, 16 latent channels)
   learns to reconstruct short crops of clips (MSE plus a small KL);
2. the latents of a pool of clips, encoded once, give the per-channel `latents_mean` and
   `latents_std` of the VAE config (the pipeline normalises latents with them);
3. the WanTransformer3DModel learns on that pool with the rectified-flow objective the Wan
   pipeline samples with: x_s = (1 - s) x0 + s noise, the network predicts noise - x0
   (diffusers' `flow_prediction`) at timestep floor(1000 s), s drawn uniformly in flow time
   and shifted towards the noisiest steps (`Budget.dit_shift`), where a video's layout and
   motion are settled; 10% of captions are the empty prompt, so classifier-free guidance
   works. The UMT5 text encoder stays as it starts (random, with local heads:
   `_text_encoder_start`), its outputs computed once per caption, as Wan's own pretrained
   encoder stays frozen: trained with the transformer, it learnt to erase the words the
   transformer could not use yet ("left" and "right" 8.7 apart at the start, 0.15 after), and
   the videos never learnt to move (docs/PERFORMANCE.md).

The tokenizer is the tiny T5 Unigram with one token per caption word. The text context is
what the pipeline feeds: the encoder's outputs on the prompt's tokens, zeros up to 512. The
result is a converted Wan 2.1 folder like any other, so the server loads it as a real model.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvideo import demo_data
from jaxvideo.demo_wan import WAN_SCHEDULER, write_wan_folder_files
from jaxvideo.families import WAN21
from jaxvideo.models.attention import dot_product_attention
from jaxvideo.pipelines.wan import TEXT_LENGTH
from jaxvideo.tokenizers import t5_token_ids, write_tiny_t5_tokenizer
from jaxvideo.train.common import pixels, random_start, summary
from jaxvideo.train.loop import Trainable, flat_params, train
from jaxvideo.weights import load_component, save_component

log = logging.getLogger(__name__)

SIZE = 64  # pixels; latents are 8 x 8 x 16 per latent frame
# 3 latent frames; the transformer sees 3 x 4 x 4 = 48 tokens. 17 frames (80 tokens) cost 0.26 s
# a transformer step against 0.17 and twice the VAE's clip stage, and learnt no more per step.
FRAMES = 9
FPS = 8
CFG_DROP = 0.1  # share of captions trained as the empty prompt (the unconditional branch)
KL_WEIGHT = 1e-6  # as SD's VAE: latents stay near a Gaussian without blurring the pictures
CAPTION_TOKENS = 16  # a caption is 9 words + </s>; the rest of the 512 are padding
NUM_TRAIN_TIMESTEPS = WAN_SCHEDULER["num_train_timesteps"]
GUIDANCE_SCALE = 5.0  # the request default the folder ships
CROSS_ATTENTION_GAIN = 2.0  # see _transformer_start
LOCAL_HEAD_BIAS = 6.0  # a text-encoder head's logit bias for its neighbour (_text_encoder_start)


@dataclass(frozen=True)
class Budget:
    """Steps and batch sizes of the stages (the defaults take 21-26 min on a 2-core CPU)."""

    # First on single frames (the causal VAE's first-frame path: many scenes per step, as
    # Wan's own VAE starts on images), then on whole clips.
    vae_image_steps: int = 800
    vae_image_batch: int = 16
    vae_steps: int = 800
    vae_batch: int = 2
    # Whole clips at whole size, what it decodes: trained on 9 frames, the VAE's causal caches
    # drifted to wrong colours by frame 17; on 32 px crops, even frame 0.
    vae_frames: int = FRAMES
    vae_crop: int = 64
    vae_lr: float = 1e-3
    vae_check: int = 16  # clips the VAE's round trip is judged on (training.json); 0: none
    latent_pool: int = 2048  # clips encoded once; the transformer trains on them
    dit_steps: int = 5500
    dit_batch: int = 24
    # 1e-3 reached in 1,500 steps what 5e-4 reached in 3,500; 2e-3 ended at loss 0.245, not 0.277.
    dit_lr: float = 2e-3
    dit_ema: float = 0.999  # the transformer saved is this moving average
    # Shifts the training sigmas towards the noisiest (sigma = k u / (1 + (k - 1) u), u
    # uniform): a video's layout and motion are settled there. At 2, as the sampling shift, the
    # videos did not move (direction 2-8% of 48 prompts); at 4, 60-79% from this trainer and
    # 92-96% in transformer-only runs (docs/PERFORMANCE.md).
    dit_shift: float = 4.0
    flow_shift: float = 2.0  # the folder's scheduler's (sampling) shift


def configs(vocab_size: int) -> dict[str, dict[str, Any]]:
    """diffusers-style configs of the three networks (Wan 2.1 architecture, small widths)."""
    return {
        "text_encoder": {
            "architectures": ["UMT5EncoderModel"],
            "model_type": "umt5",
            "vocab_size": vocab_size,
            "d_model": 64,
            "d_kv": 16,
            "d_ff": 128,
            "num_layers": 2,
            "num_heads": 4,
            "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu",
            "layer_norm_epsilon": 1e-6,
            "pad_token_id": 0,
            "eos_token_id": 1,
        },
        "transformer": {
            "_class_name": "WanTransformer3DModel",
            "patch_size": [1, 2, 2],
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 64,
            "freq_dim": 64,
            "ffn_dim": 512,
            "num_layers": 4,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "eps": 1e-6,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": 1024,
        },
        "vae": {
            "_class_name": "AutoencoderKLWan",
            "base_dim": 8,
            "z_dim": 16,
            "dim_mult": [1, 2, 2, 2],
            "num_res_blocks": 1,
            "attn_scales": [],
            "temperal_downsample": [False, True, True],
            "dropout": 0.0,
            # Set from the trained latents.
            "latents_mean": [0.0] * 16,
            "latents_std": [1.0] * 16,
        },
    }


def train_wan_shapes(
    out_dir: str | Path, seed: int = 0, budget: Budget = Budget(), dtype: str = "fp32"
) -> Path:
    """Trains the demo from scratch (deterministic from `seed`) and writes its folder, the
    weights stored as `dtype`."""
    out = Path(out_dir)
    started = time.monotonic()
    vocab_size = write_tiny_t5_tokenizer(out / "tokenizer", words=demo_data.VOCABULARY)
    hf = configs(vocab_size)
    random_start(out, hf, seed)
    report: dict[str, Any] = {"seed": seed, "budget": budget.__dict__}

    vae = Trainable.of(load_component(out, "vae"))
    vae.params = _inflated(_initialised(vae.params, seed))
    vae.params, histories = _train_vae(vae, seed, budget)
    report["vae"] = {stage: summary(history) for stage, history in histories.items()}
    if budget.vae_check:
        report["vae"]["round_trip_adherence"] = _round_trip_adherence(
            vae, seed + 5, budget.vae_check
        )
        log.info("vae round-trip adherence %.3f", report["vae"]["round_trip_adherence"])

    pool, captions = _latent_pool(vae, seed + 2, budget.latent_pool)
    mean, std = _latent_statistics(pool)
    hf["vae"]["latents_mean"], hf["vae"]["latents_std"] = mean.tolist(), std.tolist()
    save_component(out / "vae", hf["vae"], flat_params(vae.params), dtype)
    pool = (pool - mean) / std

    text = Trainable.of(load_component(out, "text_encoder"))
    text.params = _text_encoder_start(text.params, hf["text_encoder"])
    dit = Trainable.of(load_component(out, "transformer"))
    dit.params = _transformer_start(_initialised(dit.params, seed))
    contexts = _contexts(text, *_token_ids(out / "tokenizer", captions))
    dit.params, history = _train_denoiser(dit, pool, contexts, seed, budget)
    report["transformer"] = summary(history)
    save_component(out / "text_encoder", hf["text_encoder"], flat_params(text.params), dtype)
    save_component(out / "transformer", hf["transformer"], flat_params(dit.params), dtype)

    write_wan_folder_files(
        out,
        WAN21,
        hf,
        source="jaxvideo.train.wan_shapes (trained on jaxvideo.demo_data clips)",
        dtype=dtype,
        scheduler={**WAN_SCHEDULER, "flow_shift": budget.flow_shift},
        # What it was trained at: requests that name no size or length get it.
        defaults={
            "width": SIZE,
            "height": SIZE,
            "num_frames": FRAMES,
            "fps": FPS,
            "guidance_scale": GUIDANCE_SCALE,
        },
    )
    report["latents_std"] = [round(v, 4) for v in hf["vae"]["latents_std"]]
    report["seconds"] = round(time.monotonic() - started, 1)
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return out


def _initialised(params: nnx.State, seed: int) -> nnx.State:
    """`params` with what the random demo weights (`save_random_component`) draw as plain
    weights started as the modules start them: RMS-norm gains (`gamma`, the VAE's) at one,
    modulation tables (the transformer's) normal over sqrt(width)."""
    rng = np.random.default_rng(seed + 11)

    def start(path, value):
        name = _names(path)[-1]
        if name == "gamma":
            return jnp.ones_like(value)
        if name == "scale_shift_table":
            table = rng.standard_normal(value.shape) / np.sqrt(value.shape[-1])
            return jnp.asarray(table, value.dtype)
        return value

    return jax.tree_util.tree_map_with_path(start, params)


def _names(path) -> list[str]:
    return [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]


def _transformer_start(params: nnx.State) -> nnx.State:
    """The transformer's start, from `_initialised` params:

    - adaLN-Zero (the DiT paper's start): the timestep modulation and every block's gates
      start at zero and the output projection too, so each block starts as the identity and
      the first prediction is zero instead of a large random one;
    - cross-attention q/k RMS-norm gains at CROSS_ATTENTION_GAIN: the context is the caption's
      ~10 rows then ~500 zero rows, which attend as one key weighted log(500) ~ 6; with unit
      gains a query/key logit cannot exceed sqrt(head_dim) ~ 5.7, so the caption got under a
      third of the attention after training, and its words reached the video weakly.
    """

    def start(path, value):
        names = _names(path)
        if names[-2:] in (["time_proj", "kernel"], ["proj_out", "kernel"]):
            return jnp.zeros_like(value)
        if names[-1] == "scale_shift_table" and "blocks" in names:
            return value.at[:, 2].set(0.0).at[:, 5].set(0.0)  # (shift, scale, gate) x 2
        if "attn2" in names and names[-2] in ("norm_q", "norm_k"):
            return jnp.full_like(value, CROSS_ATTENTION_GAIN)
        return value

    return jax.tree_util.tree_map_with_path(start, params)


def _text_encoder_start(params: nnx.State, config: dict[str, Any]) -> nnx.State:
    """The text encoder's relative-position tables started as local heads: head 0 attends to
    the previous word, head 1 to the next, heads 2 and 3 two words back and ahead.

    UMT5 knows word order only through these tables. Started near zero (as a random start
    draws them) they stayed small in training, so its outputs were a bag of words: "a red
    circle on a blue background" and "a blue circle on a red background" encoded the same
    apart from the colour rows themselves, and the transformer could not tell which colour
    was the shape's. With local heads a colour's row carries the word after it ("circle",
    "background") from the first step."""
    from jaxvideo.models.t5 import relative_position_buckets

    # The buckets of relative positions -2 .. 2 (seen from position 2), as the config sets them.
    buckets = relative_position_buckets(
        5, config["relative_attention_num_buckets"], config["relative_attention_max_distance"]
    )[2]

    def start(path, value):
        if "relative_attention_bias" not in _names(path):
            return value
        table = np.zeros(value.shape, np.float32)
        for head, relative in enumerate((-1, 1, -2, 2)[: value.shape[1]]):
            table[buckets[2 + relative], head] = LOCAL_HEAD_BIAS
        return jnp.asarray(table, value.dtype)

    return jax.tree_util.tree_map_with_path(start, params)


def _inflated(params: nnx.State) -> nnx.State:
    """The video VAE started as an image VAE applied frame by frame ("inflation"): every causal
    conv sees only the current frame (earlier time taps zero), the encoder's time downsampling
    keeps the later frame of each pair, the decoder's time upsampling repeats each frame. The
    image stage then trains what frame 0 uses (the other taps get no gradient from single
    frames), and the clip stage starts from a VAE that already round-trips every 4th frame,
    instead of from random time taps that swamp it."""

    def start(path, value):
        names = _names(path)
        if names[-1] != "kernel" or value.ndim != 5 or value.shape[0] == 1:
            return value
        kernel = jnp.zeros_like(value)
        if "time_conv" not in names:
            return kernel.at[-1].set(value[-1])
        cin, cout = value.shape[-2:]
        eye = jnp.eye(cin, dtype=value.dtype)
        # (1, 1, cin, cout): downsampling cin -> cin; upsampling cin -> 2 cin, frames 2t, 2t+1.
        current = eye if cout == cin else jnp.concatenate([eye, eye], axis=-1)
        return kernel.at[-1, 0, 0].set(current)

    return jax.tree_util.tree_map_with_path(start, params)


# -- stage 1 and 2: the VAE -----------------------------------------------------------------------


def _train_vae(vae: Trainable, seed: int, budget: Budget):
    def loss(params, x, key):
        model = vae.module(params)
        mean, logvar = model.encode(x, unroll=True)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        reconstruction = model.decode(z, unroll=True, clip=False)  # see decode
        kl = 0.5 * jnp.mean(mean**2 + jnp.exp(logvar) - 1.0 - logvar)
        return jnp.mean((reconstruction - x) ** 2) + KL_WEIGHT * kl

    rng = np.random.default_rng(seed + 3)

    def crops() -> Iterator[jax.Array]:
        size, frames = budget.vae_crop, budget.vae_frames
        # Clips of the full length, a random stretch of `frames` of them: motion as fast as
        # the model's videos have.
        for clips, _ in demo_data.clip_batches(seed, budget.vae_batch, FRAMES, SIZE, SIZE):
            t = rng.integers(0, FRAMES - frames + 1)
            y, x = rng.integers(0, SIZE - size + 1, 2)
            yield pixels(clips[:, t : t + frames, y : y + size, x : x + size])

    def frames() -> Iterator[jax.Array]:
        batches = demo_data.clip_batches(seed + 4, budget.vae_image_batch, FRAMES, SIZE, SIZE)
        for clips, _ in batches:
            pick = rng.integers(0, FRAMES, len(clips))
            yield pixels(clips[np.arange(len(clips)), pick][:, None])

    params, histories = vae.params, {}
    if budget.vae_image_steps:
        params, histories["images"] = train(
            params, loss, frames(), budget.vae_image_steps, budget.vae_lr, seed, "vae-images"
        )
    params, histories["clips"] = train(
        params, loss, crops(), budget.vae_steps, budget.vae_lr, seed, "vae"
    )
    return params, histories


def _round_trip_adherence(vae: Trainable, seed: int, count: int) -> float:
    """The adherence of clips encoded and decoded by the VAE: what it caps the model's at."""
    from jaxvideo.adherence import adherence, check

    # Unrolled: XLA:CPU takes minutes to compile the scans of 17 frames here.
    round_trip = jax.jit(
        lambda params, x: (m := vae.module(params)).decode(m.encode(x, True)[0], True)
    )
    clips, captions = next(demo_data.clip_batches(seed, count, FRAMES, SIZE, SIZE))
    decoded = np.concatenate(
        [np.asarray(round_trip(vae.params, pixels(clips[i : i + 8]))) for i in range(0, count, 8)]
    )
    frames = np.rint((decoded + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    return round(adherence(check(c, f) for c, f in zip(captions, frames, strict=True)), 4)


def _latent_pool(vae: Trainable, seed: int, count: int) -> tuple[np.ndarray, list[str]]:
    """`count` clips' latent means (unnormalised) and their captions, encoded once."""
    encode = jax.jit(lambda params, x: vae.module(params).encode(x)[0])
    latents, captions = [], []
    for clips, texts in demo_data.clip_batches(seed, min(count, 32), FRAMES, SIZE, SIZE):
        latents.append(np.asarray(encode(vae.params, pixels(clips))))
        captions += texts
        if len(captions) >= count:
            break
    return np.concatenate(latents)[:count], captions[:count]


def _latent_statistics(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float64) over every clip, frame and place."""
    flat = latents.reshape(-1, latents.shape[-1]).astype(np.float64)
    return flat.mean(axis=0), flat.std(axis=0)


# -- stage 3: text encoder and transformer ---------------------------------------------------------


class _PaddedCrossAttention(nnx.Module):
    """A transformer block's cross-attention (`WanAttention`) on a context whose last token
    stands for `copies` identical ones: its attention logit gets log(copies), which gives
    exactly the softmax over all of them."""

    def __init__(self, attention: nnx.Module, copies: int):
        self.attention = attention
        self.log_copies = float(np.log(copies))

    def __call__(self, x, context, image=None, rope=None):
        a = self.attention
        q = a._keys(a.norm_q, a.to_q, x)
        k = a._keys(a.norm_k, a.to_k, context)
        v = a._split_heads(a.to_v(context))
        bias = jnp.zeros(context.shape[1], jnp.float32).at[-1].set(self.log_copies)
        out = dot_product_attention(q, k, v, bias=bias)
        return a.to_out(out.reshape(*out.shape[:2], -1))


def short_context_model(transformer: nnx.Module, rows: int):
    """`transformer` as the pipeline runs it, fed the first `rows` rows of its context.

    The pipeline's context is the prompt's encoder outputs then zeros, TEXT_LENGTH (512) rows,
    and every zero row embeds to the same key and value. So the returned function takes the
    first `rows` (the prompt and some zeros), appends one zero row standing for the other
    512 - rows and weights its attention as that many: the outputs of the 512-row context at
    a fraction of the cost (those rows would be most of a training step's work). Call it on a
    transformer made inside the traced function: it replaces the blocks' cross-attentions.
    """
    for block in transformer.blocks:
        block.attn2 = _PaddedCrossAttention(block.attn2, TEXT_LENGTH - rows)

    def run(x: jax.Array, timestep: jax.Array, context: jax.Array) -> jax.Array:
        if context.shape[1] != rows:
            raise ValueError(f"expected a context of {rows} rows, got {context.shape[1]}")
        return transformer(x, timestep, jnp.pad(context, ((0, 0), (0, 1), (0, 0))))

    return run


def _token_ids(tokenizer_dir: Path, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and masks (count + 1, CAPTION_TOKENS) of the captions, then of ""."""
    distinct = sorted(set(captions)) + [""]
    ids, mask = t5_token_ids(tokenizer_dir, distinct, CAPTION_TOKENS)
    if mask[:, -1].any():
        raise ValueError(f"a caption is longer than {CAPTION_TOKENS} tokens")
    row = {caption: i for i, caption in enumerate(distinct)}
    rows = np.asarray([row[c] for c in captions] + [len(distinct) - 1])
    return ids[rows], mask[rows]


def _contexts(text: Trainable, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The text encoder's outputs (rows, CAPTION_TOKENS, dim) for token rows `ids`, zero past
    each caption's tokens: the context the pipeline feeds the transformer, cut to its rows."""
    encode = jax.jit(lambda tokens, keep: text.module()(tokens, keep) * keep[..., None])
    chunk = 256
    return np.concatenate(
        [
            np.asarray(encode(jnp.asarray(ids[i : i + chunk]), jnp.asarray(mask[i : i + chunk])))
            for i in range(0, len(ids), chunk)
        ]
    ).astype(np.float32)


def _train_denoiser(
    dit: Trainable, pool: np.ndarray, contexts: np.ndarray, seed: int, budget: Budget
):
    """`pool`: normalised latents (N, T, h, w, z); `contexts`: their captions' encodings and
    the empty prompt's last."""
    pool = pool.astype(np.float32)
    rng = np.random.default_rng(seed + 7)
    shift = budget.dit_shift

    def batches() -> Iterator[tuple[jax.Array, jax.Array]]:
        while True:
            pick = rng.integers(0, len(pool), budget.dit_batch)
            rows = np.where(rng.random(len(pick)) < CFG_DROP, len(contexts) - 1, pick)
            yield jnp.asarray(pool[pick]), jnp.asarray(contexts[rows])

    def loss(params, batch, key):
        latents, context = batch
        u_key, n_key = jax.random.split(key)
        u = jax.random.uniform(u_key, (latents.shape[0],))
        sigma = shift * u / (1.0 + (shift - 1.0) * u)  # the scheduler's time shift, at dit_shift
        # The pipeline feeds the transformer floor(1000 sigma) (diffusers' integer timesteps).
        timestep = jnp.floor(sigma * NUM_TRAIN_TIMESTEPS)
        noise = jax.random.normal(n_key, latents.shape)
        s = sigma[:, None, None, None, None]
        noisy = (1.0 - s) * latents + s * noise
        transformer = short_context_model(dit.module(params), CAPTION_TOKENS)
        predicted = transformer(noisy, timestep, context)
        return jnp.mean((predicted - (noise - latents)) ** 2)

    steps, lr = budget.dit_steps, budget.dit_lr
    return train(dit.params, loss, batches(), steps, lr, seed, "dit", ema=budget.dit_ema)
