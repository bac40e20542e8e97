"""Which Flax parameter a LoRA module name modifies, through the component's conversion rules.

The rules map PyTorch keys to Flax paths; a LoRA names PyTorch modules. For dotted names the
forward rules answer directly. kohya names are underscore-joined (`..._attn1_to_out_0`) and
cannot be split by guessing, so the table here runs the rules backwards: every Flax kernel is
mapped back to the PyTorch key(s) that produce it (each candidate is re-checked forwards, so
the inversion can only drop names, never invent them), and those names' underscore forms are
looked up exactly. LDM/SGM-style UNet names (`input_blocks_4_1_...`, as SDXL kohya files and
some SD1 ones use) are added as aliases computed from the UNet's own block layout.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from jaxvideo.convert.core import Rule, map_key

_GROUP_REF = re.compile(r"\\(\d+)")
_REGEX_CLASS_ESCAPES = set("dDwWsSbBAZz0123456789")
_META = set(".^$*+?{}[]|")


def _compile(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], Rule]]:
    return [(re.compile(r.pattern), r) for r in rules]


@dataclass(frozen=True)
class Target:
    """One LoRA-modifiable parameter: Flax path, the rule's transform and the Flax shape."""

    flax_path: str
    transform: str
    shape: tuple[int, ...]


@dataclass
class ModuleTable:
    """PyTorch module names (dotted, and kohya underscore forms) -> the kernel they own."""

    dotted: dict[str, Target] = field(default_factory=dict)
    underscore: dict[str, Target | None] = field(default_factory=dict)  # None: ambiguous

    def add_underscore(self, name: str, target: Target) -> None:
        key = name.replace(".", "_")
        if key in self.underscore and self.underscore[key] != target:
            self.underscore[key] = None  # two modules flatten to one name; refuse, never guess
        else:
            self.underscore[key] = target


def _closing(pattern: str, start: int) -> int:
    """Index of the `)` closing the group that opens at `start`."""
    depth, i, in_class = 0, start, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced pattern {pattern!r}")


def _instantiate(pattern: str, groups: dict[int, str], first: int = 1) -> list[str] | None:
    """All literal strings `pattern` matches once its capturing groups are fixed to `groups`.

    Handles what conversion rules use: escapes, captured groups, `(?:literal|...)` and
    `(?:literal)?`. Anything else (a bare `.*`, a class) returns None: not invertible.
    """
    options: list[list[str]] = []
    number = first
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1]
            if nxt in _REGEX_CLASS_ESCAPES:
                return None
            options.append([nxt])
            i += 2
        elif c == "(":
            end = _closing(pattern, i)
            inner = pattern[i + 1 : end]
            quantifier = pattern[end + 1] if end + 1 < len(pattern) else ""
            if not inner.startswith("?"):  # capturing: replaced by what the Flax path held
                if number not in groups or quantifier in ("?", "*", "+", "{"):
                    return None
                options.append([groups[number]])
                number += 1 + re.compile(inner).groups
            elif inner.startswith("?:"):
                if re.compile(inner[2:]).groups:
                    return None
                alternatives: list[str] = []
                for alt in _split_alternatives(inner[2:]):
                    got = _instantiate(alt, {})
                    if got is None:
                        return None
                    alternatives.extend(got)
                if quantifier == "?":
                    alternatives = ["", *alternatives]
                elif quantifier in ("*", "+", "{"):
                    return None
                options.append(alternatives)
            else:
                return None
            i = end + (2 if quantifier == "?" else 1)
        elif c in _META:
            return None
        else:
            options.append([c])
            i += 1
    return ["".join(parts) for parts in itertools.product(*options)]


def _split_alternatives(pattern: str) -> list[str]:
    """Top-level `|` split (rule patterns keep alternations inside their own groups)."""
    out, depth, start, i = [], 0, 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    out.append(pattern[start:])
    return out


def _torch_keys(
    flax_path: str, rules: Sequence[Rule], compiled: list[tuple[re.Pattern[str], Rule]]
) -> list[str]:
    found: list[str] = []
    for rule in rules:
        parts = _GROUP_REF.split(rule.target)
        regex, seen = [], set()
        for j, part in enumerate(parts):
            if j % 2 == 0:
                regex.append(re.escape(part))
            elif part in seen:
                regex.append(f"(?P=g{part})")
            else:
                seen.add(part)
                regex.append(f"(?P<g{part}>.*?)")
        m = re.fullmatch("".join(regex), flax_path)
        if m is None:
            continue
        groups = {int(name[1:]): value for name, value in m.groupdict().items()}
        for key in _instantiate(rule.pattern, groups) or ():
            mapped = map_key(key, compiled)
            if mapped is not None and mapped[0] == flax_path and key not in found:
                found.append(key)
    return found


# --- LDM / SGM UNet names ---------------------------------------------------------------------

_RESNET_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP_LDM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_BLOCK = re.compile(
    r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.|$)"
)


def ldm_prefixes(modules: Sequence[str]) -> dict[str, str]:
    """diffusers block prefix -> LDM prefix, from the block layout the module names show.

    LDM numbers `input_blocks` / `output_blocks` consecutively: each (resnet, attention) layer
    is one block (`.0` resnet, `.1` attention); a down block's downsampler is a block of its
    own (`.0.op`), an up block's upsampler sits in its last layer after the attention.
    """
    layout: dict[tuple[str, int], dict[str, set[int]]] = {}
    for name in modules:
        m = _BLOCK.match(name)
        if m:
            kinds = layout.setdefault((m[1], int(m[2])), {})
            kinds.setdefault(m[3], set()).add(int(m[4]))
    out = dict(_TOP_LDM)
    for side, ldm, first in (("down_blocks", "input_blocks", 1), ("up_blocks", "output_blocks", 0)):
        index = first
        for b in sorted(i for s, i in layout if s == side):
            kinds = layout[(side, b)]
            n = max(kinds.get("resnets", {-1})) + 1
            for layer in range(n):
                out[f"{side}.{b}.resnets.{layer}"] = f"{ldm}.{index}.0"
                if "attentions" in kinds:
                    out[f"{side}.{b}.attentions.{layer}"] = f"{ldm}.{index}.1"
                if side == "up_blocks" and layer == n - 1 and "upsamplers" in kinds:
                    slot = 2 if "attentions" in kinds else 1
                    out[f"{side}.{b}.upsamplers.0.conv"] = f"{ldm}.{index}.{slot}.conv"
                index += 1
            if side == "down_blocks" and "downsamplers" in kinds:
                out[f"{side}.{b}.downsamplers.0.conv"] = f"{ldm}.{index}.0.op"
                index += 1
    has_mid_attention = any(n.startswith("mid_block.attentions.0.") for n in modules)
    out["mid_block.resnets.0"] = "middle_block.0"
    if has_mid_attention:
        out["mid_block.attentions.0"] = "middle_block.1"
    out["mid_block.resnets.1"] = f"middle_block.{2 if has_mid_attention else 1}"
    return out


def ldm_name(module: str, prefixes: dict[str, str]) -> str | None:
    """The LDM spelling of a diffusers UNet module name, or None outside the mapped blocks."""
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in prefixes:
            rest = parts[cut:]
            if ".resnets." in f".{head}." and rest:
                rest = _RESNET_LDM.get(".".join(rest), ".".join(rest)).split(".")
            return ".".join([prefixes[head], *rest])
    return None


# --- the table --------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def module_table(
    rules: tuple[Rule, ...], kernels: tuple[tuple[str, tuple[int, ...]], ...]
) -> ModuleTable:
    """Module table for a component whose LoRA-targetable kernels are `kernels` (path, shape)."""
    table = ModuleTable()
    compiled = _compile(rules)
    for flax_path, shape in kernels:
        for key in _torch_keys(flax_path, rules, compiled):
            if not key.endswith(".weight"):
                continue
            module = key[: -len(".weight")]
            transform = map_key(key, compiled)[1]  # type: ignore[index]
            target = Target(flax_path, transform, shape)
            table.dotted[module] = target
            table.add_underscore(module, target)
    if any(m.startswith(("down_blocks.", "mid_block.")) for m in table.dotted):
        prefixes = ldm_prefixes(list(table.dotted))
        for module, target in list(table.dotted.items()):
            alias = ldm_name(module, prefixes)
            if alias is not None and alias != module:
                table.add_underscore(alias, target)
    return table
