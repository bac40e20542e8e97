"""gunicorn reads this file from the folder it starts in: a bare `gunicorn webapp:app` run from
the repo gets the server's settings, which live in the package (webapp/gunicorn_conf.py) so that
`jaxvideo-server` and `gunicorn -c python:webapp.gunicorn_conf webapp:app` get them anywhere."""

from webapp.gunicorn_conf import *  # noqa: F403
