"""The server's gunicorn settings, installed with the package so they apply wherever it starts:
`jaxvideo-server` (webapp/serve.py) uses them, as does `gunicorn -c python:webapp.gunicorn_conf
webapp:app`; the repo's gunicorn.conf.py imports them for a bare `gunicorn webapp:app` there.

One worker process owns the accelerators (a second would load every model again and fight
over device memory); concurrency comes from threads, and generation itself is serialised by
the job table. Command-line flags (`-b`, `--threads`, ...) override these values.
"""

from __future__ import annotations

import logging
import os
import sys

bind = os.environ.get("JAXVIDEO_BIND", "127.0.0.1:8000")
workers = 1
# gthread, reading each request whole before a thread serves it, with a separate pool for
# control routes and a draining stop (webapp/worker.py).
worker_class = "webapp.worker.JaxvideoWorker"
threads = 8  # for generation routes; control routes have their own
# The arbiter kills a worker silent for this long; the worker also needs it to load the models
# (and build the demo ones) before it first reports in, so keep it generous.
timeout = 600
graceful_timeout = 30
keepalive = 5
# gunicorn 27's control socket lives at one per-user path; two servers on a host (tests, dev)
# would fight over it, and nothing here uses it.
control_socket_disable = True


def _webapp():
    """The webapp module if this worker imported it (hooks must not build an app)."""
    return sys.modules.get("webapp")


def worker_int(worker):
    module = _webapp()
    if module is not None:
        module.close_intake()


def worker_exit(server, worker):
    # The worker drained on SIGTERM (webapp/worker.py); on any other exit stop the job thread
    # now. A thread stuck inside XLA (compiling) cannot be interrupted, and letting the
    # interpreter tear down around it aborts the process, so leave without finalisation.
    module = _webapp()
    if module is not None and not module.shutdown(drain_s=0.0, join_s=2.0):
        logging.shutdown()
        os._exit(0)
