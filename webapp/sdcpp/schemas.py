"""Marshmallow schemas of the native sdcpp API (`/sdcpp/v1/img_gen`, and `sd_cpp_extra_args`).

Field names and shapes follow seeds/sdcpp-server-api.md. Schemas check types and the static
ranges (`in_range`: the request fields' own); limits that come from the serve config (sizes,
steps, batch) and what the model supports are the request check's (`webapp.core.checks`), and
features this server does not implement yet are refused by the translation, naming the field.
Unknown keys are rejected: on the native surface a typo must not be silently ignored.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from jaxvideo.sampling.cache_modes import MODES
from webapp.core.schemas import Bool, Int, Num, in_range

# sd.cpp's modes, and teacache (FastVideo's enable_teacache) for Wan; which ones a model takes
# is in its capabilities (`cache_modes`).
CACHE_MODES = ("disabled", *MODES)


FRACTION = validate.Range(0, 1, error="must be within [0, 1]")


class SlgSchema(Schema):
    """Skip-layer guidance (SD3.5): which blocks the extra forward skips, over which fraction
    of the steps, and how hard it pushes away from that prediction (0: off)."""

    layers = fields.List(Int(validate=validate.Range(0, 1000)), validate=validate.Length(max=64))
    layer_start = Num(validate=FRACTION)
    layer_end = Num(validate=FRACTION)
    scale = Num(validate=validate.Range(0, 100, error="must be within [0, 100]"))


class GuidanceSchema(Schema):
    txt_cfg = Num(validate=in_range("guidance_scale"))
    img_cfg = Num(allow_none=True)
    distilled_guidance = Num(
        validate=in_range("distilled_guidance"),
        metadata={"description": "the guidance scale Flux dev/Kontext models embed"},
    )
    slg = fields.Nested(SlgSchema)


class HighNoiseSampleParamsSchema(Schema):
    """`high_noise_sample_params` (vid_gen): the high-noise expert's stage of Wan 2.2."""

    scheduler = fields.String(allow_none=True)
    sample_method = fields.String(allow_none=True)
    sample_steps = Int(
        metadata={"description": "< 0: split sample_steps at moe_boundary; > 0: own steps"}
    )
    eta = Num(allow_none=True)
    shifted_timestep = Int(validate=in_range("shifted_timestep"))
    flow_shift = Num(allow_none=True, metadata={"description": "0 or null: the model's own"})
    guidance = fields.Nested(GuidanceSchema)


class SampleParamsSchema(HighNoiseSampleParamsSchema):
    sample_steps = Int()
    custom_sigmas = fields.List(
        Num(), metadata={"description": "descending sigmas; replace scheduler and sample_steps"}
    )


class LoraSchema(Schema):
    path = fields.String(
        required=True, metadata={"description": "a name or path relative to the LoRA folder"}
    )
    multiplier = Num(metadata={"description": "default 1.0"})
    is_high_noise = Bool(metadata={"description": "Wan 2.2 high-noise expert only"})


class VaeTilingSchema(Schema):
    """Decode the latent in overlapping tiles; sizes are in latent pixels (image / 8)."""

    enabled = Bool()
    tile_size_x = Int(metadata={"description": "0 (default 32) or >= 8"})
    tile_size_y = Int(metadata={"description": "0 (default 32) or >= 8"})
    target_overlap = Num(metadata={"description": "share of a tile shared with its neighbour"})
    rel_size_x = Num(metadata={"description": "<= 1: fraction of the latent; > 1: tile count"})
    rel_size_y = Num(metadata={"description": "<= 1: fraction of the latent; > 1: tile count"})


class GenerationSchema(Schema):
    """Fields img_gen and vid_gen share."""

    model = fields.String(metadata={"description": "jaxvideo extension: a served model name"})
    prompt = fields.String()
    negative_prompt = fields.String()
    clip_skip = Int()
    width = Int()
    height = Int()
    strength = Num(validate=in_range("strength"))
    seed = Int(
        validate=in_range("seed"),
        metadata={"description": "negative means random; others are reduced modulo 2**32"},
    )
    init_image = fields.String(allow_none=True)
    sample_params = fields.Nested(SampleParamsSchema)
    lora = fields.List(fields.Nested(LoraSchema))
    vae_tiling_params = fields.Nested(VaeTilingSchema)
    cache_mode = fields.String(validate=validate.OneOf(("", *CACHE_MODES)))
    cache_option = fields.String()
    scm_mask = fields.String()
    scm_policy_dynamic = Bool()
    output_format = fields.String()
    output_compression = Int()


class ImgGenSchema(GenerationSchema):
    """`POST /sdcpp/v1/img_gen` and `sd_cpp_extra_args` blocks."""

    batch_count = Int()
    auto_resize_ref_image = Bool()
    increase_ref_index = Bool()
    control_strength = Num()
    embed_image_metadata = Bool()
    ref_images = fields.List(
        fields.String(), metadata={"description": "base64 images (Flux Kontext references)"}
    )
    mask_image = fields.String(allow_none=True)
    control_image = fields.String(allow_none=True)


class VidGenSchema(GenerationSchema):
    """`POST /sdcpp/v1/vid_gen` (and `sd_cpp_extra_args` blocks on `/v1/videos*`)."""

    video_frames = Int(
        validate=in_range("num_frames"),
        metadata={"description": "Wan rounds down to 4n+1 (34 -> 33); result.frame_count"},
    )
    fps = Int(validate=in_range("fps"))
    moe_boundary = Num(
        validate=in_range("moe_boundary"),
        metadata={"description": "Wan 2.2: where the high-noise expert hands over"},
    )
    vace_strength = Num(metadata={"description": "only with control_frames (VACE)"})
    end_image = fields.String(allow_none=True, metadata={"description": "the last frame"})
    control_frames = fields.List(fields.String(), metadata={"description": "VACE: unsupported"})
    high_noise_sample_params = fields.Nested(HighNoiseSampleParamsSchema)
    output_format = fields.String(metadata={"enum": ["webm", "webp", "avi"]})


class JobSubmittedSchema(Schema):
    id = fields.String()
    kind = fields.String()
    status = fields.String()
    created = fields.Integer()
    poll_url = fields.String()


class ProgressSchema(Schema):
    step = fields.Integer()
    total = fields.Integer()
    phase = fields.String(
        allow_none=True,
        metadata={
            "enum": ["loading_model", "generating", None],
            "description": "while generating: loading_model (its model loads first), then "
            "generating; null otherwise",
        },
    )


class JobSchema(Schema):
    """The job JSON of `GET /sdcpp/v1/jobs/{id}` (response documentation only)."""

    id = fields.String()
    kind = fields.String()
    status = fields.String(
        metadata={"enum": ["queued", "generating", "completed", "failed", "cancelled"]}
    )
    created = fields.Integer()
    started = fields.Integer(allow_none=True)
    completed = fields.Integer(allow_none=True)
    queue_position = fields.Integer()
    progress = fields.Nested(ProgressSchema)
    result = fields.Dict(allow_none=True)
    error = fields.Dict(allow_none=True)
