"""A1111's options (`/sdapi/v1/options`): only `sd_model_checkpoint` means something here, the
model sdapi requests naming none get. Kept in process memory, like the job table."""

from __future__ import annotations

import threading

from flask import current_app

from webapp.core.errors import invalid
from webapp.core.service import Service
from webapp.sdapi.translate import model_name

EXTENSION = "jaxvideo.sdapi"


class SdapiOptions:
    def __init__(self) -> None:
        self._model: str | None = None
        self._lock = threading.Lock()

    def model(self, svc: Service) -> str:
        """The default model of the sdapi surface: the switched one, else the server's."""
        with self._lock:
            return self._model or svc.default_model()

    def switch_model(self, svc: Service, title: str) -> str:
        """Switches the sdapi default model to a served model, by name or A1111 title."""
        name = model_name(title)
        served = [m.name for m in svc.models]
        if name not in served:
            raise invalid(
                "sd_model_checkpoint",
                f"unknown model {title!r}; served: {', '.join(served)}",
                "model_not_found",
            )
        with self._lock:
            self._model = name
        return name


def sdapi_options() -> SdapiOptions:
    """The options of the app handling the current request (made when the blueprint is
    registered)."""
    return current_app.extensions[EXTENSION]
