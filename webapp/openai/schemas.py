"""Marshmallow schemas of the OpenAI-compatible surface (`/v1/images/...`, `/v1/models`,
`/v1/videos...`).

OpenAI's own parameters plus the extensions other diffusion servers accept through the SDK's
`extra_body` (seed, negative_prompt, steps, guidance_scale, sampler, scheduler, ...). Unknown
keys answer 400 so a misspelt extension is not silently dropped.

`/v1/images/edits` is multipart: its form values arrive as strings, so its schema uses
marshmallow's converting field types instead of the JSON-strict `Int`/`Num`.

The video request (FastVideo's VideoGenerationsRequest plus the OpenAI SDK's `videos.create`)
is one JSON-strict schema for both its JSON and its multipart form: `webapp.forms` converts form
strings to the types these fields declare first. No field has a default, so a key is in the
loaded dict only when the client sent it (FastVideo's `model_fields_set`).
"""

from __future__ import annotations

import math
from typing import Any

from marshmallow import Schema, fields, validate

from webapp.core.schemas import Bool, Int, Num, in_range

JOB_ID = r"^[A-Za-z0-9_-]{1,64}$"


class ImageGenerationSchema(Schema):
    prompt = fields.String(required=True)
    model = fields.String(allow_none=True)
    n = Int(validate=validate.Range(min=1, error="must be >= 1"), allow_none=True)
    size = fields.String(
        allow_none=True, metadata={"description": "WIDTHxHEIGHT, or auto for the model default"}
    )
    output_format = fields.String(allow_none=True, metadata={"enum": ["png", "jpeg", "webp", None]})
    output_compression = Int(allow_none=True, metadata={"description": "clamped to 0..100"})
    response_format = fields.String(allow_none=True, metadata={"enum": ["b64_json", None]})
    stream = Bool(allow_none=True)
    # Accepted for compatibility; they do not change what a diffusion model generates.
    quality = fields.String(allow_none=True)
    style = fields.String(allow_none=True)
    user = fields.String(allow_none=True)
    background = fields.String(allow_none=True)
    moderation = fields.String(allow_none=True)
    # Extensions (send them with the SDK's extra_body).
    seed = Int(
        validate=in_range("seed"),
        allow_none=True,
        metadata={"description": "negative or null means random"},
    )
    negative_prompt = fields.String(allow_none=True)
    steps = Int(allow_none=True)
    num_inference_steps = Int(allow_none=True, metadata={"description": "alias of steps"})
    guidance_scale = Num(validate=in_range("guidance_scale"), allow_none=True)
    cfg_scale = Num(
        validate=in_range("guidance_scale"),
        allow_none=True,
        metadata={"description": "alias of guidance_scale"},
    )
    sampler = fields.String(allow_none=True)
    scheduler = fields.String(allow_none=True)
    clip_skip = Int(allow_none=True)
    eta = Num(allow_none=True)


_FILE = {"type": "string", "format": "binary"}


class ImageEditSchema(Schema):
    """The multipart form of `POST /v1/images/edits` (files included, for the documentation;
    files are read from the upload, never from text fields)."""

    image = fields.Raw(metadata={**_FILE, "description": "the image to edit"})
    image_list = fields.List(
        fields.Raw(metadata=_FILE),
        data_key="image[]",
        metadata={"description": "repeated image upload; the first image is used"},
    )
    mask = fields.Raw(metadata={**_FILE, "description": "transparent pixels mark where to edit"})
    prompt = fields.String(required=True)
    model = fields.String()
    n = fields.Integer(validate=validate.Range(min=1, error="must be >= 1"))
    size = fields.String(metadata={"description": "WIDTHxHEIGHT; default: the image's size"})
    output_format = fields.String(metadata={"enum": ["png", "jpeg", "webp"]})
    output_compression = fields.Integer(metadata={"description": "clamped to 0..100"})
    response_format = fields.String(metadata={"enum": ["b64_json"]})
    stream = Bool()
    # Accepted for compatibility; they do not change what a diffusion model generates.
    quality = fields.String()
    background = fields.String()
    input_fidelity = fields.String()
    moderation = fields.String()
    user = fields.String()
    safety_identifier = fields.String()
    partial_images = fields.Integer()
    # Extensions (send them with the SDK's extra_body; they become form fields).
    strength = fields.Float(
        allow_nan=False,
        validate=in_range("strength"),
        metadata={"description": "default 1.0 with a mask, else 0.75"},
    )
    seed = fields.Integer(
        validate=in_range("seed"), metadata={"description": "negative means random"}
    )
    negative_prompt = fields.String()
    steps = fields.Integer()
    num_inference_steps = fields.Integer(metadata={"description": "alias of steps"})
    guidance_scale = fields.Float(allow_nan=False, validate=in_range("guidance_scale"))
    cfg_scale = fields.Float(
        allow_nan=False,
        validate=in_range("guidance_scale"),
        metadata={"description": "alias of guidance_scale"},
    )
    sampler = fields.String()
    scheduler = fields.String()
    clip_skip = fields.Integer()
    eta = fields.Float(allow_nan=False)


class ImageDataSchema(Schema):
    b64_json = fields.String()


class ImagesResponseSchema(Schema):
    created = fields.Integer()
    data = fields.List(fields.Nested(ImageDataSchema))
    output_format = fields.String()
    size = fields.String()


class ModelSchema(Schema):
    id = fields.String()
    object = fields.String()
    created = fields.Integer()
    owned_by = fields.String()
    loaded = fields.Boolean(
        metadata={"description": "whether its weights are on the devices now (jaxvideo)"}
    )


class ModelListSchema(Schema):
    object = fields.String()
    data = fields.List(fields.Nested(ModelSchema))


# -- videos ---------------------------------------------------------------------------------


class Seconds(fields.Field):
    """A clip length: a JSON number (FastVideo) or a numeric string (the OpenAI SDK's "4")."""

    MAX = 3600.0  # far beyond any frame limit; keeps seconds x fps a plain number
    default_error_messages = {"invalid": "Not a valid number of seconds (0 < s <= 3600)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise self.make_error("invalid") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        if not math.isfinite(value) or not 0 < value <= self.MAX:
            raise self.make_error("invalid")
        return float(value)


class VideoOutputSchema(Schema):
    return_state = Bool(
        metadata={"description": "hand back a continuation `state` with the result"}
    )
    output_path = fields.String(allow_none=True, metadata={"description": "as output_path"})


class VideoGenerationSchema(Schema):
    """`POST /v1/videos/generations` (JSON) and `POST /v1/videos` (JSON or multipart)."""

    id = fields.String(
        validate=validate.Regexp(JOB_ID, error="must be 1-64 letters, digits, _ or -"),
        metadata={"description": "optional client-chosen job id; 409 when it exists"},
    )
    prompt = fields.String(
        required=True, metadata={"description": "may embed an <sd_cpp_extra_args> block"}
    )
    model = fields.String(allow_none=True, metadata={"description": "a served video model"})
    size = fields.String(allow_none=True, metadata={"description": "WIDTHxHEIGHT"})
    seconds = Seconds(
        allow_none=True, metadata={"description": "num_frames = seconds x fps when unset"}
    )
    fps = Int(validate=in_range("fps"), allow_none=True)
    num_frames = Int(
        validate=in_range("num_frames"),
        allow_none=True,
        metadata={"description": "Wan rounds down to 4n+1 (34 -> 33)"},
    )
    seed = Int(
        validate=in_range("seed"),
        allow_none=True,
        metadata={"description": "negative or null means random"},
    )
    num_inference_steps = Int(allow_none=True)
    guidance_scale = Num(validate=in_range("guidance_scale"), allow_none=True)
    guidance_scale_2 = Num(
        validate=in_range("guidance_scale_2"),
        allow_none=True,
        metadata={"description": "Wan 2.2: CFG scale of the low-noise expert"},
    )
    true_cfg_scale = Num(
        validate=in_range("guidance_scale"),
        allow_none=True,
        metadata={"description": "Wan's CFG is true CFG: an alias of guidance_scale"},
    )
    negative_prompt = fields.String(allow_none=True)
    input_reference = fields.Raw(
        allow_none=True,
        metadata={
            "description": "the first frame: an uploaded file, a data URL or base64 image, a "
            "file path inside server.input_dir, or {image_url: data URL}"
        },
    )
    reference_url = fields.String(
        allow_none=True, metadata={"description": "data: URLs only (no network access)"}
    )
    enable_teacache = Bool(
        allow_none=True,
        metadata={"description": "TeaCache-style step cache (skips denoiser calls; Wan models)"},
    )
    output_path = fields.String(
        allow_none=True,
        metadata={"description": "also write the MP4 here (a file or folder inside output_dir)"},
    )
    state = fields.Dict(
        allow_none=True, metadata={"description": "ContinuationState {kind, payload}"}
    )
    output = fields.Nested(VideoOutputSchema, allow_none=True)
    return_state = Bool(allow_none=True, metadata={"description": "output.return_state"})


class VideoErrorSchema(Schema):
    code = fields.String()
    message = fields.String()


class VideoSchema(Schema):
    """The video object (OpenAI SDK `Video` plus FastVideo's extras)."""

    id = fields.String()
    object = fields.String(metadata={"enum": ["video"]})
    model = fields.String()
    status = fields.String(metadata={"enum": ["queued", "in_progress", "completed", "failed"]})
    progress = fields.Integer(metadata={"description": "0..100"})
    created_at = fields.Integer()
    completed_at = fields.Integer(allow_none=True)
    expires_at = fields.Integer(allow_none=True)
    prompt = fields.String()
    seconds = fields.String()
    size = fields.String()
    quality = fields.String()
    error = fields.Nested(VideoErrorSchema, allow_none=True)
    num_frames = fields.Integer(metadata={"description": "the real frame count"})
    fps = fields.Integer()
    seed = fields.Integer()
    inference_time_s = fields.Float(allow_none=True)
    file_path = fields.String(allow_none=True)
    state = fields.Dict(allow_none=True)


class VideoListSchema(Schema):
    object = fields.String(metadata={"enum": ["list"]})
    data = fields.List(fields.Nested(VideoSchema))
    has_more = Bool()
    first_id = fields.String(allow_none=True)
    last_id = fields.String(allow_none=True)


class VideoListQuerySchema(Schema):
    after = fields.String(metadata={"description": "the last id of the previous page"})
    limit = fields.Integer(validate=validate.Range(min=1, max=100), metadata={"default": 20})
    order = fields.String(validate=validate.OneOf(("asc", "desc")), metadata={"default": "desc"})


class VideoContentQuerySchema(Schema):
    variant = fields.String(
        validate=validate.OneOf(("video", "thumbnail")),
        metadata={"description": "video (MP4, default) or thumbnail (WebP first frame)"},
    )


class VideoDeletedSchema(Schema):
    id = fields.String()
    object = fields.String(metadata={"enum": ["video.deleted"]})
    deleted = Bool()
