"""Video containers: what `encode_video` writes is decoded again (ffmpeg, Pillow for WebP) and
checked for frame count, size, rate, codec and pixels close to the input."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from jaxvideo import media
from jaxvideo.media import VIDEO_FORMATS, encode_video, video_mime_type

FPS = 16
FORMATS = ("mp4", "webm", "webp", "avi")
CODECS = {"mp4": "h264", "webm": "vp9", "avi": "mjpeg"}
SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int+full_chroma_inp"


def moving_clip(frames: int = 17, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth colour ramps plus a blob sliding ~2.5 px per frame, so every frame differs."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    clip = []
    for t in range(frames):
        centre = width * (0.2 + 0.6 * t / max(frames - 1, 1))
        blob = 255 * np.exp(-((x - centre) ** 2 + (y - height / 2) ** 2) / (2 * (width / 6) ** 2))
        clip.append(np.stack([255 * x / (width - 1), 255 * y / (height - 1), blob], axis=-1))
    return np.round(np.stack(clip)).astype(np.uint8)


def probe(data: bytes, fmt: str) -> tuple[dict, np.ndarray]:
    """Decodes a container: its stream facts and all its frames as (F, H, W, 3) uint8."""
    if fmt == "webp":
        return probe_webp(data)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip.{fmt}"
        path.write_bytes(data)
        info = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
            capture_output=True,
            text=True,
        ).stderr
        # Upsample chroma the way players do: ffmpeg's default RGB output skips full-resolution
        # chroma interpolation, which shifts colour ramps by a quarter pixel.
        reader = imageio_ffmpeg.read_frames(str(path), output_params=["-sws_flags", SWS_FLAGS])
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
    stream = re.search(r"Stream #0:0.*?: Video: (\S+).*?, (\w+)\(([^)]*)\)", info)
    facts = {
        "codec": stream.group(1),
        "pix_fmt": stream.group(2),
        "colour": stream.group(3),
        "size": (width, height),
        "fps": meta["fps"],
    }
    return facts, np.stack(frames)


def probe_webp(data: bytes) -> tuple[dict, np.ndarray]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP"
    frames, durations = [], []
    for index in range(image.n_frames):
        image.seek(index)
        frames.append(np.asarray(image.convert("RGB")))
        durations.append(image.info.get("duration"))
    facts = {"size": image.size, "durations": durations, "loop": image.info.get("loop")}
    return facts, np.stack(frames)


def top_level_boxes(mp4: bytes) -> list[str]:
    """ISO-BMFF top-level box types in file order."""
    boxes, offset = [], 0
    while offset < len(mp4):
        size, kind = struct.unpack(">I4s", mp4[offset : offset + 8])
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", mp4[offset + 8 : offset + 16])[0]
        boxes.append(kind.decode("ascii"))
        offset += size
    return boxes


def mean_abs_error(decoded: np.ndarray, clip: np.ndarray) -> float:
    return float(np.abs(decoded.astype(np.int16) - clip).mean())


@pytest.fixture
def own_tempdir(tmp_path, monkeypatch) -> Path:
    """Points the temp folder at an empty directory so leftovers can be seen."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("fmt", FORMATS)
def test_clip_round_trips_with_its_frames_size_rate_and_pixels(fmt, own_tempdir):
    clip = moving_clip()
    data = encode_video(clip, FPS, fmt, quality=95)
    assert list(own_tempdir.iterdir()) == []
    facts, decoded = probe(data, fmt)
    assert decoded.shape == clip.shape
    assert facts["size"] == (64, 48)
    if fmt == "webp":
        assert facts["durations"] == [round(1000 / FPS)] * len(clip) and facts["loop"] == 0
    else:
        assert facts["codec"] == CODECS[fmt] and facts["fps"] == FPS
    assert mean_abs_error(decoded, clip) < 2.5


def test_mp4_is_h264_yuv420p_bt709_with_the_index_before_the_media():
    data = encode_video(moving_clip(), FPS, "mp4")
    facts, _ = probe(data, "mp4")
    assert facts["pix_fmt"] == "yuv420p" and facts["colour"].startswith("tv, bt709")
    boxes = top_level_boxes(data)
    assert boxes[0] == "ftyp" and boxes.index("moov") < boxes.index("mdat")


def test_webm_and_avi_streams_carry_the_colour_their_players_assume():
    webm, _ = probe(encode_video(moving_clip(), FPS, "webm"), "webm")
    assert webm["pix_fmt"] == "yuv420p" and webm["colour"].startswith("tv, bt709")
    avi, _ = probe(encode_video(moving_clip(), FPS, "avi"), "avi")
    assert avi["pix_fmt"] == "yuvj420p" and avi["colour"].startswith("pc, bt470bg")


@pytest.mark.parametrize("fmt", FORMATS)
def test_quality_maps_onto_the_codec(fmt):
    clip = moving_clip()
    good, bad = (encode_video(clip, FPS, fmt, quality=q) for q in (95, 5))
    good_error = mean_abs_error(probe(good, fmt)[1], clip)
    bad_error = mean_abs_error(probe(bad, fmt)[1], clip)
    assert len(bad) < len(good)
    assert bad_error > 2 * good_error + 1.0, (good_error, bad_error)
    # Out-of-range qualities clamp instead of failing (WebM holds a random segment id, so the
    # decoded pixels are compared, not the bytes).
    clamped, best = (probe(encode_video(clip[:2], FPS, fmt, q), fmt)[1] for q in (500, 100))
    assert np.array_equal(clamped, best)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_single_frame_is_a_valid_video(fmt):
    clip = moving_clip(frames=1)
    facts, decoded = probe(encode_video(clip, FPS, fmt), fmt)
    assert decoded.shape == clip.shape and facts["size"] == (64, 48)
    assert mean_abs_error(decoded, clip) < 3.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_odd_sizes_are_kept_or_padded_by_edge_replication_for_h264(fmt):
    clip = moving_clip(frames=5, height=47, width=63)
    facts, decoded = probe(encode_video(clip, FPS, fmt), fmt)
    padded = fmt == "mp4"
    assert facts["size"] == ((64, 48) if padded else (63, 47))
    assert decoded.shape == (5, 47 + padded, 63 + padded, 3)
    assert mean_abs_error(decoded[:, :47, :63], clip) < 3.0
    if padded:  # the extra column/row repeats the last one, so no dark border shows
        assert mean_abs_error(decoded[:, :47, 63], clip[:, :, 62]) < 3.0
        assert mean_abs_error(decoded[:, 47, :63], clip[:, 46]) < 3.0


def test_unknown_formats_and_bad_frames_are_refused():
    clip = moving_clip(frames=2)
    with pytest.raises(ValueError, match="'gif'.*mp4, webm, webp, avi"):
        encode_video(clip, FPS, "gif")
    with pytest.raises(ValueError, match="mp4, webm, webp, avi"):
        video_mime_type("mkv")
    with pytest.raises(ValueError, match="F >= 1"):
        encode_video(clip[:0], FPS)
    with pytest.raises(ValueError, match="uint8"):
        encode_video(clip.astype(np.float32), FPS)
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        encode_video(clip[0], FPS)
    with pytest.raises(ValueError, match="fps"):
        encode_video(clip, 0)


def test_mime_types_follow_the_format_names():
    assert VIDEO_FORMATS == {
        "mp4": "video/mp4",
        "webm": "video/webm",
        "webp": "image/webp",
        "avi": "video/x-msvideo",
    }
    assert video_mime_type("MP4") == "video/mp4" and video_mime_type("avi") == "video/x-msvideo"
    assert encode_video(moving_clip(frames=2), FPS, "WebM")[:4] == b"\x1a\x45\xdf\xa3"  # EBML


def test_an_ffmpeg_failure_raises_with_its_message_and_leaves_no_files(own_tempdir, monkeypatch):
    monkeypatch.setitem(media._CODEC_ARGS, "mp4", lambda quality: ["-c:v", "no_such_encoder"])
    with pytest.raises(RuntimeError, match="ffmpeg failed to encode mp4.*no_such_encoder"):
        encode_video(moving_clip(frames=2), FPS, "mp4")
    assert list(own_tempdir.iterdir()) == []
