"""The real server on 8 (fake) CPU devices gives the same images and videos under several
device meshes as on one device: CFG pairs and batched images over `data`, attention heads and
MLPs over `tensor`, parameters over `fsdp`, Wan's token sequence over `context` (30 tokens over 4
devices, so the partitioner pads), Flux's and SD3's joint text + image tokens too, and the VAE
decode split over image rows. One server per mesh, each started on 8 fake devices (XLA_FLAGS)."""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
from PIL import Image, ImageSequence

from tests.support.serving import serve

# Each mesh costs a server start and its compilations (about a minute on 2 cores), so two
# meshes cover the four axes; tests/engine/test_sharding.py checks fsdp x tensor placement
# in-process.
MESHES = {
    "data2-tensor4": {"data": 2, "tensor": 4},
    "fsdp2-context4": {"fsdp": 2, "context": 4},
}
SD_BODY = {
    "prompt": "a red fox in snow",
    "negative_prompt": "blurry",
    "width": 64,
    "height": 64,
    "steps": 2,
    "cfg_scale": 5.0,
    "seed": 5,
    "batch_size": 2,
    "sampler_name": "Euler a",
}
# 80x48 pixels, 5 frames -> latents 2 x 6 x 10 -> 2 x 3 x 5 = 30 tokens per sample.
WAN_BODY = {
    "model": "wan",
    "prompt": "waves on a beach",
    "negative_prompt": "static",
    "width": 80,
    "height": 48,
    "video_frames": 5,
    "fps": 8,
    "seed": 9,
    "sample_params": {"sample_steps": 2, "guidance": {"txt_cfg": 4.0}},
    "output_format": "webp",
    "output_compression": 100,  # lossless WebP: frames arrive exactly as decoded
}
# Flux with true CFG (the pair over `data`) and a reference image; SD3.5 with CFG and
# skip-layer guidance. 64x48 pixels: 12 image tokens (+ 6 reference, + 64 text).
REFERENCE = (np.mgrid[0:32, 0:32].sum(0)[..., None].repeat(3, -1) * 4).astype(np.uint8)
DIT_BODIES = {
    "flux": {
        "model": "flux",
        "prompt": "a cat in a hat",
        "negative_prompt": "a dog",
        "width": 64,
        "height": 48,
        "seed": 3,
        "auto_resize_ref_image": False,
        "sample_params": {"sample_steps": 2, "guidance": {"txt_cfg": 3.0}},
    },
    "sd3": {
        "model": "sd3",
        "prompt": "a cat in a hat",
        "width": 64,
        "height": 48,
        "seed": 4,
        "sample_params": {
            "sample_steps": 3,
            "guidance": {
                "txt_cfg": 4.0,
                "slg": {"layers": [1], "layer_start": 0.0, "layer_end": 0.5, "scale": 2.0},
            },
        },
    },
}
CONFIG = """\
models:
  - {{name: sd, family: sd1, path: "demo:sd1-tiny"}}
  - {{name: wan, family: wan21, path: "demo:wan-tiny"}}
  - {{name: flux, family: flux, path: "demo:flux-tiny"}}
  - {{name: sd3, family: sd3, path: "demo:sd3-tiny"}}
server: {{min_height: 32}}
mesh: {mesh}
"""


def webp_frames(data: bytes, fps: int) -> np.ndarray:
    """Every frame of an animated WebP, repeating the ones libwebp merged (their durations)."""
    frames = []
    for frame in ImageSequence.Iterator(Image.open(io.BytesIO(data))):
        frame.load()  # a frame's duration is known once it is decoded
        repeat = round(frame.info["duration"] * fps / 1000)
        frames += [np.asarray(frame.convert("RGB"))] * repeat
    return np.stack(frames)


def _generate(server) -> dict[str, np.ndarray]:
    response = server.post("/sdapi/v1/txt2img", json=SD_BODY)
    assert response.status_code == 200, response.text
    images = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in response.json()["images"]
    ]
    accepted = server.post("/sdcpp/v1/vid_gen", json=WAN_BODY)
    assert accepted.status_code == 202, accepted.text
    job = server.poll(accepted.json()["id"], until=("completed", "failed"), timeout=600)[-1]
    assert job["status"] == "completed", job["error"]
    video = webp_frames(base64.b64decode(job["result"]["b64_json"]), WAN_BODY["fps"])
    outputs = {"sd": np.stack(images), "wan": video}
    for key, body in DIT_BODIES.items():
        if key == "flux":
            buffer = io.BytesIO()
            Image.fromarray(REFERENCE).save(buffer, format="PNG")
            body = {**body, "ref_images": [base64.b64encode(buffer.getvalue()).decode()]}
        accepted = server.post("/sdcpp/v1/img_gen", json=body)
        assert accepted.status_code == 202, accepted.text
        job = server.poll(accepted.json()["id"], until=("completed", "failed"), timeout=600)[-1]
        assert job["status"] == "completed", job["error"]
        data = base64.b64decode(job["result"]["images"][0]["b64_json"])
        outputs[key] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]
    return outputs


def _serve_and_generate(root, mesh: dict) -> dict[str, np.ndarray]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.pop("JAXVIDEO_API_KEY", None)
    root.mkdir()
    config = root / "serve.yaml"
    config.write_text(CONFIG.format(mesh=json.dumps(mesh)))
    with serve(config, root, env) as server:
        outputs = _generate(server)
        if mesh:
            assert f"device mesh {mesh}" in server.log.read_text()
    return outputs


# One test, not one per mesh: the servers run once and in turn (pytest-xdist may tear a
# module fixture down between parametrized tests and pay for every server twice).
def test_sharded_servers_generate_what_one_device_does(tmp_path):
    reference = _serve_and_generate(tmp_path / "one-device", {})
    assert reference["sd"].shape == (2, 64, 64, 3)
    assert reference["wan"].shape == (5, 48, 80, 3)
    assert reference["flux"].shape == reference["sd3"].shape == (1, 48, 64, 3)
    # The batch's two images differ (different seeds): the equality below is not vacuous.
    assert not np.array_equal(reference["sd"][0], reference["sd"][1])
    for name, mesh in MESHES.items():
        sharded = _serve_and_generate(tmp_path / name, mesh)
        for key in ("sd", "wan", *DIT_BODIES):
            got, want = sharded[key].astype(int), reference[key].astype(int)
            assert got.shape == want.shape, (name, key)
            # Sharded matmuls and reductions sum in another order (fp32), which the random
            # tiny networks amplify a little: a few pixels may land a level or two off.
            diff = np.abs(got - want)
            assert diff.max() <= 4 and (diff > 1).mean() < 1e-3, (name, key, diff.max())
