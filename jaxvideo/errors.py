"""Exceptions the library raises towards its callers (the web layer maps them to statuses)."""

from __future__ import annotations


class JaxVideoError(Exception):
    """Base class."""


class InvalidRequest(JaxVideoError, ValueError):
    """The request cannot be served as asked (bad field, unknown model, out of limits).

    `field` names the GenerationRequest field at fault when there is one, so a surface can
    name its own spelling of it (`sample_params.sample_method` for `sampler`)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Cancelled(JaxVideoError):
    """Generation was stopped because the caller asked for it."""
