"""Where one HTTP/1.1 request ends in the bytes received so far, without parsing more of it than
that: the server worker (webapp/worker.py) reads requests whole before a thread serves them, so
a client that trickles bytes holds no thread.

`request_end` answers "complete here", "need more" or "hand it over now": a request this module
cannot frame (malformed, over a size limit) goes to gunicorn's own parser, which answers it with
the right 4xx. Nothing here decides what is valid; it only decides when to stop waiting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect[ \t]*:[ \t]*100-continue[ \t]*\r\n", re.IGNORECASE)
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})(;[^\r\n]*)?\r\n")


@dataclass(frozen=True)
class Framing:
    """What the bytes received so far say about the first request in them."""

    end: int | None  # offset just past the request; None: more bytes are needed
    head_done: bool  # the request line and headers are in
    method: str | None
    path: str | None
    expects_continue: bool  # the client waits for "100 Continue" before sending its body
    wanted: int | None = None  # while incomplete: the length the request will have, if known


def request_end(data: bytes, max_head: int, max_body: int | None) -> Framing:
    """Frames the first request in `data`. A request whose head exceeds `max_head` bytes, or
    whose body announces or reaches more than `max_body`, is "complete" at once: the parser and
    the app refuse it (414/431/413) without waiting for bytes they would not read."""
    method, path = _request_target(data)
    head_end = data.find(_HEADER_END)
    if head_end < 0:
        over = len(data) > max_head
        return Framing(len(data) if over else None, False, method, path, False)
    head = data[: head_end + 2]  # keeps the last header's CRLF for the patterns
    body_start = head_end + len(_HEADER_END)
    expects = bool(_EXPECT_CONTINUE.search(head))
    done = Framing(len(data), True, method, path, expects)  # "hand it over now"

    if _TRANSFER_ENCODING.search(head):
        end = _chunked_end(data, body_start, max_body)
        return replace(done, end=end)
    lengths = _CONTENT_LENGTH.findall(head)
    if not lengths:
        return Framing(body_start, True, method, path, expects)
    if len(set(lengths)) > 1 or not lengths[0].strip().isdigit():
        return done  # ambiguous or malformed: the parser answers 400
    length = int(lengths[0])
    if max_body is not None and length > max_body:
        return done  # the app answers 413 from the header alone
    if len(data) - body_start >= length:
        return Framing(body_start + length, True, method, path, expects)
    return replace(done, end=None, wanted=body_start + length)


def _chunked_end(data: bytes, start: int, max_body: int | None) -> int | None:
    """Offset past a chunked body starting at `start`, None while incomplete; an unframeable
    or oversized body is "complete" where the data ends, for the parser or app to refuse."""
    position, body = start, 0
    while True:
        match = _CHUNK_SIZE.match(data, position)
        if match is None:
            # Incomplete size line, or garbage: wait while it could still become a size line.
            rest = data[position:]
            return None if len(rest) < 64 and _could_be_size_line(rest) else len(data)
        size = int(match.group(1), 16)
        position = match.end()
        body += size
        if max_body is not None and body > max_body:
            return len(data)
        if size == 0:
            return _trailers_end(data, position)
        if len(data) < position + size + 2:
            return None
        if data[position + size : position + size + 2] != b"\r\n":
            return len(data)
        position += size + 2


def _could_be_size_line(rest: bytes) -> bool:
    return b"\r\n" not in rest and (not rest or rest[:1] in b"0123456789abcdefABCDEF")


def _trailers_end(data: bytes, position: int) -> int | None:
    """Past the (usually empty) trailer section that ends a chunked body."""
    if data.startswith(b"\r\n", position):
        return position + 2
    end = data.find(_HEADER_END, position)
    return None if end < 0 else end + len(_HEADER_END)


def _request_target(data: bytes) -> tuple[str | None, str | None]:
    """(method, path) from a complete request line, else (None, None)."""
    line_end = data.find(b"\r\n")
    if line_end < 0:
        return None, None
    parts = data[:line_end].split(b" ")
    if len(parts) != 3:
        return None, None
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None, None
    return method, target.split("?", 1)[0]
