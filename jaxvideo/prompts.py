"""A1111 prompt syntax: emphasis weights and prompts longer than one 77-token CLIP window.

`(word)` multiplies attention by 1.1, `[word]` divides by 1.1, `(word:1.5)` sets 1.5, `\\(`
escapes, and `BREAK` starts a new chunk. Token lists are cut into chunks of 75 tokens (plus
BOS/EOS) — preferring to cut after a comma within the last 20 tokens, as A1111 does — and each
chunk is encoded on its own; the embeddings are concatenated along the sequence.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_ATTENTION = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:", re.X
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
BREAK = ("BREAK", -1.0)


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] with runs of equal weight merged; BREAK marked by weight -1."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i > 0:
                    res.append(list(BREAK))
                res.append([part, 1.0])
    # Unclosed brackets still apply, like A1111.
    for pos in round_open:
        multiply_from(pos, ROUND_MULTIPLIER)
    for pos in square_open:
        multiply_from(pos, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    merged = [res[0]]
    for piece, weight in res[1:]:
        if weight == merged[-1][1] and weight != BREAK[1]:
            merged[-1][0] += piece
        else:
            merged.append([piece, weight])
    return [(p, w) for p, w in merged]


@dataclass
class PromptChunks:
    """Token ids and per-token weights, each a list of chunks of BOS + 75 + EOS = 77 tokens."""

    ids: list[list[int]] = field(default_factory=list)
    weights: list[list[float]] = field(default_factory=list)


def chunk_prompt(
    text: str,
    encode: Callable[[str], list[int]],
    bos: int,
    eos: int,
    pad: int,
    comma: int | None,
) -> PromptChunks:
    """Tokenizes `text` with emphasis and cuts it into 77-token chunks (A1111's algorithm).

    `encode` returns token ids without special tokens. Each chunk is BOS, up to 75 tokens, EOS,
    then `pad` — the same layout a CLIP tokenizer gives one short prompt.
    """
    out = PromptChunks()
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal tokens, weights, last_comma
        fill = CHUNK_TOKENS - len(tokens)
        ids = [bos, *tokens, eos] + [pad] * fill
        out.ids.append(ids)
        out.weights.append([1.0, *weights, 1.0] + [1.0] * fill)
        tokens, weights, last_comma = [], [], -1

    for piece, weight in parse_emphasis(text):
        if (piece, weight) == BREAK:
            close_chunk()
            continue
        for token in encode(piece):
            if token == comma:
                last_comma = len(tokens)
            elif (
                len(tokens) == CHUNK_TOKENS
                and last_comma != -1
                and len(tokens) - last_comma <= COMMA_BACKTRACK
            ):
                # Move the words after the last comma to the next chunk.
                cut = last_comma + 1
                moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close_chunk()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK_TOKENS:
                close_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not out.ids:
        close_chunk()
    return out


def pad_chunk_counts(a: PromptChunks, b: PromptChunks, empty: PromptChunks) -> None:
    """Appends empty chunks to the shorter prompt so both encode to the same length (CFG)."""
    for short, long in ((a, b), (b, a)):
        while len(short.ids) < len(long.ids):
            short.ids.append(list(empty.ids[0]))
            short.weights.append(list(empty.weights[0]))
