"""The OpenAI / FastVideo video surface: `/v1/videos*`.

`POST /v1/videos` queues a job and answers the video object at once (JSON, or multipart as the
OpenAI SDK's `videos.create` sends it); `POST /v1/videos/generations` (FastVideo's documented
route) queues, waits and answers the finished object. Jobs live in the shared job table; these
routes see only the jobs queued through them. A cancelled job reads `failed` with
`error.code == "cancelled"` (OpenAI's statuses have no cancelled).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from webapp.core.errors import ApiError, invalid
from webapp.core.http import check_body_complete, client_connected, json_body, waits_for_generation
from webapp.core.jobs import CANCELLED, COMPLETED, FAILED, GENERATING, QUEUED, JobView
from webapp.core.openapi import RouteDoc
from webapp.core.results import VideoJob
from webapp.core.schemas import load
from webapp.core.service import Service, service
from webapp.openai.forms import form_to_json
from webapp.openai.schemas import (
    VideoContentQuerySchema,
    VideoDeletedSchema,
    VideoGenerationSchema,
    VideoListQuerySchema,
    VideoListSchema,
    VideoSchema,
)
from webapp.openai.video_translate import FALLBACK, NAMES, fastvideo_fields, with_seconds

bp = Blueprint("videos", __name__, url_prefix="/v1")

POLL_AFTER_MS = "250"  # the SDK's `poll` sleeps this long between retrieves
STATUSES = {QUEUED: "queued", GENERATING: "in_progress", COMPLETED: "completed"}
FILE_FIELDS = ("input_reference",)

DOCS = (
    RouteDoc(
        "/v1/videos",
        "post",
        VideoGenerationSchema,
        VideoSchema,
        "Queue a video (JSON, or multipart as the OpenAI SDK sends it)",
        content_type=("application/json", "multipart/form-data"),
    ),
    RouteDoc(
        "/v1/videos/generations",
        "post",
        VideoGenerationSchema,
        VideoSchema,
        "Generate a video and wait for it (FastVideo)",
    ),
    RouteDoc("/v1/videos", "get", None, VideoListSchema, "List videos", query=VideoListQuerySchema),
    RouteDoc("/v1/videos/{video_id}", "get", None, VideoSchema, "Retrieve a video job"),
    RouteDoc(
        "/v1/videos/{video_id}/content",
        "get",
        None,
        None,
        "Download the MP4 (or the WebP thumbnail) once completed",
        query=VideoContentQuerySchema,
        produces=("video/mp4", "image/webp"),
    ),
    RouteDoc(
        "/v1/videos/{video_id}", "delete", None, VideoDeletedSchema, "Delete (or cancel) a video"
    ),
)


@bp.post("/videos")
def create_video() -> Response:
    svc = service()
    view = svc.submit_video(*_parse(svc, _request_body()), resumable=True)
    return _video_response(svc, view)


@bp.post("/videos/generations")
@waits_for_generation
def generate_video() -> Response:
    svc = service()
    parsed = _parse(svc, load(VideoGenerationSchema(), json_body()))
    view = svc.generate_video(*parsed, client_connected())
    return jsonify(video_object(view, svc))


@bp.get("/videos/generations")
def generations_take_post() -> Response:
    # Without this, GET would reach /videos/<video_id> and answer "video not found".
    raise MethodNotAllowed(valid_methods=["POST"])


@bp.get("/videos")
def list_videos() -> Response:
    svc = service()
    query = load(VideoListQuerySchema(), request.args.to_dict())
    videos = svc.jobs.views(_is_video)
    if query.get("order", "desc") == "desc":
        videos.reverse()
    if "after" in query:
        ids = [view.id for view in videos]
        if query["after"] not in ids:
            raise invalid("after", f"unknown video id {query['after']!r}", "not_found")
        videos = videos[ids.index(query["after"]) + 1 :]
    limit = query.get("limit", 20)
    page = videos[:limit]
    return jsonify(
        {
            "object": "list",
            "data": [video_object(view, svc) for view in page],
            "has_more": len(videos) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
    )


@bp.get("/videos/<video_id>")
def retrieve_video(video_id: str) -> Response:
    svc = service()
    return _video_response(svc, _video(svc, video_id))


@bp.get("/videos/<video_id>/content")
def video_content(video_id: str) -> Response:
    svc = service()
    query = load(VideoContentQuerySchema(), request.args.to_dict())
    view = _video(svc, video_id)
    if view.status != COMPLETED:
        raise ApiError(404, "video is not ready", detail=f"status {view.status}", code="not_ready")
    if query.get("variant", "video") == "thumbnail":
        return Response(view.result.thumbnail, mimetype="image/webp")
    return Response(view.result.data, mimetype=view.result.mime_type)


@bp.delete("/videos/<video_id>")
def delete_video(video_id: str) -> Response:
    svc = service()
    _video(svc, video_id)
    svc.jobs.delete(video_id)
    return jsonify({"id": video_id, "object": "video.deleted", "deleted": True})


def video_object(view: JobView, svc: Service) -> dict[str, Any]:
    """The OpenAI `Video` object plus FastVideo's extras (`num_frames` is the real count)."""
    meta: VideoJob = view.meta
    result = view.result if view.status == COMPLETED else None
    frames = result.frame_count if result else meta.num_frames
    fps = result.fps if result else meta.fps
    body: dict[str, Any] = {
        "id": view.id,
        "object": "video",
        "model": meta.model,
        "status": STATUSES.get(view.status, "failed"),
        "progress": _progress(view),
        "created_at": view.created,
        "completed_at": view.completed,
        "expires_at": None,
        "prompt": meta.prompt,
        "seconds": f"{frames / fps:g}",
        "size": f"{meta.width}x{meta.height}",
        "quality": "standard",
        "error": _error(view),
        "num_frames": frames,
        "fps": fps,
        "seed": result.seed if result else meta.seed,
        "inference_time_s": result.inference_time_s if result else None,
    }
    if view.completed is not None:
        body["expires_at"] = int(view.completed + svc.jobs.job_retention_s)
    if result and result.file_path:
        body["file_path"] = result.file_path
    if meta.return_state:
        body["state"] = result.state if result else None
    return body


def _request_body() -> dict[str, Any]:
    """The JSON body, or the multipart form (files included) as the same JSON shape."""
    if request.mimetype != "multipart/form-data":
        return load(VideoGenerationSchema(), json_body())
    form, files = request.form, request.files  # parsing raises 413 past the body limit
    check_body_complete()
    for key in files:
        if key not in FILE_FIELDS:
            raise invalid(key, "unexpected file upload")
    data = form_to_json(VideoGenerationSchema(), form.items(multi=True))
    loaded = load(VideoGenerationSchema(), data)
    upload = files.get("input_reference")
    if upload is not None:
        if "input_reference" in loaded:
            raise invalid("input_reference", "sent both as a file and as a text field")
        loaded["input_reference"] = upload.read()
    return loaded


def _parse(svc: Service, data: dict[str, Any]):
    """A loaded body -> (PreparedRequest, VideoOutput, surface, job id)."""
    parsed = fastvideo_fields(data, svc.caps)
    fields = with_seconds(parsed.fields, parsed.seconds, svc.config.default_request)
    prepared = svc.resolve({**fields, "mode": "vid_gen"}, NAMES, FALLBACK)
    return prepared, parsed.output, "openai", parsed.job_id


def _video(svc: Service, video_id: str) -> JobView:
    """A job queued through these routes; any other id is not a video here (404)."""
    view = svc.jobs.get(video_id)
    if not _is_video(view):
        raise ApiError(404, "video not found", code="not_found")
    return view


def _is_video(view: JobView) -> bool:
    return isinstance(view.meta, VideoJob) and view.meta.surface == "openai"


def _video_response(svc: Service, view: JobView) -> Response:
    response = jsonify(video_object(view, svc))
    if view.status in (QUEUED, GENERATING):
        response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return response


def _progress(view: JobView) -> int:
    if view.status == COMPLETED:
        return 100
    if not view.total:
        return 0
    return min(99, view.step * 100 // view.total)


def _error(view: JobView) -> dict[str, str] | None:
    if view.status not in (FAILED, CANCELLED):
        return None
    error = view.error or {}
    return {"code": error.get("code", "generation_failed"), "message": error.get("message", "")}
