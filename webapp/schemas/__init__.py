"""Marshmallow schemas, one module per API surface."""
