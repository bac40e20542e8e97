"""Marshmallow schemas of the OpenAI-compatible surface (`/v1/images/generations`, `/v1/models`).

OpenAI's own parameters plus the extensions other diffusion servers accept through the SDK's
`extra_body` (seed, negative_prompt, steps, guidance_scale, sampler, scheduler, ...). Unknown
keys answer 400 so a misspelt extension is not silently dropped.
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
