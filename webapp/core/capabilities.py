"""What translated requests are checked against: the configured limits and the sampler and
schedule names the served models know (all of them while parsing, one model's afterwards)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from jaxvideo.config import ServerConfig
from jaxvideo.results import ModelInfo


@dataclass(frozen=True)
class Capabilities:
    """`samplers`/`schedulers`: every name some served model knows (what a request may name
    before its model is known); `for_model` narrows them to one model's own."""

    samplers: tuple[str, ...]
    schedulers: tuple[str, ...]
    limits: ServerConfig

    @classmethod
    def serving(cls, limits: ServerConfig, models: Iterable[ModelInfo]) -> Capabilities:
        """The union of the served models' names, in the order the models list them."""
        models = list(models)
        return cls(
            tuple(dict.fromkeys(s for m in models for s in m.samplers)),
            tuple(dict.fromkeys(s for m in models for s in m.schedulers)),
            limits,
        )

    def for_model(self, info: ModelInfo) -> Capabilities:
        """The names `info` really supports."""
        return replace(self, samplers=info.samplers, schedulers=info.schedulers)
