"""One blueprint per API surface (openai, sdapi, sdcpp) plus health and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint

from webapp.api import health, openai, sdapi, sdcpp

BLUEPRINTS: tuple[Blueprint, ...] = (health.bp, openai.bp, sdapi.bp, sdcpp.bp)
# What /openapi.json documents, route by route.
ROUTE_DOCS = (*health.DOCS, *openai.DOCS, *sdapi.DOCS, *sdcpp.DOCS)
