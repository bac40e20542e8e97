"""Where a request ends in the bytes received so far (webapp/framing.py): the server worker
dispatches a request only once it is whole, and hands anything it cannot frame to gunicorn's
parser at once."""

from __future__ import annotations

import pytest

from webapp.framing import request_end

HEAD = 64 * 1024
BODY = 1000


def frame(data: bytes, max_body: int | None = BODY):
    return request_end(bytearray(data), HEAD, max_body)


def test_a_bodyless_request_ends_after_its_head():
    data = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    framing = frame(data + b"GET /next")  # a pipelined second request stays for later
    assert framing.end == len(data)
    assert (framing.method, framing.path) == ("GET", "/health")


def test_a_head_arriving_line_by_line_is_incomplete_until_its_blank_line():
    data = b"POST /sdcpp/v1/img_gen?x=1 HTTP/1.1\r\nHost: x\r\n"
    framing = frame(data)
    assert framing.end is None and not framing.head_done
    assert framing.path == "/sdcpp/v1/img_gen"  # the route is known from the request line on
    assert frame(b"POS").path is None


@pytest.mark.parametrize("header", [b"Content-Length: 10", b"content-length:10"])
def test_content_length_bodies_end_after_that_many_bytes(header):
    head = b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n"
    partial = frame(head + b"0123")
    assert partial.end is None and partial.head_done and partial.wanted == len(head) + 10
    assert frame(head + b"0123456789tail").end == len(head) + 10


def test_expect_100_continue_is_noticed():
    head = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    assert frame(head).expects_continue and frame(head).end is None


def test_chunked_bodies_end_after_the_last_chunk_and_trailers():
    head = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n"
    for cut in range(len(body)):
        assert frame(head + body[:cut]).end is None, cut
    assert frame(head + body + b"GET /").end == len(head + body)
    trailer = b"0\r\nX-Sum: 1\r\n\r\n"
    assert frame(head + b"1\r\na\r\n" + trailer).end == len(head) + 6 + len(trailer)


@pytest.mark.parametrize(
    "data",
    [
        # what the parser must refuse is handed over at once, not waited on
        b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX",
        # over the body limit: the app answers 413 without reading it
        b"POST /x HTTP/1.1\r\nContent-Length: 1001\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n",
    ],
)
def test_unframeable_or_oversized_requests_are_handed_over_now(data):
    assert frame(data).end == len(data)


def test_a_head_past_the_limit_is_handed_over_for_the_parser_to_refuse():
    data = b"GET /" + b"a" * HEAD + b" HTTP/1.1\r\n"
    assert frame(data).end == len(data)
    assert frame(b"GET /" + b"a" * 100).end is None
