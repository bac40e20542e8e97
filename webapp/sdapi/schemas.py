"""Marshmallow schemas of the AUTOMATIC1111-compatible surface (`/sdapi/v1/...`).

A1111 clients send many keys this server has no use for (restore_faces, tiling, enable_hr,
styles, subseed, alwayson_scripts, ...), so unknown keys are excluded (and logged at debug);
known keys with a wrong type still answer 400.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields

from webapp.core.schemas import Bool, Flag, Int, Num, in_range


class LoraEntrySchema(Schema):
    path = fields.String(
        required=True, metadata={"description": "a name or path relative to the LoRA folder"}
    )
    multiplier = Num(metadata={"description": "default 1.0"})
    is_high_noise = Bool(metadata={"description": "Wan 2.2 high-noise expert only"})


class Txt2ImgSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # A1111 clients send many keys this server has no use for

    prompt = fields.String(required=True)
    negative_prompt = fields.String(allow_none=True)
    width = Int(allow_none=True)
    height = Int(allow_none=True)
    steps = Int(allow_none=True)
    cfg_scale = Num(validate=in_range("guidance_scale"), allow_none=True)
    seed = Int(
        validate=in_range("seed"), allow_none=True, metadata={"description": "-1 means random"}
    )
    batch_size = Int(allow_none=True)
    n_iter = Int(allow_none=True, metadata={"description": "batches; multiplies batch_size"})
    clip_skip = Int(allow_none=True)
    sampler_name = fields.String(allow_none=True)
    sampler_index = fields.String(allow_none=True, metadata={"description": "old sampler_name"})
    scheduler = fields.String(allow_none=True)
    eta = Num(allow_none=True)
    lora = fields.List(
        fields.Nested(LoraEntrySchema),
        allow_none=True,
        metadata={"description": "LoRA files under the server's LoRA folder (GET /sdapi/v1/loras)"},
    )
    extra_images = fields.List(fields.String(), allow_none=True)
    sd_model_checkpoint = fields.String(allow_none=True)
    override_settings = fields.Dict(keys=fields.String(), allow_none=True)
    send_images = Bool(allow_none=True)
    save_images = Bool(allow_none=True)
    embed_image_metadata = Bool(allow_none=True)
    # Hires fix (txt2img): a second img2img pass at hr_scale x the size (or hr_resize_x/y).
    enable_hr = Bool(allow_none=True)
    hr_scale = Num(allow_none=True, metadata={"description": "1..4, default 2"})
    hr_upscaler = fields.String(
        allow_none=True, metadata={"description": "Latent, Latent (nearest), Lanczos"}
    )
    hr_second_pass_steps = Int(allow_none=True, metadata={"description": "0 = same as steps"})
    hr_resize_x = Int(allow_none=True)
    hr_resize_y = Int(allow_none=True)
    denoising_strength = Num(
        allow_none=True, metadata={"description": "img2img strength; hires pass strength"}
    )
    # SDXL refiner: hand over to this configured model after refiner_switch_at of the schedule.
    refiner_checkpoint = fields.String(allow_none=True)
    refiner_switch_at = Num(allow_none=True, metadata={"description": "0..1, default 0.8"})


class Img2ImgSchema(Txt2ImgSchema):
    init_images = fields.List(
        fields.String(), metadata={"description": "base64 or data URL images; the first is used"}
    )
    mask = fields.String(
        allow_none=True,
        metadata={"description": "base64 or data URL; white (or opaque) = repaint"},
    )
    inpainting_mask_invert = Flag(
        allow_none=True, metadata={"description": "0/1 or boolean: repaint the unmasked part"}
    )
    include_init_images = Bool(
        allow_none=True, metadata={"description": "echo init_images and mask in parameters"}
    )
    # A1111 clients send these; they are accepted and ignored (any type).
    resize_mode = fields.Raw(allow_none=True, metadata={"description": "ignored"})
    mask_blur = fields.Raw(allow_none=True, metadata={"description": "ignored"})
    inpainting_fill = fields.Raw(allow_none=True, metadata={"description": "ignored"})
    inpaint_full_res = fields.Raw(allow_none=True, metadata={"description": "ignored"})
    inpaint_full_res_padding = fields.Raw(allow_none=True, metadata={"description": "ignored"})
    image_cfg_scale = fields.Raw(allow_none=True, metadata={"description": "ignored"})
    initial_noise_multiplier = fields.Raw(allow_none=True, metadata={"description": "ignored"})


class Txt2ImgResponseSchema(Schema):
    images = fields.List(fields.String(), metadata={"description": "base64 PNG images"})
    parameters = fields.Dict()
    info = fields.String(metadata={"description": "JSON string: seeds, infotexts, ..."})


class SamplerSchema(Schema):
    name = fields.String()
    aliases = fields.List(fields.String())
    options = fields.Dict()


class SchedulerSchema(Schema):
    name = fields.String()
    label = fields.String()
    aliases = fields.List(fields.String(), metadata={"description": "other accepted names"})


class SdModelSchema(Schema):
    title = fields.String()
    model_name = fields.String()
    filename = fields.String()
    hash = fields.String(allow_none=True)
    sha256 = fields.String(allow_none=True)
    config = fields.String(allow_none=True)


class OptionsSchema(Schema):
    samples_format = fields.String()
    sd_model_checkpoint = fields.String()


class OptionsUpdateSchema(Schema):
    """`POST /sdapi/v1/options`: A1111 clients send many settings; only the model is used."""

    class Meta:
        unknown = EXCLUDE

    sd_model_checkpoint = fields.String(
        metadata={"description": "a served model name or its A1111 title ('name [hash]')"}
    )
    samples_format = fields.String(metadata={"description": "ignored: images are PNG"})


class SdapiProgressStateSchema(Schema):
    skipped = Bool()
    interrupted = Bool()
    job = fields.String(metadata={"description": "the generating job's id, '' when idle"})
    job_count = fields.Integer()
    job_timestamp = fields.String(metadata={"description": "YYYYmmddHHMMSS of its start"})
    job_no = fields.Integer()
    sampling_step = fields.Integer()
    sampling_steps = fields.Integer()


class SdapiProgressSchema(Schema):
    progress = fields.Float(metadata={"description": "0..1 of the generating job"})
    eta_relative = fields.Float(metadata={"description": "seconds left, estimated"})
    state = fields.Nested(SdapiProgressStateSchema)
    current_image = fields.String(allow_none=True, metadata={"description": "always null"})
    textinfo = fields.String(allow_none=True)


class LoraFileSchema(Schema):
    name = fields.String()
    path = fields.String()
