"""The object every blueprint shares: config, engine, job table, and image jobs built on them.

`resolve` applies the merge precedence and the configured limits; `submit_images` queues a job
that runs `Engine.generate` and encodes the frames in the worker thread, so a finished job holds
ready-to-send bytes; `generate_images` is the synchronous variant (submit, then wait).
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from flask import current_app

from jaxvideo.config import ConfigError, ServeConfig
from jaxvideo.errors import InvalidRequest
from jaxvideo.media import encode_image
from jaxvideo.request import GenerationRequest, build_request
from jaxvideo.results import ModelInfo
from webapp import a1111
from webapp.errors import ApiError, invalid
from webapp.hires_fields import resolve_hires
from webapp.jobs import CANCELLED, CANCELLED_BY_SHUTDOWN, COMPLETED, JobTable, JobView
from webapp.lora_fields import check_high_noise
from webapp.tiling_fields import resolve_tiling
from webapp.translate import Capabilities, OutputOptions, check_request, image_fields


@dataclass(frozen=True)
class EncodedImage:
    index: int
    data: bytes
    seed: int


@dataclass(frozen=True)
class ImageResult:
    """A finished image job: encoded files plus what the surfaces echo back."""

    images: list[EncodedImage]
    output_format: str
    request: GenerationRequest
    model: str
    infotexts: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    img2img: bool = False  # the request had an init image (`request` drops the pixels)


class Service:
    def __init__(self, config: ServeConfig, engine: Any, jobs: JobTable, caps: Capabilities):
        self.config = config
        self.engine = engine
        self.jobs = jobs
        self.caps = caps
        self.version = jaxvideo_version()
        # A1111's `sd_model_checkpoint` option (POST /sdapi/v1/options): the model sdapi
        # requests naming none get. Process memory, like the job table.
        self._sdapi_model: str | None = None
        self._options_lock = threading.Lock()

    @property
    def models(self) -> list[ModelInfo]:
        return list(self.engine.models)

    def model_info(self, name: str | None) -> ModelInfo:
        try:
            return self.engine.model_info(name)
        except InvalidRequest as exc:  # the engine's message names the served models
            raise invalid("model", str(exc), code="model_not_found") from exc

    def family_defaults(self, model: str) -> dict[str, Any]:
        return dict(self.engine.family_defaults(model))

    def default_model(self) -> str:
        """The model requests naming none get: the operator's choice, else the first one."""
        return self.model_info(self.config.default_request.get("model")).name

    def sdapi_model(self) -> str:
        """The default model of the sdapi surface (switchable through its options)."""
        with self._options_lock:
            return self._sdapi_model or self.default_model()

    def set_sdapi_model(self, title: str) -> str:
        """Switches the sdapi default model to a served model, by name or A1111 title."""
        name = a1111.model_name(title)
        served = [m.name for m in self.models]
        if name not in served:
            raise invalid(
                "sd_model_checkpoint",
                f"unknown model {title!r}; served: {', '.join(served)}",
                "model_not_found",
            )
        with self._options_lock:
            self._sdapi_model = name
        return name

    def resolve(
        self, fields: Mapping[str, Any], names: Mapping[str, str] | None = None
    ) -> GenerationRequest:
        """Client fields > operator `default_request` > family defaults, then the limits.

        An init image's size stands in for a width/height the client did not send."""
        info = self.model_info(fields.get("model", self.config.default_request.get("model")))
        mode = fields.get("mode", "img_gen")
        if mode not in info.modes:
            raise invalid("model", f"model {info.name!r} cannot serve {mode}", code="wrong_mode")
        client = {**image_fields(fields, self.caps, names), "model": info.name, "mode": mode}
        check_high_noise(
            client.get("loras", ()), info.name, info.family, (names or {}).get("loras", "lora")
        )
        try:
            request = build_request(
                client, self.config.default_request, self.family_defaults(info.name)
            )
        except InvalidRequest as exc:
            raise ApiError(400, str(exc)) from exc
        check_request(request, self.caps, names)
        if request.refiner is not None:
            refiner = self.model_info(request.refiner)
            if refiner.family != "sdxl_refiner" or info.family != "sdxl":
                raise invalid(
                    "refiner_checkpoint",
                    f"{refiner.name!r} ({refiner.family}) cannot refine {info.name!r} "
                    f"({info.family}): an sdxl_refiner model refines an sdxl model",
                )
            if not 0.0 < request.refiner_switch < 1.0:
                raise invalid("refiner_switch_at", "must be between 0 and 1 (exclusive)")
        # Relative tile sizes and hires scales need the final width and height.
        return resolve_hires(resolve_tiling(request), self.caps.limits)

    def check_operator_defaults(self) -> None:
        """Fails start-up when `default_request` cannot produce a valid request."""
        for info in self.models:
            if "img_gen" not in info.modes:
                continue
            try:
                self.resolve({"model": info.name})
            except ApiError as exc:
                raise ConfigError(f"default_request (model {info.name}): {exc.message}") from exc

    # -- image jobs -------------------------------------------------------------------------

    def submit_images(self, request: GenerationRequest, output: OutputOptions) -> JobView:
        default_scheduler = self.family_defaults(request.model).get("scheduler")

        def run(progress, cancelled) -> ImageResult:
            result = self.engine.generate(request, progress=progress, cancelled=cancelled)
            images, infotexts = [], []
            for index, (pixels, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
                text = self.infotext(request, seed, default_scheduler)
                infotexts.append(text)
                chunks = {"parameters": text} if output.embed_metadata else None
                data = encode_image(pixels, output.output_format, output.quality, chunks)
                images.append(EncodedImage(index, data, int(seed)))
            # Finished jobs are kept for `job_retention_s`; the input pixels need not be.
            echo = replace(request, init_image=None, mask_image=None)
            return ImageResult(
                images,
                output.output_format,
                echo,
                request.model,
                infotexts,
                result.info,
                img2img=request.init_image is not None,
            )

        return self.jobs.submit(request.mode, run)

    def generate_images(self, request: GenerationRequest, output: OutputOptions) -> ImageResult:
        """Synchronous surfaces: queue like everyone else, then wait for the result."""
        view = self.jobs.wait(self.submit_images(request, output).id)
        if view.status == COMPLETED:
            return view.result
        error = view.error or {}
        if view.status == CANCELLED:
            if error == CANCELLED_BY_SHUTDOWN:
                raise ApiError(503, "server is shutting down", code="shutting_down")
            # Cancelled through sdcpp, or interrupted/skipped through sdapi: A1111 would answer
            # 200 with the images done so far, which a stopped batch does not have here.
            raise ApiError(
                409, "job cancelled", detail=error.get("message"), code="cancelled", retryable=False
            )
        if error.get("code") == "invalid_request":
            raise ApiError(400, error.get("message", "invalid request"), code="invalid_request")
        raise ApiError(
            500, "generation failed", detail=error.get("message"), code="generation_failed"
        )

    def infotext(self, request: GenerationRequest, seed: int, default_scheduler: Any) -> str:
        params = a1111.infotext_params(
            steps=request.steps,
            sampler=request.sampler,
            scheduler=request.scheduler,
            default_scheduler=default_scheduler,
            guidance_scale=request.guidance_scale,
            seed=seed,
            width=request.width,
            height=request.height,
            model=request.model or "",
            clip_skip=request.clip_skip,
            denoising_strength=request.strength if request.init_image is not None else None,
            version=f"jaxvideo {self.version}",
        )
        return a1111.infotext(request.prompt, request.negative_prompt, params)


def service() -> Service:
    """The Service of the app handling the current request."""
    return current_app.extensions["jaxvideo"]


def jaxvideo_version() -> str:
    import jaxvideo

    version = getattr(jaxvideo, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("jaxvideo")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
