"""The CPU chunked attention path equals plain attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvideo.models.attention import chunked_attention, dot_product_attention


# 96 and 3120 do not divide the 128-query block: the padded rows must not leak through.
@pytest.mark.parametrize("q_len,kv_len", [(256, 256), (1024, 77), (96, 320), (3120, 40)])
def test_chunked_attention_matches_plain_attention(q_len, kv_len):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, q_len, 3, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, kv_len, 3, 8)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, kv_len, 3, 8)), jnp.float32)
    expected = jax.nn.dot_product_attention(q, k, v)
    np.testing.assert_allclose(jax.jit(chunked_attention)(q, k, v), expected, atol=1e-5)


def test_long_self_attention_takes_the_chunked_path_and_agrees():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 1024, 2, 8)), jnp.float32) for _ in range(3))
    hlo = jax.jit(dot_product_attention).lower(q, k, v).as_text()
    assert "while" in hlo  # lax.map over heads and query blocks
    np.testing.assert_allclose(
        dot_product_attention(q, k, v), jax.nn.dot_product_attention(q, k, v), atol=1e-5
    )
