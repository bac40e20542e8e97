"""The web page at `/`: plain HTML, CSS and JavaScript modules in `static/`, served as files.

The page is a client of the native async API like any other (capabilities, img_gen/vid_gen,
job polling and cancel); nothing here generates or reads jobs. No build step and no CDN: the
files are the source. Its scripts and styles come from this server only (the Content-Security
Policy below), and pictures and videos are shown from data the page fetched (blob: URLs).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).parent / "static"

bp = Blueprint("ui", __name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _file(name: str) -> Response:
    response = send_from_directory(STATIC, name, max_age=0)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/")
def index() -> Response:
    return _file("index.html")


@bp.get("/ui/<path:name>")
def static_file(name: str) -> Response:
    # send_from_directory refuses names that leave the folder (404).
    return _file(name)
