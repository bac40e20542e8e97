"""Flux.1 and SD3.5 through the real server (demo models) on all three surfaces: the fields
that exist for them (distilled guidance, flow_shift, skip-layer guidance, reference images)
each change the picture and give exactly what the library makes of the same request; the
capabilities say which model has which; a field a model cannot use is a 400 naming it."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import openai
import pytest
from PIL import Image
from safetensors.numpy import save_file

from jaxvideo.demo import resolve_demo
from jaxvideo.pipelines.flux import FluxPipeline
from jaxvideo.pipelines.sd3 import StableDiffusion3Pipeline
from jaxvideo.request import SkipLayerGuidance, build_request
from tests.support.serving import serve

OWN_SERVERS = True
SIZE = 64
STEPS = 3
SEED = 21
CONFIG = f"""\
models:
  - {{name: flux-tiny-demo, family: flux, path: "demo:flux-tiny"}}
  - {{name: sd3-tiny-demo, family: sd3, path: "demo:sd3-tiny"}}
server:
  max_queue_size: 8
  lora_dir: loras
default_request: {{width: {SIZE}, height: {SIZE}, steps: {STEPS}}}
"""
LORA = "flux_style"


def write_flux_lora(path) -> None:
    """A diffusers/PEFT LoRA (rank 4) on the tiny Flux's attention and single-block MLP."""
    rng = np.random.default_rng(7)
    width = 32  # the demo transformer's 2 heads x 16
    tensors = {}
    for module, out in (
        ("transformer_blocks.0.attn.to_q", width),
        ("transformer_blocks.0.attn.add_k_proj", width),
        ("single_transformer_blocks.0.proj_mlp", 4 * width),
    ):
        tensors[f"transformer.{module}.lora_A.weight"] = rng.standard_normal((4, width))
        tensors[f"transformer.{module}.lora_B.weight"] = rng.standard_normal((out, 4))
    save_file({k: v.astype(np.float32) * 0.3 for k, v in tensors.items()}, str(path))


@pytest.fixture(scope="module")
def dit_server(tmp_path_factory, e2e_cache_dir):
    root = tmp_path_factory.mktemp("dit")
    (root / "loras").mkdir()
    write_flux_lora(root / "loras" / f"{LORA}.safetensors")
    config = root / "serve.yaml"
    config.write_text(CONFIG.replace("lora_dir: loras", f"lora_dir: {root / 'loras'}"))
    env = {k: v for k, v in os.environ.items() if k != "JAXVIDEO_API_KEY"}
    env["JAXVIDEO_CACHE_DIR"] = str(e2e_cache_dir)
    with serve(config, root, env) as handle:
        yield handle
    assert "Traceback" not in handle.log.read_text()


@pytest.fixture(scope="module")
def library(e2e_cache_dir):
    """The same demo models loaded in this process, as a library user would."""
    os.environ["JAXVIDEO_CACHE_DIR"] = str(e2e_cache_dir)
    return {
        "flux-tiny-demo": FluxPipeline(resolve_demo("demo:flux-tiny")),
        "sd3-tiny-demo": StableDiffusion3Pipeline(resolve_demo("demo:sd3-tiny")),
    }


def expected(library, model: str, **fields) -> np.ndarray:
    pipe = library[model]
    base = {"prompt": "a red circle", "seed": SEED, "width": SIZE, "height": SIZE, "steps": STEPS}
    request = build_request({**base, **fields, "model": model}, None, pipe.defaults)
    return pipe.generate(request).images[0]


def picture(b64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64_png))).convert("RGB"))


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def native(server, model: str, **body) -> np.ndarray:
    """An sdcpp img_gen job, waited for: its first picture."""
    params = body.pop("sample_params", {})
    payload = {
        "model": model,
        "prompt": "a red circle",
        "seed": SEED,
        "sample_params": {"sample_steps": STEPS, **params},
        **body,
    }
    response = server.post("/sdcpp/v1/img_gen", json=payload)
    assert response.status_code == 202, response.text
    done = server.poll(response.json()["id"], until=("completed", "failed"))[-1]
    assert done["status"] == "completed", done
    return picture(done["result"]["images"][0]["b64_json"])


def refs() -> list[np.ndarray]:
    y, x = np.mgrid[0:48, 0:32]
    first = np.stack([x * 7, y * 5, (x + y) * 3], -1).clip(0, 255).astype(np.uint8)
    return [first, np.ascontiguousarray(first[::-1, ::-1])]


def test_capabilities_say_which_model_has_which_field(dit_server):
    models = {m["name"]: m for m in dit_server.get("/sdcpp/v1/capabilities").json()["models"]}
    flux = models["flux-tiny-demo"]["features_by_mode"]["img_gen"]
    sd3 = models["sd3-tiny-demo"]["features_by_mode"]["img_gen"]
    assert flux["ref_images"] and flux["distilled_guidance"] and flux["flow_shift"]
    assert not flux["slg"]
    assert sd3["slg"] and sd3["flow_shift"]
    assert not sd3["ref_images"] and not sd3["distilled_guidance"]
    # Flow models: the flow samplers (UniPC, euler, heun, dpm++2m, ...).
    assert {"euler", "heun", "dpm++2m", "unipc"} <= set(models["flux-tiny-demo"]["samplers"])


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {}),
        (
            {"sample_params": {"guidance": {"distilled_guidance": 6.0}}},
            {"distilled_guidance": 6.0},
        ),
        ({"sample_params": {"flow_shift": 5.0}}, {"flow_shift": 5.0}),
        (
            {"ref_images": [png_b64(r) for r in refs()], "auto_resize_ref_image": False},
            {"ref_images": tuple(refs()), "auto_resize_ref_image": False},
        ),
        (
            {
                "ref_images": [png_b64(r) for r in refs()],
                "auto_resize_ref_image": False,
                "increase_ref_index": True,
            },
            {
                "ref_images": tuple(refs()),
                "auto_resize_ref_image": False,
                "increase_ref_index": True,
            },
        ),
    ],
    ids=["plain", "distilled_guidance", "flow_shift", "ref_images", "increase_ref_index"],
)
def test_flux_fields_change_the_picture_as_the_library_does(dit_server, library, body, fields):
    served = native(dit_server, "flux-tiny-demo", **body)
    np.testing.assert_array_equal(served, expected(library, "flux-tiny-demo", **fields))
    if fields:
        plain = expected(library, "flux-tiny-demo")
        assert np.abs(served.astype(int) - plain).max() > 0


def test_sd3_skip_layer_guidance_changes_the_picture_as_the_library_does(dit_server, library):
    slg = {"layers": [1, 2], "layer_start": 0.0, "layer_end": 0.5, "scale": 3.0}
    served = native(
        dit_server,
        "sd3-tiny-demo",
        sample_params={"sample_steps": 6, "guidance": {"txt_cfg": 4.0, "slg": slg}},
    )
    want = expected(
        library, "sd3-tiny-demo", steps=6, guidance_scale=4.0, slg=SkipLayerGuidance(**slg)
    )
    np.testing.assert_array_equal(served, want)
    plain = expected(library, "sd3-tiny-demo", steps=6, guidance_scale=4.0)
    assert np.abs(served.astype(int) - plain).max() > 0


def test_openai_edit_with_two_images_uses_them_as_references(dit_server, library, tmp_path):
    client = openai.OpenAI(base_url=dit_server.url + "/v1", api_key="unused")
    files = []
    for i, image in enumerate(refs()):
        path = tmp_path / f"ref{i}.png"
        Image.fromarray(image).save(path)
        files.append(path)
    with open(files[0], "rb") as first, open(files[1], "rb") as second:
        response = client.images.edit(
            model="flux-tiny-demo",
            image=[first, second],
            prompt="a red circle",
            size=f"{SIZE}x{SIZE}",
            extra_body={"seed": SEED, "steps": STEPS, "strength": 1.0},
        )
    # The first image is the init image too (the peer's mapping); strength 1 redraws it all.
    want = expected(
        library,
        "flux-tiny-demo",
        init_image=refs()[0],
        strength=1.0,
        ref_images=tuple(refs()),
    )
    np.testing.assert_array_equal(picture(response.data[0].b64_json), want)


def test_sdapi_extra_images_are_references(dit_server, library):
    body = {
        "prompt": "a red circle",
        "seed": SEED,
        "steps": STEPS,
        "width": SIZE,
        "height": SIZE,
        "cfg_scale": 2.5,  # a distilled model's guidance on the sdapi surface
        "extra_images": [png_b64(r) for r in refs()],
        "override_settings": {"sd_model_checkpoint": "flux-tiny-demo"},
    }
    response = dit_server.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    want = expected(library, "flux-tiny-demo", distilled_guidance=2.5, ref_images=tuple(refs()))
    np.testing.assert_array_equal(picture(response.json()["images"][0]), want)


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        ("sd3-tiny-demo", {"ref_images": [png_b64(refs()[0])]}, "ref_images"),
        (
            "sd3-tiny-demo",
            {"sample_params": {"guidance": {"distilled_guidance": 5.0}}},
            "sample_params.guidance.distilled_guidance",
        ),
        (
            "flux-tiny-demo",
            {"sample_params": {"guidance": {"slg": {"layers": [1], "scale": 2.0}}}},
            "sample_params.guidance.slg",
        ),
        ("flux-tiny-demo", {"ref_images": [png_b64(refs()[0])] * 5}, "ref_images"),
        ("flux-tiny-demo", {"ref_images": ["not an image"]}, "ref_images[0]"),
    ],
    ids=["refs-on-sd3", "distilled-on-sd3", "slg-on-flux", "too-many-refs", "bad-ref"],
)
def test_fields_a_model_cannot_use_are_refused_by_name(dit_server, model, body, param):
    response = dit_server.post("/sdcpp/v1/img_gen", json={"model": model, "prompt": "x", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]  # sd.cpp's envelope: {"error": "<param>: why"}
    assert error.startswith(f"{param}: "), error
    if param.startswith("ref_images") and model == "flux-tiny-demo":
        return  # a bad or excess image, refused before the model is asked
    assert repr(model) in error


def test_default_distilled_guidance_is_neutral_on_models_without_it(dit_server):
    # sd.cpp clients send guidance.distilled_guidance 3.5 in every body.
    body = {
        "model": "sd3-tiny-demo",
        "prompt": "x",
        "sample_params": {
            "sample_steps": 1,
            "guidance": {"txt_cfg": 2.0, "distilled_guidance": 3.5},
        },
    }
    response = dit_server.post("/sdcpp/v1/img_gen", json=body)
    assert response.status_code == 202, response.text


def test_a_flux_lora_changes_the_picture_and_multiplier_0_does_not(dit_server, library):
    plain = native(dit_server, "flux-tiny-demo")
    styled = native(dit_server, "flux-tiny-demo", lora=[{"path": LORA, "multiplier": 1.0}])
    off = native(dit_server, "flux-tiny-demo", lora=[{"path": LORA, "multiplier": 0.0}])
    assert np.abs(styled.astype(int) - plain).max() > 0
    np.testing.assert_array_equal(off, plain)
    np.testing.assert_array_equal(plain, expected(library, "flux-tiny-demo"))
