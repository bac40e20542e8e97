"""Tokenizers loaded from a model folder (never from a hub), and a tiny CLIP BPE for demos.

Real models ship `tokenizer/` (vocab.json + merges.txt); the demo and test models get a
byte-level vocabulary written by `write_tiny_clip_tokenizer`, which the standard
`transformers.CLIPTokenizer` reads like any other.
"""

from __future__ import annotations

import html
import json
import re
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


def write_tiny_clip_tokenizer(
    out_dir: str | Path, max_length: int = 77, words: tuple[str, ...] = ()
) -> int:
    """Writes a character-level CLIP BPE tokenizer; returns its vocabulary size. Each of
    `words` (lowercase) gets merges that make it one token (a trained demo model's
    vocabulary); every other word is spelled character by character."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    merges = _word_merges(words)
    tokens += list(dict.fromkeys(a + b for a, b in merges))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (out / "merges.txt").write_text("\n".join(lines) + "\n")
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


def _word_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """BPE merges building each word left to right. Longer words first: their merges then
    rank before the shorter words' and a shared prefix cannot split a long word."""
    merges: dict[tuple[str, str], None] = {}
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        parts = [*word[:-1], word[-1] + "</w>"]
        built = parts[0]
        for part in parts[1:]:
            merges[(built, part)] = None
            built += part
    return list(merges)


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


# T5's special-token layout (sentencepiece ids): <pad> 0, </s> 1, <unk> 2.
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
_METASPACE = "\u2581"  # sentencepiece's word-boundary marker "▁"


def _tiny_t5_pieces(vocab_size: int) -> list[str]:
    """Single printable-ASCII characters, then word-initial ones, then lowercase pairs."""
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    lower = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [_METASPACE] + chars + [_METASPACE + c for c in chars]
    pieces += [a + b for a in lower for b in lower]
    least, most = len(chars) + 4, len(pieces) + 3
    if not least <= vocab_size <= most:
        raise ValueError(f"tiny T5 vocab_size must be in [{least}, {most}], got {vocab_size}")
    return pieces[: vocab_size - 3]


def write_tiny_t5_tokenizer(
    out_dir: str | Path, vocab_size: int = 256, words: tuple[str, ...] = ()
) -> int:
    """Writes a small T5-style Unigram tokenizer folder (no download); returns its vocab size.

    Built with the `tokenizers` library like transformers' `T5Tokenizer` (Metaspace
    pre-tokenizer, `</s>` appended) so `AutoTokenizer` loads it as a T5 fast tokenizer.
    Characters outside printable ASCII map to `<unk>`. Each of `words` gets a piece of its
    own (after the `vocab_size` ones), so it is one token (a trained demo model's vocabulary);
    every other word is spelled in characters and pairs.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces = _tiny_t5_pieces(vocab_size)
    # Log-probabilities: a longer piece beats spelling it out, so pairs are used when present.
    vocab = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0)]
    vocab += [(p, -10.0 - len(p)) for p in pieces]
    # A whole word scores above any spelling of it, so Unigram picks it.
    known = {p for p, _ in vocab}
    vocab += [(w, -1.0) for w in dict.fromkeys(_METASPACE + w for w in words) if w not in known]
    tok = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", T5_EOS],
        pair=["$A", T5_EOS, "$B", T5_EOS],
        special_tokens=[(T5_EOS, 1)],
    )
    tok.add_special_tokens([T5_PAD, T5_EOS, T5_UNK])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": 512,
        "eos_token": T5_EOS,
        "pad_token": T5_PAD,
        "unk_token": T5_UNK,
        "extra_ids": 0,
        "additional_special_tokens": [],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": T5_EOS, "pad_token": T5_PAD, "unk_token": T5_UNK})
    )
    return tok.get_vocab_size()


def t5_prompt_clean(text: str) -> str:
    """diffusers' (and the Wan release's) `prompt_clean`: ftfy's mojibake repair, html-unescape
    twice, collapse whitespace."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


@lru_cache(maxsize=8)
def _load_t5_tokenizer(tokenizer_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


def t5_token_ids(
    tokenizer_dir: str | Path, prompts: list[str], max_length: int = 512, clean: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, int32 (B, max_length), as Wan's `_get_t5_prompt_embeds`.

    Prompts are cleaned (Wan; Flux and SD3 pass them as they are: `clean=False`), `</s>`
    appended, truncated and padded with `<pad>` to `max_length`.
    """
    tok = _load_t5_tokenizer(str(tokenizer_dir))
    encoded = tok(
        [t5_prompt_clean(p) if clean else p for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="np",
    )
    return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int32)
