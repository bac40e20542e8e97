"""Exceptions the library raises towards its callers (the web layer maps them to statuses)."""


class JaxVideoError(Exception):
    """Base class."""


class InvalidRequest(JaxVideoError, ValueError):
    """The request cannot be served as asked (bad field, unknown model, out of limits)."""


class Cancelled(JaxVideoError):
    """Generation was stopped because the caller asked for it."""
