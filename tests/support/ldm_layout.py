"""Test helper: diffusers pipeline weights -> an original LDM / A1111 single-file state dict.

Written independently of jaxvideo's forward tables (after diffusers' own
`scripts/convert_diffusers_to_original_stable_diffusion.py` / `..._sdxl.py`), so a mistake in
those tables cannot be mirrored here. It produces what real single files contain: 1x1-conv VAE
attention, OpenCLIP fused `in_proj_weight`, a transposed `text_projection`, `logit_scale`, the
`position_ids` buffer of the pickled transformers CLIP, and SD2's extra last text layer.
"""

from __future__ import annotations

import torch

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def _rename(sd: dict, prefixes: dict[str, str], inner: dict[str, dict[str, str]]) -> dict:
    """Longest-prefix rename; `inner[diffusers_prefix]` renames the rest of the key."""
    out = {}
    for key, value in sd.items():
        src = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
        assert src is not None, f"no LDM name for {key}"
        rest = key[len(src) :]
        for old, new in inner.get(src, {}).items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
        out[prefixes[src] + rest] = value
    return out


def unet_to_ldm(unet) -> dict:
    c = unet.config
    lpb, levels = c.layers_per_block, len(c.block_out_channels)
    prefixes, inner = dict(UNET_FIXED), {}
    for b in range(levels):
        for j in range(lpb):
            i = b * (lpb + 1) + j + 1
            prefixes[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{i}.0."
            prefixes[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{i}.1."
            inner[f"down_blocks.{b}.resnets.{j}."] = RESNET
        if b < levels - 1:
            prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = (
                f"input_blocks.{(b + 1) * (lpb + 1)}.0.op."
            )
        for j in range(lpb + 1):
            o = b * (lpb + 1) + j
            prefixes[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{o}.0."
            prefixes[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{o}.1."
            inner[f"up_blocks.{b}.resnets.{j}."] = RESNET
        if b < levels - 1:
            slot = 2 if c.up_block_types[b].startswith("CrossAttn") else 1
            prefixes[f"up_blocks.{b}.upsamplers.0."] = (
                f"output_blocks.{b * (lpb + 1) + lpb}.{slot}."
            )
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
        inner[f"mid_block.resnets.{j}."] = RESNET
    sd = _rename(unet.state_dict(), prefixes, inner)
    return {"model.diffusion_model." + k: v for k, v in sd.items()}


VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(vae) -> dict:
    n = len(vae.config.block_out_channels)
    prefixes = {p: p for p in ("quant_conv.", "post_quant_conv.")}
    inner = {}
    for coder in ("encoder", "decoder"):
        for p in ("conv_in.", "conv_out."):
            prefixes[f"{coder}.{p}"] = f"{coder}.{p}"
        prefixes[f"{coder}.conv_norm_out."] = f"{coder}.norm_out."
        prefixes[f"{coder}.mid_block.attentions.0."] = f"{coder}.mid.attn_1."
        inner[f"{coder}.mid_block.attentions.0."] = VAE_ATTN
        for j in range(2):
            prefixes[f"{coder}.mid_block.resnets.{j}."] = f"{coder}.mid.block_{j + 1}."
            inner[f"{coder}.mid_block.resnets.{j}."] = {"conv_shortcut": "nin_shortcut"}
    for i in range(n):
        for j in range(vae.config.layers_per_block + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
            for part in ("encoder.down_blocks", "decoder.up_blocks"):
                inner[f"{part}.{i}.resnets.{j}."] = {"conv_shortcut": "nin_shortcut"}
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    sd = _rename(vae.state_dict(), prefixes, inner)
    for k, v in sd.items():
        # LDM's AttnBlock q/k/v/proj_out are Conv2d(C, C, 1).
        if ".mid.attn_1." in k and k.endswith(".weight") and v.ndim == 2:
            sd[k] = v[:, :, None, None].contiguous()
    return {"first_stage_model." + k: v for k, v in sd.items()}


def clip_to_ldm(text_encoder, prefix: str) -> dict:
    """A pickled transformers CLIPTextModel (transformers 4 names, with `text_model.`)."""
    sd = {}
    for k, v in text_encoder.state_dict().items():
        sd[prefix + (k if k.startswith("text_model.") else "text_model." + k)] = v
    positions = text_encoder.config.max_position_embeddings
    sd[prefix + "text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return sd


OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_ldm(text_encoder, prefix: str, extra_layer: bool, projection=None) -> dict:
    """OpenCLIP text tower names; `extra_layer` appends the unused last layer SD2 files carry.

    `projection` is the (out, in) Linear weight of the text projection (SDXL's
    CLIPTextModelWithProjection has its own; SD2 files carry an unused one).
    """
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
        "logit_scale": torch.tensor(4.6052),
    }
    proj = sd.pop("text_projection.weight", projection)
    out["text_projection"] = proj.T.contiguous()  # OpenCLIP: x @ text_projection
    layers = text_encoder.config.num_hidden_layers
    if extra_layer:
        g = torch.Generator().manual_seed(7)
        for k in [k for k in sd if k.startswith("encoder.layers.0.")]:
            name = k.replace("encoder.layers.0.", f"encoder.layers.{layers}.")
            sd[name] = torch.randn(sd[k].shape, generator=g)
        layers += 1
    for n in range(layers):
        p = f"encoder.layers.{n}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{p}self_attn.{x}_proj.{kind}") for x in "qkv"]
            out[f"transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat(qkv)
        for k in [k for k in sd if k.startswith(p)]:
            name, kind = k[len(p) :].rsplit(".", 1)
            out[f"transformer.resblocks.{n}.{OPEN_CLIP_LAYER[name]}.{kind}"] = sd.pop(k)
    assert not sd, f"unmapped text encoder keys {sorted(sd)}"
    return {prefix + k: v for k, v in out.items()}


def pipeline_to_ldm(pipe, family: str) -> dict:
    """The whole single-file state dict of a diffusers SD1 / SD2 / SDXL pipeline."""
    sd = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if family == "sd1":
        sd.update(clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    elif family == "sd2":
        width = pipe.text_encoder.config.hidden_size
        projection = torch.randn(width, width, generator=torch.Generator().manual_seed(3))
        sd.update(open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model.", True, projection))
    else:
        sd.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        sd.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model.", False))
    # Non-network entries real LDM checkpoints carry next to the weights.
    sd["alphas_cumprod"] = torch.linspace(0.999, 0.01, 1000)
    return {k: v.detach().contiguous() for k, v in sd.items()}
