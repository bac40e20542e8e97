"""The jaxvideo Flask app: `create_app(config, engine)`, and `webapp:app` for gunicorn.

`app` is created lazily on first attribute access (module `__getattr__`), so importing
`webapp` in tests or tools loads no models; `gunicorn webapp:app` creates it in the worker.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Blueprint, Flask

from jaxvideo import compile_events
from jaxvideo.config import ServeConfig, load_config
from webapp.core import admin, health, metrics
from webapp.core.capabilities import Capabilities
from webapp.core.errors import register_error_handlers
from webapp.core.follower import create_follower_app
from webapp.core.http import install_hooks, waiting_routes
from webapp.core.jobs import PROCESS_LOST, JobTable
from webapp.core.openapi import build_openapi
from webapp.core.service import Service
from webapp.core.store import JobStore
from webapp.openai import images, videos
from webapp.sdapi import routes as sdapi
from webapp.sdcpp import routes as sdcpp
from webapp.ui import bp as ui_bp

__all__ = ["create_app", "close_intake", "shutdown"]

log = logging.getLogger(__name__)

_app: Flask | None = None
_app_lock = threading.Lock()

# One blueprint per surface (the OpenAI one in two: images and videos), and what
# /openapi.json documents, route by route.
BLUEPRINTS: tuple[Blueprint, ...] = (
    health.bp,
    metrics.bp,
    admin.bp,
    images.bp,
    videos.bp,
    sdapi.bp,
    sdcpp.bp,
    ui_bp,  # the web page at / (not an API: not in /openapi.json)
)
ROUTE_DOCS = (
    *health.DOCS,
    *metrics.DOCS,
    *admin.DOCS,
    *images.DOCS,
    *videos.DOCS,
    *sdapi.DOCS,
    *sdcpp.DOCS,
)


def create_app(config: ServeConfig | None = None, engine: Any = None) -> Flask:
    """Builds the app: loads `config` (default: `load_config()`), builds the engine (loading
    every configured model) unless one is given, and starts the job worker."""
    _configure_logging()
    config = config or load_config()
    compile_events.install()  # /metrics counts XLA compilations from here on
    if engine is None:
        # JAX is imported only when an app is really built.
        from jaxvideo import distributed
        from jaxvideo.engine import Engine

        # Several hosts: join them before JAX touches a device (no-op unless configured).
        controller = distributed.initialize(config.distributed)
        log.info("loading %d model(s) from %s", len(config.models), config.source)
        engine = Engine(config, controller)
        if controller is not None and not controller.is_leader:
            return create_follower_app(config, engine, controller)
    server = config.server
    jobs = JobTable(
        max_queue_size=server.max_queue_size,
        job_retention_s=server.job_retention_s,
        expired_retention_s=server.expired_retention_s,
        store=None if server.state_dir is None else JobStore(server.state_dir),
    )
    caps = Capabilities.serving(server, engine.models)
    service = Service(config, engine, jobs, caps)
    service.check_operator_defaults()
    jobs.observer = observed = metrics.Metrics(service)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = server.max_body_bytes
    app.json.sort_keys = False  # keep the documented field order in responses
    app.extensions["jaxvideo"] = service
    app.extensions[metrics.EXTENSION] = observed
    app.extensions["jaxvideo.openapi"] = build_openapi(
        ROUTE_DOCS, service.version, auth=bool(server.api_key)
    )
    register_error_handlers(app)
    install_hooks(app, server.api_key, server.cors_origins)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.extensions["jaxvideo.waiting_routes"] = waiting_routes(app)  # read by webapp/worker.py
    jobs.restore(service.rebuild, service.reload)  # what the last run left: resumed or readable
    controller = getattr(engine, "controller", None)
    if controller is not None:  # process 0 of a slice: a lost process halts the job table
        controller.on_broken(lambda reason: jobs.halt({"code": PROCESS_LOST, "message": reason}))
        controller.start()
    jobs.start()
    log.info("serving models: %s", ", ".join(m.name for m in service.models))
    if server.lora_dir is not None and not os.path.isdir(server.lora_dir):
        # Not fatal: the folder may be mounted later; until then every LoRA name answers 400.
        log.warning("server.lora_dir %s is not a directory; no LoRA can be found", server.lora_dir)
    return app


def get_app() -> Flask:
    """The process-wide app behind `webapp:app`, created on first use."""
    global _app
    with _app_lock:
        if _app is None:
            _app = create_app()
        return _app


def close_intake() -> None:
    """New submissions answer 503 from now on (gunicorn calls this when the worker is told
    to stop); accepted jobs keep running. Safe to call from a signal handler."""
    if _app is not None and "jaxvideo" in _app.extensions:
        _app.extensions["jaxvideo"].jobs.close_intake()


def shutdown(drain_s: float = 0.0, join_s: float = 5.0) -> bool:
    """Stops the job table of the process-wide app, if one was created; False when its worker
    thread is still busy after `join_s`."""
    if _app is None:
        return True
    if "jaxvideo.follower" in _app.extensions:  # a follower: its loop may be inside XLA
        _app.extensions["jaxvideo.follower"].stop()
        return False
    return _app.extensions["jaxvideo"].jobs.shutdown(drain_s=drain_s, join_s=join_s)


def __getattr__(name: str) -> Any:
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _configure_logging() -> None:
    # Under gunicorn or a bare interpreter nothing is configured; tests configure their own.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
