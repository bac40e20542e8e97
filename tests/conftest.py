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
