"""The app of a follower process (1..N-1) of a multi-host slice (jaxvideo.distributed).

Every host runs the same `gunicorn webapp:app`; on a follower the app only answers `/health`
(for the orchestrator) and `/metrics` (its compilations and memory), and refuses every other
route with 421, pointing at process 0, which
owns the API and the job table. Its real work is the follower loop: a thread that runs each
command process 0 publishes, over the global mesh.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask, Response, jsonify, request

from jaxvideo.config import ServeConfig
from webapp.core import metrics
from webapp.core.errors import ApiError, register_error_handlers
from webapp.core.http import install_hooks

# Routes a follower answers itself.
OWN_PATHS = frozenset(("/health", "/metrics"))


def create_follower_app(config: ServeConfig, engine: Any, controller: Any) -> Flask:
    """The follower's app; starts its follower loop on `engine`."""
    app = Flask(__name__)
    app.json.sort_keys = False
    app.extensions["jaxvideo.follower"] = controller
    app.extensions["jaxvideo.waiting_routes"] = frozenset()  # read by webapp/worker.py
    app.extensions[metrics.EXTENSION] = metrics.FollowerMetrics(engine)
    app.register_blueprint(metrics.bp)
    register_error_handlers(app)
    install_hooks(app, config.server.api_key, config.server.cors_origins)
    coordinator = controller.coordinator or "the coordinator's host"

    @app.before_request
    def _only_process_0() -> None:
        if request.path not in OWN_PATHS:
            raise ApiError(
                421,
                "this process follows process 0",
                detail=(
                    f"process {controller.process_id} of {controller.num_processes} of a "
                    f"multi-host slice runs process 0's jobs; send API requests to process 0 "
                    f"({coordinator.rsplit(':', 1)[0]})"
                ),
                code="not_process_0",
                retryable=False,
            )

    @app.get("/health")
    def _health() -> tuple[Response, int]:
        state = controller.describe()
        if controller.broken is not None:
            return jsonify({"status": "unavailable", "role": "follower", **state}), 503
        return jsonify({"status": "ok", "role": "follower", **state}), 200

    loop = threading.Thread(
        target=controller.serve, args=(engine.run_command,), name="jaxvideo-follower", daemon=True
    )
    loop.start()
    return app
