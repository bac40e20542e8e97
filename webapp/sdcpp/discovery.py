"""What `GET /sdcpp/v1/capabilities` describes: per mode, the defaults a request sending
nothing gets (in the native request shape) and the features that really work, per model."""

from __future__ import annotations

from typing import Any

from jaxvideo.request import GenerationRequest
from jaxvideo.results import ModelInfo
from webapp.core.outputs import DEFAULT_VIDEO_QUALITY
from webapp.core.service import Service
from webapp.sdcpp.translate import VIDEO_FORMATS

# sd.cpp's feature names, and jaxvideo's for what its features do not name: the distilled
# guidance of Flux dev/Kontext, SD3.5's skip-layer guidance, and a flow model's flow_shift.
FEATURES = {
    "img_gen": (
        "init_image",
        "mask_image",
        "control_image",
        "ref_images",
        "lora",
        "vae_tiling",
        "cache",
        "cancel_queued",
        "cancel_generating",
        "distilled_guidance",
        "slg",
        "flow_shift",
    ),
    "vid_gen": (
        "init_image",
        "end_image",
        "control_frames",
        "high_noise_sample_params",
        "lora",
        "vae_tiling",
        "cache",
        "cancel_queued",
        "cancel_generating",
        "flow_shift",
    ),
}
# Refused by this server whatever the model (the native translation answers 400).
REFUSED = frozenset(("control_image", "control_frames"))
# What the server does for every model: its job table cancels queued and running jobs.
SERVER_FEATURES = frozenset(("cancel_queued", "cancel_generating"))


def mode_features(svc: Service, info: ModelInfo, mode: str) -> dict[str, bool]:
    """A feature is advertised only when it really works here: the model declares it (or the
    server provides it), this server does not refuse it, and LoRA needs a LoRA folder."""
    declared = SERVER_FEATURES.union(info.features.get(mode, ()))
    if info.cache_modes:
        declared = declared | {"cache"}
    lora_ok = svc.caps.limits.lora_dir is not None
    return {
        name: name in declared and name not in REFUSED and (name != "lora" or lora_ok)
        for name in FEATURES[mode]
    }


def model_entry(svc: Service, info: ModelInfo) -> dict[str, Any]:
    """A served model with what it really supports (Wan has its own samplers/schedulers)."""
    own = svc.caps.for_model(info)
    return {
        "name": info.name,
        "family": info.family,
        "modes": list(info.modes),
        "samplers": list(own.samplers),
        "schedulers": list(own.schedulers),
        "features_by_mode": {mode: mode_features(svc, info, mode) for mode in info.modes},
        "cache_modes": list(info.cache_modes),
        "loaded": svc.is_loaded(info.name),
        # jaxvideo's: what a client (the web page) needs to offer only what the model takes.
        "size_multiple": info.size_multiple,
        "frame_multiple": info.frame_multiple,
        "defaults_by_mode": {mode: MODE_DEFAULTS[mode](svc, info.name) for mode in info.modes},
    }


def effective_request(svc: Service, model: str) -> tuple[GenerationRequest, int]:
    """What a request sending nothing gets on `model` (operator over family), and its seed
    (-1: random)."""
    merged = {**svc.model_info(model).defaults, **svc.config.default_request, "model": model}
    return GenerationRequest(**{k: v for k, v in merged.items() if k != "seed"}), merged.get(
        "seed", -1
    )


def sample_defaults(req: GenerationRequest, guidance: float, steps: int) -> dict[str, Any]:
    return {
        "scheduler": req.scheduler,
        "sample_method": req.sampler,
        "sample_steps": steps,
        "eta": req.eta,
        "shifted_timestep": 0,
        "flow_shift": req.flow_shift,
        "guidance": {
            "txt_cfg": guidance,
            "img_cfg": None,
            "distilled_guidance": 3.5 if req.distilled_guidance is None else req.distilled_guidance,
            "slg": {"layers": [7, 8, 9], "layer_start": 0.01, "layer_end": 0.2, "scale": 0.0},
        },
    }


def shared_defaults(req: GenerationRequest, seed: int) -> dict[str, Any]:
    """The defaults img_gen and vid_gen share, in the native request shape."""
    return {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "clip_skip": req.clip_skip,
        "width": req.width,
        "height": req.height,
        "strength": req.strength,
        "seed": seed,
        "sample_params": sample_defaults(req, req.guidance_scale, req.steps),
        "vae_tiling_params": {
            "enabled": False,
            "tile_size_x": 0,
            "tile_size_y": 0,
            "target_overlap": 0.5,
            "rel_size_x": 0.0,
            "rel_size_y": 0.0,
        },
        "cache_mode": "disabled",
        "cache_option": "",
        "scm_mask": "",
        "scm_policy_dynamic": True,
    }


def image_defaults(svc: Service, model: str) -> dict[str, Any]:
    """The effective img_gen defaults of `model`."""
    req, seed = effective_request(svc, model)
    return {
        **shared_defaults(req, seed),
        "batch_count": req.batch_count,
        "auto_resize_ref_image": True,
        "increase_ref_index": False,
        "control_strength": 0.9,
        "embed_image_metadata": True,
        "output_format": "png",
        "output_compression": 100,
    }


def video_defaults(svc: Service, model: str) -> dict[str, Any]:
    """The effective vid_gen defaults of `model`; the high-noise stage inherits the main
    sampling settings and splits the steps at `moe_boundary` (sample_steps -1)."""
    req, seed = effective_request(svc, model)
    return {
        **shared_defaults(req, seed),
        "video_frames": req.num_frames,
        "fps": req.fps,
        "moe_boundary": 0.875 if req.moe_boundary is None else req.moe_boundary,
        "vace_strength": 1.0,
        "high_noise_sample_params": sample_defaults(req, req.guidance_scale, -1),
        "output_format": VIDEO_FORMATS[0],
        "output_compression": DEFAULT_VIDEO_QUALITY,
    }


MODE_DEFAULTS = {"img_gen": image_defaults, "vid_gen": video_defaults}
