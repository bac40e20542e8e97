"""Pins the PyTorch reference's numerics where they differ from the correctly rounded value
by libm accident, so parity tests compare the networks rather than two exp implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models import embeddings

from jaxvideo.models.layers import timestep_frequencies


def _correctly_rounded(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1,
    scale: float = 1,
    max_period: int = 10000,
) -> torch.Tensor:
    # torch's vectorised float32 exp is one ulp off for a few of the 128 frequencies on some
    # CPUs; times Flux's guidance x 1000 (3,500) that moves a sinusoid by 1e-4. The frequencies
    # here are the correctly rounded ones (what jaxvideo uses), the rest is diffusers' code.
    freqs = timestep_frequencies(embedding_dim, downscale_freq_shift, max_period)
    args = timesteps[:, None].float() * torch.from_numpy(np.asarray(freqs))[None, :]
    emb = scale * args
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        half = embedding_dim // 2
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


@pytest.fixture
def correctly_rounded_timesteps(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' timestep sinusoids from correctly rounded frequencies, for one test."""
    monkeypatch.setattr(embeddings, "get_timestep_embedding", _correctly_rounded)
