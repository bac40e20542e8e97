"""Tokenizers loaded from a model folder (never from a hub), and a tiny CLIP BPE for demos.

Real models ship `tokenizer/` (vocab.json + merges.txt); the demo and test models get a
byte-level vocabulary written by `write_tiny_clip_tokenizer`, which the standard
`transformers.CLIPTokenizer` reads like any other.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from jaxvideo.prompts import PromptChunks, chunk_prompt

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    # The GPT-2/CLIP reversible byte -> printable-character table.
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_tiny_clip_tokenizer(out_dir: str | Path, max_length: int = 77) -> int:
    """Writes a character-level CLIP BPE tokenizer (no merges); returns its vocabulary size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS})
    )
    return len(vocab)


class PromptTokenizer:
    """Pads or truncates prompts to the text encoder's fixed context (77 tokens for CLIP)."""

    def __init__(self, tokenizer_dir: str | Path):
        from transformers import CLIPTokenizer

        self._tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.max_length = int(min(self._tok.model_max_length, 77))

    @property
    def eos_token_id(self) -> int:
        return int(self._tok.eos_token_id)

    def chunks(self, text: str) -> PromptChunks:
        """A1111-style emphasis-weighted 77-token chunks (any prompt length)."""
        tok = self._tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        comma = tok.convert_tokens_to_ids(",</w>")
        comma = comma if comma != tok.unk_token_id else None
        return chunk_prompt(
            text,
            lambda piece: tok(piece, add_special_tokens=False, verbose=False)["input_ids"],
            bos=int(tok.bos_token_id),
            eos=int(tok.eos_token_id),
            pad=int(pad),
            comma=comma,
        )

    def __call__(self, prompts: list[str]) -> np.ndarray:
        ids = self._tok(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="np",
        )["input_ids"]
        return ids.astype(np.int32)


@lru_cache(maxsize=8)
def load_tokenizer(tokenizer_dir: str) -> PromptTokenizer:
    return PromptTokenizer(tokenizer_dir)
