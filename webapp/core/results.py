"""What finished jobs hold (encoded files plus what the surfaces echo back), and how the
durable store keeps them: `stored()` gives the files and a JSON manifest naming them,
`from_stored` reads them back after a restart."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from jaxvideo.request import GenerationRequest
from jaxvideo.request_codec import decode_request, encode_request

ReadFn = Callable[[str], bytes]  # a stored file's bytes, by the name its manifest gives


@dataclass(frozen=True)
class EncodedImage:
    index: int
    data: bytes
    seed: int


@dataclass(frozen=True)
class VideoJob:
    """What a video job's surfaces report before it finishes (the job's `meta`)."""

    surface: str  # "openai" (/v1/videos*) or "sdcpp"
    model: str
    prompt: str
    width: int
    height: int
    num_frames: int  # the count the model will really make (Wan: 4n + 1)
    fps: int
    seed: int
    return_state: bool


@dataclass(frozen=True)
class VideoResult:
    """A finished video job: the encoded container plus what the surfaces echo back."""

    data: bytes
    output_format: str
    mime_type: str
    fps: int
    frame_count: int
    seed: int
    inference_time_s: float
    thumbnail: bytes | None  # WebP of the first frame (OpenAI's `variant=thumbnail`)
    state: dict[str, Any] | None
    file_path: str | None  # the MP4 copy written for `output_path`
    # What a step cache skipped (jaxvideo.sampling.step_cache.summary); None without one.
    step_cache: dict[str, Any] | None = None

    def stored(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        files = {f"video.{self.output_format}": self.data}
        if self.thumbnail is not None:
            files["thumbnail.webp"] = self.thumbnail
        described = {k: v for k, v in asdict(self).items() if k not in ("data", "thumbnail")}
        return files, {"type": "video", "files": list(files), **described}

    @classmethod
    def from_stored(cls, manifest: Mapping[str, Any], read: ReadFn) -> VideoResult:
        fields = {k: v for k, v in manifest.items() if k not in ("type", "files")}
        names = manifest["files"]
        thumbnail = read("thumbnail.webp") if "thumbnail.webp" in names else None
        return cls(data=read(names[0]), thumbnail=thumbnail, **fields)


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

    def stored(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        files = {f"image-{image.index}.{self.output_format}": image.data for image in self.images}
        entries = [
            {"index": image.index, "seed": image.seed, "file": name}
            for image, name in zip(self.images, files, strict=True)
        ]
        manifest = {
            "type": "images",
            "images": entries,
            "output_format": self.output_format,
            "request": encode_request(self.request)[0],  # the echo holds no pixels
            "model": self.model,
            "infotexts": self.infotexts,
            "info": self.info,
            "img2img": self.img2img,
        }
        return files, manifest

    @classmethod
    def from_stored(cls, manifest: Mapping[str, Any], read: ReadFn) -> ImageResult:
        images = [EncodedImage(e["index"], read(e["file"]), e["seed"]) for e in manifest["images"]]
        return cls(
            images=images,
            output_format=manifest["output_format"],
            request=decode_request(manifest["request"]),
            model=manifest["model"],
            infotexts=list(manifest["infotexts"]),
            info=dict(manifest["info"]),
            img2img=manifest["img2img"],
        )


def stored_result(manifest: Mapping[str, Any], read: ReadFn) -> ImageResult | VideoResult:
    """The result a manifest describes, its files read back."""
    kind = {"images": ImageResult, "video": VideoResult}[manifest["type"]]
    return kind.from_stored(manifest, read)
