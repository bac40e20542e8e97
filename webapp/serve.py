"""`jaxvideo-server`: gunicorn serving `webapp:app` with the package's settings
(webapp/gunicorn_conf.py), from whatever folder it is started in. Arguments go to gunicorn
(`jaxvideo-server -b 0.0.0.0:9000`); JAXVIDEO_CONFIG names the serve config."""

from __future__ import annotations

import sys

from gunicorn.app.wsgiapp import WSGIApplication

SETTINGS = "python:webapp.gunicorn_conf"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # gunicorn reads its options from sys.argv; ours come first so the caller's win.
    sys.argv = ["jaxvideo-server", "-c", SETTINGS, *args, "webapp:app"]
    WSGIApplication("%(prog)s [gunicorn options]").run()


if __name__ == "__main__":
    main()
