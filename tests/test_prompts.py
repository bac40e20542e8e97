"""A1111 prompt emphasis and long-prompt chunking, and what they do to the conditioning."""

import numpy as np
import pytest

from jaxvideo.prompts import CHUNK_TOKENS, chunk_prompt, parse_emphasis
from jaxvideo.tokenizers import PromptTokenizer, write_tiny_clip_tokenizer


@pytest.mark.parametrize(
    "text,expected",
    [  # A1111's own documented examples
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.573),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641),
                (".", 1.1),
            ],
        ),
    ],
)
def test_parse_emphasis_matches_a1111(text, expected):
    got = parse_emphasis(text)
    assert [p for p, _ in got] == [p for p, _ in expected]
    np.testing.assert_allclose([w for _, w in got], [w for _, w in expected], rtol=1e-6)


def test_break_starts_a_new_chunk():
    chunks = chunk_prompt("a BREAK b", lambda t: [ord(c) for c in t], 1, 2, 0, None)
    assert len(chunks.ids) == 2
    assert all(len(ids) == CHUNK_TOKENS + 2 for ids in chunks.ids)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    write_tiny_clip_tokenizer(path)
    return PromptTokenizer(path)


def test_a_plain_prompt_is_one_chunk_equal_to_the_tokenizer_output(tokenizer):
    chunks = tokenizer.chunks("a photo of a cat")
    np.testing.assert_array_equal(np.asarray(chunks.ids), tokenizer(["a photo of a cat"]))
    assert np.all(np.asarray(chunks.weights) == 1.0)


def test_long_prompts_split_after_a_comma(tokenizer):
    text = ", ".join(["abcd"] * 40)  # char-level BPE: 5 tokens per "abcd, "; 200 tokens
    chunks = tokenizer.chunks(text)
    assert len(chunks.ids) == 3
    assert all(len(ids) == CHUNK_TOKENS + 2 for ids in chunks.ids)
    comma = tokenizer._tok.convert_tokens_to_ids(",</w>")
    first = chunks.ids[0]
    last_real = max(i for i, t in enumerate(first[1:-1], 1) if t != tokenizer.eos_token_id)
    assert first[last_real] == comma  # the cut came right after a comma


def test_emphasis_weights_follow_their_tokens(tokenizer):
    chunks = tokenizer.chunks("a (cat:1.5) [dog]")
    weights = np.asarray(chunks.weights[0])
    assert weights.max() == pytest.approx(1.5)
    assert weights.min() == pytest.approx(1 / 1.1)
