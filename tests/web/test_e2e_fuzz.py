"""Schema fuzzing of every route with schemathesis, generated from the server's own OpenAPI
document, against the real server: no 5xx, every error in its surface's documented envelope,
every response as documented, and requests the schema forbids refused.

The server is this module's own, with tight limits so the requests the fuzzer makes valid stay
cheap (a 128 px, 4-step, one-megapixel-step budget), and a short job queue. Requests valid by
the schema may still be refused: whether they fit depends on the served models and the limits
(docs/RELIABILITY.md), so schemathesis' positive-acceptance check is left out.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from tests.support.serving import serve
from webapp import ROUTE_DOCS
from webapp.core.openapi import build_openapi

OWN_SERVERS = True
# Examples per operation and mode (valid and invalid data); a deeper run sets the variable.
EXAMPLES = int(os.environ.get("JAXVIDEO_FUZZ_EXAMPLES", "40"))

CONFIG = """\
models:
  - {name: sd1-tiny-demo, family: sd1, path: "demo:sd1-tiny", dtype: fp32}
  - {name: wan-tiny-demo, family: wan21, path: "demo:wan-tiny"}
server:
  max_queue_size: 8
  job_retention_s: 60
  max_width: 128
  max_height: 128
  max_steps: 4
  max_batch_count: 2
  max_work: 1
  max_body_bytes: 1048576
default_request: {steps: 1, width: 64, height: 64, num_frames: 5}
"""

# Invalid data must be refused; a URI or headers too long for the server are refused too.
REFUSALS = [400, 401, 403, 404, 405, 406, 409, 413, 414, 415, 422, 428, 429, 431]
schema = schemathesis.openapi.from_dict(
    build_openapi(ROUTE_DOCS, "fuzz", auth=False),
    config=schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}}
    ),
)
# Parametrized by hand: schemathesis' own pytest plugin names every case alike under pytest 9.
OPERATIONS = [result.ok() for result in schema.get_all_operations()]
JSON = "application/json"


def negatable(operation) -> bool:
    """Invalid data is sent as JSON or query strings: a multipart form carries every value as
    text, so "an object where a string belongs" cannot be told from a string there."""
    return len(operation.query) > 0 or any(body.media_type == JSON for body in operation.body)


# Valid data for every operation; invalid data where a JSON body or a query can be made invalid.
CASES = [
    pytest.param(operation, mode, id=f"{mode.value}-{operation.label}")
    for operation in OPERATIONS
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or negatable(operation)
]
STATUSES: Counter[int] = Counter()  # every fuzzed response, for the summary at the end


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, e2e_cache_dir):
    root = tmp_path_factory.mktemp("fuzz")
    config = root / "serve.yaml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "JAXVIDEO_API_KEY"}
    env["JAXVIDEO_CACHE_DIR"] = str(e2e_cache_dir)
    with serve(config, root, env) as handle:
        yield handle
    print(f"fuzzed {sum(STATUSES.values())} requests: {dict(sorted(STATUSES.items()))}")
    log = handle.log.read_text()
    assert "Traceback" not in log, log[-4000:]


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_fuzzed_requests_get_documented_answers(operation, mode, fuzz_server):
    cases = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.NEGATIVE and len(operation.body) > 0:
        cases = cases.filter(lambda case: case.media_type == JSON)

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same requests every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def answered_as_documented(case):
        response = case.call_and_validate(
            base_url=fuzz_server.url,
            session=fuzz_server.http,
            excluded_checks=[positive_data_acceptance],
            timeout=60,
        )
        STATUSES[response.status_code] += 1

    answered_as_documented()
