"""Encoding generated frames (uint8 numpy arrays) into image files (Pillow) and videos (ffmpeg)."""

from __future__ import annotations

import io
import subprocess
import tempfile
from collections.abc import Mapping

import imageio_ffmpeg
import numpy as np
from PIL import Image, PngImagePlugin

IMAGE_FORMATS = ("png", "jpeg", "webp")


def encode_image(
    pixels: np.ndarray,
    output_format: str = "png",
    quality: int = 100,
    text: Mapping[str, str] | None = None,
) -> bytes:
    """Encodes one HxWx3 uint8 image.

    `quality` (0-100) applies to JPEG and WebP (100 means lossless WebP); PNG is always
    lossless and maps it to the zlib level. `text` becomes PNG tEXt chunks (A1111 keeps the
    generation `parameters` there).
    """
    fmt = output_format.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unsupported image format {output_format!r}")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected HxWx3 uint8 pixels, got {pixels.dtype} {pixels.shape}")
    quality = int(min(max(quality, 0), 100))
    image = Image.fromarray(pixels)
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)
        image.save(buf, format="PNG", pnginfo=info, compress_level=6)
    elif fmt == "jpeg":
        image.save(buf, format="JPEG", quality=max(quality, 1))
    else:
        if quality >= 100:
            image.save(buf, format="WEBP", lossless=True)
        else:
            image.save(buf, format="WEBP", quality=quality)
    return buf.getvalue()


def resize_image(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWx3 or HxW uint8 resized to (height, width) with Lanczos; unchanged if it fits."""
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))


# Video containers. ffmpeg (bundled by imageio-ffmpeg) does the codecs and muxing, Pillow the
# animated WebP; every encoder named below is present in the bundled build (checked with
# `ffmpeg -encoders`: libx264, libvpx-vp9, mjpeg).
VIDEO_FORMATS: dict[str, str] = {
    "mp4": "video/mp4",
    "webm": "video/webm",
    "webp": "image/webp",
    "avi": "video/x-msvideo",
}

# Tiny clips are the common case and the server encodes next to other work: a couple of
# threads keeps ffmpeg from oversubscribing the cores without slowing small videos.
_FFMPEG_THREADS = 2

# Players decode H.264/VP9 as BT.709 limited range (the HD convention) and JPEG as BT.601 full
# range (JFIF): convert RGB with exactly that matrix and range and tag the stream with it, so
# colours match in every player whatever ffmpeg's defaults are. (Option strings hold no spaces
# inside an argument, so `.split()` gives the argv list.)
_BT709_YUV420 = (
    "-vf scale=out_color_matrix=bt709:out_range=tv,"
    "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv -pix_fmt yuv420p"
)
_JFIF_YUV420 = (
    "-vf scale=out_color_matrix=bt601:out_range=pc,setparams=colorspace=bt470bg:range=pc"
    " -pix_fmt yuv420p"
)


def video_mime_type(fmt: str) -> str:
    """MIME type of a video container name from `VIDEO_FORMATS`."""
    return VIDEO_FORMATS[_video_format(fmt)]


def encode_video(frames: np.ndarray, fps: int, fmt: str = "mp4", quality: int = 90) -> bytes:
    """Encodes (F, H, W, 3) uint8 frames (F >= 1) played at `fps` into a container file.

    mp4: H.264 (libx264) yuv420p with the index up front (+faststart) so playback starts before
    the download ends; webm: VP9 constant quality; webp: animated WebP looping forever (one
    frame: a still WebP; libwebp merges a frame it finds unchanged within its lossy tolerance
    into the previous one, keeping the total duration); avi: Motion JPEG, as
    stable-diffusion.cpp writes it. `quality` (0-100, clamped)
    maps onto each codec's own knob. H.264 4:2:0 needs even sizes, so an odd width/height is
    padded by repeating the last column/row (the MP4 is then one pixel wider/taller); the other
    formats keep odd sizes as they are.
    """
    fmt = _video_format(fmt)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(
            f"expected (F, H, W, 3) uint8 frames with F >= 1, got {frames.dtype} {frames.shape}"
        )
    if int(fps) != fps or fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    quality = int(min(max(quality, 0), 100))
    if fmt == "webp":
        return _encode_animated_webp(frames, int(fps), quality)
    if fmt == "mp4":
        frames = _pad_to_even(frames)
    return _run_ffmpeg(frames, int(fps), fmt, _CODEC_ARGS[fmt](quality))


def _video_format(fmt: str) -> str:
    key = fmt.lower()
    if key not in VIDEO_FORMATS:
        allowed = ", ".join(VIDEO_FORMATS)
        raise ValueError(f"unsupported video format {fmt!r}; expected one of {allowed}")
    return key


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Edge-replicates one row/column where H or W is odd (padding keeps every input pixel)."""
    _, height, width, _ = frames.shape
    if height % 2 == 0 and width % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _lerp_knob(quality: int, worst: float, best: float) -> int:
    """Quality 0 -> the codec's `worst` setting, 100 -> `best`, linear in between."""
    return round(worst + (best - worst) * quality / 100)


def _h264_args(quality: int) -> list[str]:
    # crf 51 is libx264's worst; 18 is visually lossless, beyond it files only grow.
    crf = _lerp_knob(quality, 51, 18)
    return f"-c:v libx264 -preset medium -crf {crf} {_BT709_YUV420} -movflags +faststart".split()


def _vp9_args(quality: int) -> list[str]:
    # VP9 over VP8 (both bundled): smaller at equal quality, and every WebM player has it.
    # `-b:v 0` makes crf (0-63) pure constant quality; cpu-used 5 is libvpx's fast "good" mode.
    crf = _lerp_knob(quality, 63, 15)
    return (
        f"-c:v libvpx-vp9 -crf {crf} -b:v 0 -deadline good -cpu-used 5 -row-mt 1 {_BT709_YUV420}"
    ).split()


def _mjpeg_args(quality: int) -> list[str]:
    # q:v is the JPEG quantiser scale: 31 coarsest, 2 finest that players commonly handle.
    qscale = _lerp_knob(quality, 31, 2)
    return f"-c:v mjpeg -q:v {qscale} {_JFIF_YUV420}".split()


_CODEC_ARGS = {"mp4": _h264_args, "webm": _vp9_args, "avi": _mjpeg_args}


def _run_ffmpeg(frames: np.ndarray, fps: int, fmt: str, codec_args: list[str]) -> bytes:
    """Pipes raw RGB frames into ffmpeg and returns the container it wrote.

    The output goes to a temporary file because the muxers seek back (the MP4 index moved to
    the front, WebM cues and duration, AVI frame index); the folder is removed on any outcome.
    """
    _, height, width, _ = frames.shape
    with tempfile.TemporaryDirectory(prefix="jaxvideo-video-") as folder:
        path = f"{folder}/out.{fmt}"
        raw_input = f"-f rawvideo -pix_fmt rgb24 -video_size {width}x{height} -framerate {fps}"
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *f"-hide_banner -loglevel error {raw_input} -i pipe:0".split(),
            *codec_args,
            *f"-threads {_FFMPEG_THREADS} -y".split(),
            path,
        ]
        raw = memoryview(np.ascontiguousarray(frames).reshape(-1))
        done = subprocess.run(command, input=raw, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"ffmpeg failed to encode {fmt} (exit {done.returncode}): {message}")
        with open(path, "rb") as f:
            return f.read()


def _encode_animated_webp(frames: np.ndarray, fps: int, quality: int) -> bytes:
    images = [Image.fromarray(frame) for frame in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        quality=quality,
    )
    return buf.getvalue()
