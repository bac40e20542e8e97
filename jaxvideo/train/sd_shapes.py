"""The SD-1.x-architecture shapes demo (`sd1-shapes`): trained here, on the CPU, in minutes.

Three stages on `jaxvideo.demo_data` images (128x128 px, one flat shape on a flat background,
captioned `a {color} {shape} on a {color} background`):

1. the VAE (8x down, 4 latent channels) learns to reconstruct them (MSE plus a small KL);
2. its latents' spread sets `scaling_factor`, as SD's VAE has one (latents of unit variance);
3. the CLIP text encoder and the UNet learn together to denoise those latents (SD 2.x's
   v-prediction objective on SD 1.x's scaled-linear schedule), with 10% of captions dropped to
   the empty prompt so classifier-free guidance works; what is saved is the exponential
   moving average of their weights.

The tokenizer is the tiny CLIP BPE with one token per caption word. The result is a converted
model folder like any other (family sd1), so the server loads it as it loads a real model.
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

from jaxvideo import demo_data
from jaxvideo.demo_sd import SD1_SCHEDULER, write_sd1_folder_files
from jaxvideo.tokenizers import PromptTokenizer, write_tiny_clip_tokenizer
from jaxvideo.train.common import pixels as _pixels
from jaxvideo.train.common import random_start
from jaxvideo.train.common import summary as _summary
from jaxvideo.train.loop import Trainable, flat_params, train
from jaxvideo.weights import load_component, save_component

log = logging.getLogger(__name__)

SIZE = 128  # pixels; latents are 16 x 16 x 4
# What requests that name none get: the size it was trained at, and the sampler, steps and
# (low) CFG scale at which it follows its prompts best (benchmarks/adherence.py and
# benchmarks/sampler_quality.py; docs/PERFORMANCE.md): at CFG 2 and above guidance rounds
# more squares into circles (92-98% of prompts at 1.5, 88-91% at 2).
REQUEST_DEFAULTS = {
    "width": SIZE,
    "height": SIZE,
    "sampler": "lcm",
    "steps": 30,
    "guidance_scale": 1.5,
}
CFG_DROP = 0.1  # share of captions trained as the empty prompt (the unconditional branch)
KL_WEIGHT = 1e-6  # as SD's VAE: latents stay near a Gaussian without blurring the images


@dataclass(frozen=True)
class Budget:
    """Steps and batch sizes of the stages (the defaults take ~25 min on a 2-core CPU)."""

    vae_steps: int = 600
    vae_batch: int = 16
    vae_crop: int = 64  # the VAE is convolutional: it learns on crops, 4x cheaper than 128 px
    latent_pool: int = 8192  # images encoded once (~100 s); the UNet trains on them
    unet_steps: int = 3200
    unet_batch: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 1e-3
    unet_ema: float = 0.999  # the text encoder and UNet saved are this moving average
    # Share of timesteps drawn from the middle of the schedule (250-750) rather than all of
    # it: where a circle and a square, alike at high noise, have to be told apart.
    mid_t_share: float = 0.5
    # v-prediction (SD 2.x's objective) places one shape at the noisiest steps where epsilon
    # prediction, amplified 14x into the image estimate there, scatters several blobs.
    prediction_type: str = "v_prediction"


def configs(vocab_size: int) -> dict[str, dict[str, Any]]:
    """diffusers-style configs of the three networks (SD 1.x block types, small widths)."""
    return {
        "text_encoder": {
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
            "projection_dim": 64,
        },
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "sample_size": SIZE // 8,
            "in_channels": 4,
            "out_channels": 4,
            # Attention at 8x8 and 4x4 only: at 16x16 it would double a CPU step's time.
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "block_out_channels": [32, 64, 96],
            "layers_per_block": 1,
            "attention_head_dim": 4,
            "cross_attention_dim": 64,
            "norm_num_groups": 16,
            "norm_eps": 1e-5,
            "use_linear_projection": False,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
        },
        "vae": {
            "_class_name": "AutoencoderKL",
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [16, 32, 32, 64],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 8,
            "sample_size": SIZE,
            "scaling_factor": 1.0,  # set from the trained latents
        },
    }


def train_sd_shapes(
    out_dir: str | Path, seed: int = 0, budget: Budget = Budget(), dtype: str = "fp32"
) -> Path:
    """Trains the demo from scratch (deterministic from `seed`) and writes its folder, the
    weights stored as `dtype`."""
    out = Path(out_dir)
    started = time.monotonic()
    vocab_size = write_tiny_clip_tokenizer(out / "tokenizer", words=demo_data.VOCABULARY)
    hf = configs(vocab_size)
    random_start(out, hf, seed)
    report: dict[str, Any] = {"seed": seed, "budget": budget.__dict__}

    vae = Trainable.of(load_component(out, "vae"))
    vae.params, history = _train_vae(vae, seed, budget)
    report["vae"] = _summary(history)
    scale = hf["vae"]["scaling_factor"] = _latent_scale(vae, seed)
    save_component(out / "vae", hf["vae"], flat_params(vae.params), dtype)

    text = Trainable.of(load_component(out, "text_encoder"))
    unet = Trainable.of(load_component(out, "unet"))
    tokens = _Captions(PromptTokenizer(out / "tokenizer"))
    (text.params, unet.params), history = _train_denoiser(
        vae, scale, text, unet, tokens, seed, budget
    )
    report["unet"] = _summary(history)
    save_component(out / "text_encoder", hf["text_encoder"], flat_params(text.params), dtype)
    save_component(out / "unet", hf["unet"], flat_params(unet.params), dtype)

    _write_folder_files(out, dtype, budget.prediction_type)
    report["scaling_factor"] = hf["vae"]["scaling_factor"]
    report["seconds"] = round(time.monotonic() - started, 1)
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return out


# -- stage 1 and 2: the VAE -----------------------------------------------------------------------


def _train_vae(vae: Trainable, seed: int, budget: Budget):
    def loss(params, x, key):
        model = vae.module(params)
        mean, logvar = model.encode(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        reconstruction = model.decode(z)
        kl = 0.5 * jnp.mean(mean**2 + jnp.exp(logvar) - 1.0 - logvar)
        return jnp.mean((reconstruction - x) ** 2) + KL_WEIGHT * kl

    rng = np.random.default_rng(seed + 3)

    def crops() -> Iterator[jax.Array]:
        size = budget.vae_crop
        for images, _ in demo_data.image_batches(seed, budget.vae_batch, SIZE, SIZE):
            y, x = rng.integers(0, SIZE - size + 1, 2)
            yield _pixels(images[:, y : y + size, x : x + size])

    batches = crops()
    return train(vae.params, loss, batches, budget.vae_steps, budget.vae_lr, seed, "vae")


def _latent_scale(vae: Trainable, seed: int, count: int = 256) -> float:
    """1 / the standard deviation of the latent means, so scaled latents have unit spread."""
    encode = jax.jit(lambda x: vae.module().encode(x)[0])
    images, _ = next(demo_data.image_batches(seed + 1, count, SIZE, SIZE))
    chunks = [encode(_pixels(images[i : i + 32])) for i in range(0, count, 32)]
    means = np.concatenate([np.asarray(chunk) for chunk in chunks])
    return float(1.0 / means.std())


# -- stage 3: text encoder and UNet ----------------------------------------------------------------


class _Captions:
    """Token ids of captions (77 each), cached: the data has a few hundred distinct ones."""

    def __init__(self, tokenizer: PromptTokenizer):
        self._tokenizer = tokenizer
        self._ids: dict[str, np.ndarray] = {}

    def __call__(self, captions: list[str]) -> np.ndarray:
        for caption in captions:
            if caption not in self._ids:
                self._ids[caption] = np.asarray(self._tokenizer.chunks(caption).ids[0], np.int32)
        return np.stack([self._ids[c] for c in captions])


def _alphas_cumprod() -> jax.Array:
    """SD 1.x's scaled-linear schedule (the scheduler config the folder ships)."""
    start, end = SD1_SCHEDULER["beta_start"], SD1_SCHEDULER["beta_end"]
    count = SD1_SCHEDULER["num_train_timesteps"]
    betas = np.linspace(start**0.5, end**0.5, count, dtype=np.float64) ** 2
    return jnp.asarray(np.cumprod(1.0 - betas), jnp.float32)


def _latent_pool(vae: Trainable, scale: float, seed: int, count: int):
    """`count` images' scaled latent means and their captions, encoded once."""
    encode = jax.jit(lambda x: vae.module().encode(x)[0] * scale)
    latents, captions = [], []
    for images, texts in demo_data.image_batches(seed, 64, SIZE, SIZE):
        latents.append(np.asarray(encode(_pixels(images))))
        captions += texts
        if len(captions) >= count:
            break
    return np.concatenate(latents)[:count], captions[:count]


def _train_denoiser(vae, scale: float, text, unet, tokens: _Captions, seed: int, budget: Budget):
    pool, pool_captions = _latent_pool(vae, scale, seed + 2, budget.latent_pool)
    pool_ids = tokens(pool_captions)
    empty = tokens([""])[0]
    alphas = _alphas_cumprod()
    rng = np.random.default_rng(seed + 7)

    def batches() -> Iterator[tuple[jax.Array, jax.Array]]:
        while True:
            pick = rng.integers(0, len(pool), budget.unet_batch)
            # No mirroring in latent space: a flipped latent is not the latent of the flipped
            # picture (the VAE's kernels are not symmetric) and decodes softer.
            latents = pool[pick]
            ids = pool_ids[pick]
            ids[rng.random(len(pick)) < CFG_DROP] = empty
            yield jnp.asarray(latents), jnp.asarray(ids)

    def loss(params, batch, key):
        text_params, unet_params = params
        latents, ids = batch
        t_key, n_key = jax.random.split(key)
        t = _timesteps(t_key, latents.shape[0], alphas.shape[0], budget.mid_t_share)
        noise = jax.random.normal(n_key, latents.shape)
        a = alphas[t][:, None, None, None]
        noisy = jnp.sqrt(a) * latents + jnp.sqrt(1.0 - a) * noise
        target = noise
        if budget.prediction_type == "v_prediction":
            target = jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * latents
        context, _ = text.module(text_params)(ids)
        predicted = unet.module(unet_params)(noisy, t.astype(jnp.float32), context)
        return jnp.mean((predicted - target) ** 2)

    params = (text.params, unet.params)
    steps, lr = budget.unet_steps, budget.unet_lr
    return train(params, loss, batches(), steps, lr, seed, "unet", ema=budget.unet_ema)


def _timesteps(key: jax.Array, count: int, total: int, mid_share: float) -> jax.Array:
    """Training timesteps: uniform over the schedule, except that `mid_share` of them are
    uniform over its middle half."""
    pick, whole, mid = jax.random.split(key, 3)
    everywhere = jax.random.randint(whole, (count,), 0, total)
    middle = jax.random.randint(mid, (count,), total // 4, 3 * total // 4)
    return jnp.where(jax.random.uniform(pick, (count,)) < mid_share, middle, everywhere)


def _write_folder_files(out: Path, dtype: str, prediction_type: str) -> None:
    write_sd1_folder_files(
        out,
        "jaxvideo.train.sd_shapes (trained on jaxvideo.demo_data shapes)",
        dtype,
        {**SD1_SCHEDULER, "prediction_type": prediction_type},
        REQUEST_DEFAULTS,
    )
