"""The object every blueprint shares: config, engine, job table, and the jobs built on them.

`resolve` is the one way a surface's translated fields become a request: it picks the model for
the mode, applies the merge precedence, settles deferred fields, runs the request check (limits
and model features, naming the surface's fields) and lets the engine `prepare` it (the model's
`validate`, once). `submit_images` / `submit_video` queue a job that runs
`Engine.generate` and encodes the frames (PNG/JPEG/WebP; MP4/WebM/WebP/AVI) in the worker
thread, so a finished job holds ready-to-send bytes; `generate_images` / `generate_video` are
the synchronous variants (submit, then wait). Image jobs the engine can batch carry its batch
key, so the worker may run several of them as one `Engine.generate_batch` call.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from flask import current_app

from jaxvideo.config import ConfigError, ServeConfig, ServerConfig
from jaxvideo.errors import InvalidRequest
from jaxvideo.media import VIDEO_FORMATS, encode_image, encode_video
from jaxvideo.request import GenerationRequest, build_request
from jaxvideo.request_codec import decode_request, encode_request
from jaxvideo.results import GenerationResult, ModelInfo
from webapp.core.capabilities import Capabilities
from webapp.core.checks import check_fields, check_request, check_text
from webapp.core.errors import ApiError, invalid, refused, shutting_down, unavailable
from webapp.core.images import fit_size
from webapp.core.infotext import infotext, infotext_params
from webapp.core.jobs import (
    CANCELLED,
    CANCELLED_BY_SHUTDOWN,
    CLIENT_GONE,
    COMPLETED,
    PROCESS_LOST,
    TERMINAL,
    Batch,
    CancelledFn,
    JobTable,
    JobView,
    ProgressFn,
    new_job_id,
    outcome_of,
)
from webapp.core.outputs import OutputOptions, VideoOutput
from webapp.core.references import confined, output_file
from webapp.core.results import EncodedImage, ImageResult, VideoJob, VideoResult, stored_result
from webapp.core.store import JobRecord

# How often a waiting synchronous request checks that its client is still there.
CLIENT_CHECK_S = 0.5

if TYPE_CHECKING:  # the engine imports JAX; the web layer only holds one
    from jaxvideo.engine import Engine, PreparedRequest


@runtime_checkable
class DeferredField(Protocol):
    """A request field a surface can only finish once the merged size is known (relative VAE
    tiles, a hires scale): `settle` returns the request with its final value."""

    def settle(self, request: GenerationRequest, limits: ServerConfig) -> GenerationRequest: ...


class Service:
    def __init__(self, config: ServeConfig, engine: Engine, jobs: JobTable, caps: Capabilities):
        self.config = config
        self.engine = engine
        self.jobs = jobs
        self.caps = caps
        self.version = jaxvideo_version()

    @property
    def models(self) -> list[ModelInfo]:
        return list(self.engine.models)

    def is_loaded(self, name: str) -> bool:
        return self.engine.is_loaded(name)

    def model_states(self) -> list[dict[str, Any]]:
        """Per served model: loaded or not, its load policy, its weights per device."""
        return self.engine.model_states()

    def load_model(self, name: str) -> None:
        """Loads a model now (waits for the running job); InvalidRequest if it cannot fit."""
        self.engine.load(name)

    def unload_model(self, name: str) -> None:
        self.engine.unload(name)

    def model_info(self, name: str | None) -> ModelInfo:
        try:
            return self.engine.model_info(name)
        except InvalidRequest as exc:  # the engine's message names the served models
            raise invalid("model", str(exc), code="model_not_found") from exc

    def default_model(self) -> str:
        """The model requests naming none get: the operator's choice, else the first one."""
        return self.model_info(self.config.default_request.get("model")).name

    def model_for(self, mode: str, name: str | None = None) -> ModelInfo:
        """The model a `mode` request goes to: the one it names (400 if that one cannot serve
        the mode), else the default model if it can, else the first served model that can."""
        if mode == "vid_gen" and not any(mode in m.modes for m in self.models):
            raise ApiError(
                503, "no video generator loaded", code="model_not_loaded", retryable=False
            )
        if name is not None:
            info = self.model_info(name)
            if mode not in info.modes:
                raise invalid("model", f"model {info.name!r} cannot serve {mode}", "wrong_mode")
            return info
        default = self.model_info(self.config.default_request.get("model"))
        if mode in default.modes:
            return default
        return next(m for m in self.models if mode in m.modes)

    def resolve(
        self,
        fields: Mapping[str, Any],
        names: Mapping[str, str] | None = None,
        fallback: Mapping[str, Any] | None = None,
        *,
        guidance_is_distilled: bool = False,
    ) -> PreparedRequest:
        """Client fields > operator `default_request` > `fallback` (the surface's hard-coded
        values) > the model's defaults, checked (limits, model features; 400s naming the
        surface's `names` for fields) and prepared by the engine.

        An init image's size stands in for a width/height the client did not send. With
        `guidance_is_distilled` (the surfaces whose one guidance field is diffusers'
        `guidance_scale`: OpenAI images, sdapi), a guidance-distilled model (Flux dev) takes
        that field as its distilled guidance, as diffusers' FluxPipeline does."""
        names = dict(names or {})
        check_text(fields, self.caps.limits, names)
        mode = fields.get("mode", "img_gen")
        info = self.model_for(mode, fields.get("model"))
        fields = dict(fields)
        if (
            guidance_is_distilled
            and "distilled_guidance" in info.features.get(mode, ())
            and "guidance_scale" in fields
            and "distilled_guidance" not in fields
        ):
            fields["distilled_guidance"] = fields.pop("guidance_scale")
            names["distilled_guidance"] = names.get("guidance_scale", "guidance_scale")
        client = {**init_image_size(fields, self.caps, names), "model": info.name, "mode": mode}
        client = check_fields(client, info, mode, names)
        try:
            request = build_request(
                client, self.config.default_request, {**info.defaults, **(fallback or {})}
            )
        except InvalidRequest as exc:
            raise refused(exc, names) from exc
        for value in [getattr(request, f.name) for f in dataclasses.fields(request)]:
            if isinstance(value, DeferredField):  # the size is final now
                request = value.settle(request, self.caps.limits)
        check_request(request, info, self.caps, names)
        try:
            return self.engine.prepare(request)
        except InvalidRequest as exc:
            raise refused(exc, names) from exc

    def check_operator_defaults(self) -> None:
        """Fails start-up when `default_request` cannot produce a valid request."""
        for info in self.models:
            # An image-to-video model's requests always carry a first frame; any will do here.
            first_frame = {"init_image": np.zeros((8, 8, 3), np.uint8)}
            for mode in info.modes:
                try:
                    fields = {"model": info.name, "mode": mode}
                    self.resolve(fields | first_frame if info.needs_init_image else fields)
                except ApiError as exc:
                    raise ConfigError(
                        f"default_request (model {info.name}, {mode}): {exc.message}"
                    ) from exc

    # -- image jobs -------------------------------------------------------------------------

    def submit_images(
        self, prepared: PreparedRequest, output: OutputOptions, resumable: bool = False
    ) -> JobView:
        """Queues an image job whose worker encodes the images. A `resumable` job (an async
        surface's: its client polls it by id) runs again after a restart."""
        run, batch = self._image_job(prepared, output)
        spec, arrays = job_spec("images", prepared, output)
        return self.jobs.submit(
            prepared.request.mode,
            run,
            batch=batch,
            spec=spec,
            arrays=arrays,
            resumable=resumable,
        )

    def _image_job(self, prepared: PreparedRequest, output: OutputOptions):
        """(run, batch) of an image job."""
        request = prepared.request
        default_scheduler = self.model_info(request.model).defaults.get("scheduler")

        def encode(result: GenerationResult) -> ImageResult:
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

        def run(progress, cancelled) -> ImageResult:
            return encode(self.engine.generate(prepared, progress=progress, cancelled=cancelled))

        return run, self._image_batch(prepared, encode)

    def _image_batch(
        self, prepared: PreparedRequest, encode: Callable[[GenerationResult], ImageResult]
    ) -> Batch | None:
        """How this image job may join compatible ones (None: batching is off, or the engine
        cannot batch this request)."""
        # As many as fit on a device next to the model (activations grow with the batch).
        limit = min(self.config.server.max_batch_size, self.engine.batch_limit(prepared))
        key = self.engine.batch_key(prepared) if limit > 1 else None
        return None if key is None else Batch(key, (prepared, encode), self._run_images, limit)

    def _run_images(
        self, items: list[tuple], progress: ProgressFn, cancelled: list[CancelledFn]
    ) -> list[ImageResult | Exception]:
        """One `generate_batch` call for several image jobs; each encodes its own images."""
        prepared = [item for item, _ in items]
        results = self.engine.generate_batch(prepared, progress, cancelled)
        return [
            result if isinstance(result, Exception) else outcome_of(encode, result)
            for (_, encode), result in zip(items, results, strict=True)
        ]

    def generate_images(
        self,
        prepared: PreparedRequest,
        output: OutputOptions,
        connected: Callable[[], bool] | None = None,
    ) -> ImageResult:
        """Synchronous surfaces: queue like everyone else, then wait for the result (the job
        is cancelled if `connected` says the client hung up meanwhile)."""
        view = self.submit_images(prepared, output)
        return finished(self.wait_for_client(view.id, connected)).result

    # -- video jobs -------------------------------------------------------------------------

    def submit_video(
        self,
        prepared: PreparedRequest,
        output: VideoOutput,
        surface: str,
        job_id: str | None = None,
        resumable: bool = False,
    ) -> JobView:
        """Queues a vid_gen job whose worker encodes the container (and, on the OpenAI
        surface, a WebP thumbnail, and the MP4 copy at `output.output_path`).

        OpenAI-surface jobs get OpenAI-style ids (`video_<hex>`) unless the client chose one;
        an `output_path` folder is named after that id, so it is checked (400) before queuing.
        A `resumable` job runs again after a restart."""
        request = prepared.request
        info = self.model_info(request.model)
        if surface == "openai":
            job_id = job_id or new_video_id()
        copy_to = None
        if output.output_path is not None:
            copy_to = output_file(output.output_path, job_id, self.config.server)
        meta = VideoJob(
            surface, info.name, request.prompt, request.width, request.height,
            info.frames_for(request.num_frames), request.fps, request.seed,
            request.return_state,
        )  # fmt: skip
        run = self._video_job(prepared, output, surface, copy_to)
        spec, arrays = job_spec("video", prepared, output, meta=meta, copy_to=copy_to)
        return self.jobs.submit(
            "vid_gen", run, meta, job_id=job_id, spec=spec, arrays=arrays, resumable=resumable
        )

    def _video_job(
        self, prepared: PreparedRequest, output: VideoOutput, surface: str, copy_to: str | None
    ):
        request = prepared.request

        def run(progress, cancelled) -> VideoResult:
            started = time.monotonic()
            result = self.engine.generate(prepared, progress=progress, cancelled=cancelled)
            elapsed = time.monotonic() - started
            video = result.videos[0]
            fps = int(result.fps or request.fps)
            data = encode_video(video, fps, output.output_format, output.quality)
            if copy_to is not None:
                write_file(copy_to, data, self.config.server.output_dir)
            return VideoResult(
                data=data,
                output_format=output.output_format,
                mime_type=VIDEO_FORMATS[output.output_format],
                fps=fps,
                frame_count=int(video.shape[0]),
                seed=int(result.seeds[0]) if result.seeds else request.seed,
                inference_time_s=round(elapsed, 3),
                thumbnail=encode_image(video[0], "webp", 90) if surface == "openai" else None,
                state=result.state,
                file_path=copy_to,
                step_cache=result.info.get("step_cache"),
            )

        return run

    def generate_video(
        self,
        prepared: PreparedRequest,
        output: VideoOutput,
        surface: str,
        job_id: str | None,
        connected: Callable[[], bool] | None = None,
    ) -> JobView:
        """The synchronous route: submit, wait (cancelling the job if the client hangs up),
        and answer failures as HTTP errors."""
        view = self.submit_video(prepared, output, surface, job_id)
        return finished(self.wait_for_client(view.id, connected))

    def wait_for_client(self, job_id: str, connected: Callable[[], bool] | None) -> JobView:
        """Waits for the job, checking `connected` every CLIENT_CHECK_S; once it is false the
        job is cancelled (an async job has its own id to poll; a sync one, nobody else)."""
        while True:
            view = self.jobs.wait(job_id, CLIENT_CHECK_S)
            if view.status in TERMINAL:
                return view
            if connected is not None and not connected():
                return self.jobs.cancel(job_id, CLIENT_GONE)

    # -- after a restart ----------------------------------------------------------------------

    def rebuild(self, record: JobRecord) -> tuple[Any, Batch | None, VideoJob | None]:
        """A stored job made runnable again: its request is checked and prepared anew
        (InvalidRequest: it no longer fits this server, and the job fails with that message)."""
        spec = record.spec
        request = decode_request(spec["request"], self.jobs.store.inputs(record.id))
        try:  # checked again: the limits or the served models may have changed
            check_request(request, self.model_for(request.mode, request.model), self.caps)
            prepared = self.engine.prepare(request)
        except ApiError as exc:
            raise InvalidRequest(" ".join(filter(None, (exc.message, exc.detail)))) from exc
        if spec["type"] == "images":
            run, batch = self._image_job(prepared, OutputOptions(**spec["output"]))
            return run, batch, None
        meta = VideoJob(**spec["meta"])
        output = VideoOutput(**spec["output"])
        return self._video_job(prepared, output, meta.surface, spec["copy_to"]), None, meta

    def reload(self, record: JobRecord) -> tuple[Any, VideoJob | None]:
        """A finished stored job's result (its files read back) and meta."""
        spec = record.spec or {}
        meta = VideoJob(**spec["meta"]) if spec.get("meta") else None
        if record.manifest is None:
            return None, meta
        return stored_result(record.manifest, partial(self.jobs.store.read, record.id)), meta

    def infotext(self, request: GenerationRequest, seed: int, default_scheduler: Any) -> str:
        params = infotext_params(
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
        return infotext(request.prompt, request.negative_prompt, params)


def job_spec(
    kind: str, prepared: PreparedRequest, output: Any, **extra: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What the store keeps to run a job again: its request (images apart), how to encode
    it, and the surface's meta."""
    request, arrays = encode_request(prepared.request)
    spec = {"type": kind, "request": request, "output": dataclasses.asdict(output)}
    for key, value in extra.items():
        spec[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return spec, arrays


def init_image_size(
    fields: Mapping[str, Any], caps: Capabilities, names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Completes the client fields of an img2img request: a mask needs an init image, and a
    size the client did not send is the init image's (rounded down to a multiple of 8 and
    clamped into the limits), as in the peer. The init image counts as client input, so its
    size wins over operator and family defaults."""
    fields = dict(fields)
    init = fields.get("init_image")
    if init is None:
        if fields.get("mask_image") is not None:
            param = (names or {}).get("mask_image", "mask_image")
            raise invalid(param, "a mask needs an init image")
        return fields
    width, height = fit_size(init.shape[1], init.shape[0], caps.limits)
    fields.setdefault("width", width)
    fields.setdefault("height", height)
    return fields


def finished(view: JobView) -> JobView:
    """A terminal job of a synchronous request: completed, else the matching HTTP error."""
    if view.status == COMPLETED:
        return view
    error = view.error or {}
    if view.status == CANCELLED:
        if error == CANCELLED_BY_SHUTDOWN:
            raise shutting_down()
        # Cancelled through sdcpp, or interrupted/skipped through sdapi: A1111 would answer
        # 200 with the images done so far, which a stopped batch does not have here.
        raise ApiError(
            409, "job cancelled", detail=error.get("message"), code="cancelled", retryable=False
        )
    if error.get("code") == "invalid_request":
        raise ApiError(400, error.get("message", "invalid request"), code="invalid_request")
    if error.get("code") == PROCESS_LOST:
        raise unavailable(error)
    raise ApiError(500, "generation failed", detail=error.get("message"), code="generation_failed")


def new_video_id() -> str:
    """An OpenAI-style video id (`video_<hex>`), for jobs whose id is needed before queuing."""
    return new_job_id("video")


def write_file(path: str, data: bytes, folder: str) -> None:
    """Writes `data` to `path` atomically, re-checking that it still resolves inside `folder`
    (a symlink may have appeared since the request was checked)."""
    if confined(path, folder) != path:
        raise InvalidRequest("output_path no longer resolves inside the output folder")
    partial = f"{path}.partial"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except OSError as exc:  # the message names no server folder
        raise RuntimeError(f"cannot write output_path: {exc.strerror}") from exc


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
