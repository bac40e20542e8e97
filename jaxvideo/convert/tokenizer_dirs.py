"""Local tokenizer folders for single-file conversion: checked, read for special ids, copied.

Single-file checkpoints carry no tokenizer, so the caller names local folders; nothing is ever
fetched from a hub.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from jaxvideo.convert.core import ConversionError

_TOKENIZER_FILES = ("vocab.json", "tokenizer.json")


def read_tokenizer(path: str | Path, flag: str = "--tokenizer") -> dict[str, Any]:
    """The special token ids a CLIP text encoder config needs, plus `tokenizer_size`.

    Ids come from the tokenizer rather than a guessed config so the text encoder pools at the
    tokenizer's real end-of-text token.
    """
    path = Path(path)
    if not path.is_dir() or not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ConversionError(
            f"{flag} {path}: not a tokenizer folder (expected vocab.json + merges.txt, or "
            "tokenizer.json, as in a diffusers model's tokenizer/ folder)"
        )
    from transformers import CLIPTokenizer

    try:
        tok = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many kinds for a malformed folder
        raise ConversionError(f"{flag} {path}: cannot load a CLIP tokenizer: {e}") from None
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tokenizer_size": len(tok),
    }


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
