"""Session-wide test environment, set before any test module imports JAX.

One demo-model cache and one persistent XLA compilation cache serve the whole session and the
processes it starts (the gunicorn server, the CLI): the same tiny networks are compiled once
instead of once per process, which is most of the suite's time on a 2-core machine. A developer
may point JAXVIDEO_TEST_CACHE_DIR at a folder to keep both across runs.
"""

import os
import tempfile

_root = os.environ.get("JAXVIDEO_TEST_CACHE_DIR") or tempfile.mkdtemp(prefix="jaxvideo-tests-")
os.environ["JAXVIDEO_TEST_CACHE_DIR"] = _root
os.environ.setdefault("JAXVIDEO_CACHE_DIR", _root)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_root, "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Servers keep their jobs under server.state_dir; tests give each server its own folder, and
# this default keeps any other out of the developer's ~/.cache.
os.environ["JAXVIDEO_STATE_DIR"] = tempfile.mkdtemp(prefix="jaxvideo-state-")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`), keep each test module on one worker (its
    module fixtures, e.g. converted tiny pipelines, are built once) and every end-to-end web
    test on one worker (one real server, not one per worker); modules naming the same
    SERVER_GROUP share a worker too."""
    import pytest

    for item in items:
        path = item.path.as_posix()
        # A web module that starts servers of its own (OWN_SERVERS) need not wait for the rest.
        shared = "/tests/web/" in path and not getattr(item.module, "OWN_SERVERS", False)
        # Modules sharing a server of their own name its group (SERVER_GROUP).
        group = "web" if shared else getattr(item.module, "SERVER_GROUP", path)
        item.add_marker(pytest.mark.xdist_group(group))
