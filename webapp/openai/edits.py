"""`POST /v1/images/edits`: the multipart upload -> (client fields, output options).

OpenAI's edit semantics on top of the generation translation (`openai.translate`):

- the image comes as `image` or repeated `image[]` file uploads; the first one is the init
  image. A model that takes reference images (Flux Kontext) gets every uploaded image as a
  reference too (the peer's mapping of OpenAI's multi-image edits); other models ignore the
  images after the first (Stable Diffusion takes one init image);
- `mask` is a PNG whose transparent pixels mark where to edit (a mask without alpha: white =
  edit), see `webapp.images`;
- `size` unset or `auto` means the image's size, rounded down to a multiple of 8 and clamped
  into the limits;
- `strength` (extension, [0, 1]) defaults to 1.0 with a mask, so the masked region is redrawn
  from noise as an OpenAI edit does, and otherwise to the operator default, else 0.75, so an
  unmasked edit keeps the image's composition;
- an `sd_cpp_extra_args` block in the prompt wins over the form, as on generations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import request

from webapp.core.capabilities import Capabilities
from webapp.core.checks import MAX_REF_IMAGES
from webapp.core.errors import NOT_YET, ApiError, invalid
from webapp.core.http import check_body_complete
from webapp.core.images import decode_image
from webapp.core.outputs import OutputOptions
from webapp.core.schemas import load
from webapp.openai.schemas import ImageEditSchema
from webapp.openai.translate import NAMES, openai_fields

EDIT_NAMES = {**NAMES, "init_image": "image", "mask_image": "mask", "ref_images": "image[]"}
# Upload fields; `markup` is an OpenAI annotation image this server cannot use.
FILE_FIELDS = ("image", "image[]", "mask", "markup")
MASK_STRENGTH = 1.0


@dataclass(frozen=True)
class EditUpload:
    """What the multipart body carried: text fields and the uploaded file contents."""

    form: dict[str, str]
    images: list[bytes]
    image_param: str  # the field the first image came in: "image" or "image[]"
    mask: bytes | None


def read_upload() -> EditUpload:
    """The current request's multipart body; any other content type answers 400."""
    if request.mimetype != "multipart/form-data":
        raise ApiError(
            400,
            "multipart/form-data required",
            detail="upload `image` (and `mask`) as files and send the other fields as form "
            "fields, as the OpenAI SDK's images.edit does",
            code="invalid_content_type",
        )
    form, files = request.form, request.files  # parsing raises 413 past the body limit
    check_body_complete()
    for key in FILE_FIELDS:
        if key in form:
            raise invalid(key, "must be uploaded as a file, not a text field")
    if "markup" in files:
        raise invalid("markup", NOT_YET, code="unsupported")
    image_param = "image[]" if files.getlist("image[]") else "image"
    uploads = files.getlist("image[]") + files.getlist("image")
    mask = files.get("mask")
    # The SDK sends None as an empty string: treat it as "not sent".
    text = {key: value for key, value in form.items() if value != "" or key == "prompt"}
    return EditUpload(
        form=text,
        images=[upload.read() for upload in uploads],
        image_param=image_param,
        mask=mask.read() if mask is not None else None,
    )


def edit_fields(
    upload: EditUpload, caps: Capabilities, references: bool = False
) -> tuple[dict[str, Any], OutputOptions]:
    """The upload -> (client fields, output options); errors name the form field. With
    `references` (the model takes reference images) every image is also a reference."""
    data = load(ImageEditSchema(), upload.form)
    if not upload.images:
        raise invalid("image", "an image file is required (field image or image[])")
    fields, output = openai_fields(data, caps)
    used = upload.images if references else upload.images[:1]
    if len(used) > MAX_REF_IMAGES:
        raise invalid(upload.image_param, f"at most {MAX_REF_IMAGES} images, got {len(used)}")
    images = [decode_image(image, upload.image_param, caps.limits) for image in used]
    outer: dict[str, Any] = {"init_image": images[0]}
    if references:
        outer["ref_images"] = tuple(images)
    if upload.mask is not None:
        outer["mask_image"] = decode_image(upload.mask, "mask", caps.limits, "openai_mask")
    if "strength" in data:
        outer["strength"] = data["strength"]
    return _merge(fields, outer), output


def _merge(fields: dict[str, Any], outer: Mapping[str, Any]) -> dict[str, Any]:
    # `fields` already holds what an sd_cpp_extra_args block set; the block wins.
    merged = {**outer, **fields}
    if merged.get("mask_image") is not None:
        merged.setdefault("strength", MASK_STRENGTH)
    return merged
