"""Marshmallow schemas of the OpenAI-compatible surface (`/v1/images/...`, `/v1/models`).

OpenAI's own parameters plus the extensions other diffusion servers accept through the SDK's
`extra_body` (seed, negative_prompt, steps, guidance_scale, sampler, scheduler, ...). Unknown
keys answer 400 so a misspelt extension is not silently dropped.

`/v1/images/edits` is multipart: its form values arrive as strings, so its schema uses
marshmallow's converting field types instead of the JSON-strict `Int`/`Num`.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from webapp.schemas.common import Int, Num


class ImageGenerationSchema(Schema):
    prompt = fields.String(required=True)
    model = fields.String(allow_none=True)
    n = Int(validate=validate.Range(min=1, error="must be >= 1"), allow_none=True)
    size = fields.String(
        allow_none=True, metadata={"description": "WIDTHxHEIGHT, or auto for the model default"}
    )
    output_format = fields.String(allow_none=True, metadata={"enum": ["png", "jpeg", "webp"]})
    output_compression = Int(allow_none=True, metadata={"description": "clamped to 0..100"})
    response_format = fields.String(allow_none=True, metadata={"enum": ["b64_json"]})
    stream = fields.Boolean(allow_none=True)
    # Accepted for compatibility; they do not change what a diffusion model generates.
    quality = fields.String(allow_none=True)
    style = fields.String(allow_none=True)
    user = fields.String(allow_none=True)
    background = fields.String(allow_none=True)
    moderation = fields.String(allow_none=True)
    # Extensions (send them with the SDK's extra_body).
    seed = Int(allow_none=True, metadata={"description": "negative or null means random"})
    negative_prompt = fields.String(allow_none=True)
    steps = Int(allow_none=True)
    num_inference_steps = Int(allow_none=True, metadata={"description": "alias of steps"})
    guidance_scale = Num(allow_none=True)
    cfg_scale = Num(allow_none=True, metadata={"description": "alias of guidance_scale"})
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
    stream = fields.Boolean()
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
        validate=validate.Range(min=0, max=1, error="must be within [0, 1]"),
        metadata={"description": "default 1.0 with a mask, else 0.75"},
    )
    seed = fields.Integer(metadata={"description": "negative means random"})
    negative_prompt = fields.String()
    steps = fields.Integer()
    num_inference_steps = fields.Integer(metadata={"description": "alias of steps"})
    guidance_scale = fields.Float(allow_nan=False)
    cfg_scale = fields.Float(allow_nan=False, metadata={"description": "alias of guidance_scale"})
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


class ModelListSchema(Schema):
    object = fields.String()
    data = fields.List(fields.Nested(ModelSchema))


class OpenAIErrorBodySchema(Schema):
    message = fields.String()
    type = fields.String()
    code = fields.String(allow_none=True)
    param = fields.String(allow_none=True)


class OpenAIErrorSchema(Schema):
    error = fields.Nested(OpenAIErrorBodySchema)
