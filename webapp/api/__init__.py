"""One blueprint per API surface (openai, videos, sdapi, sdcpp) plus health and the OpenAPI
document."""

from __future__ import annotations

from flask import Blueprint

from webapp.api import health, openai, sdapi, sdcpp, videos

BLUEPRINTS: tuple[Blueprint, ...] = (health.bp, openai.bp, videos.bp, sdapi.bp, sdcpp.bp)
# What /openapi.json documents, route by route.
ROUTE_DOCS = (*health.DOCS, *openai.DOCS, *videos.DOCS, *sdapi.DOCS, *sdcpp.DOCS)
