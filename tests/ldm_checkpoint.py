"""Write diffusers Stable Diffusion pipelines as original (CompVis/LDM) single-file checkpoints.

This is the inverse of what diffusers' `loaders/single_file_utils.py` does in
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint` and
`convert_open_clip_checkpoint`, so `StableDiffusionPipeline.from_single_file` round-trips the
weights bit-exactly. The key mapping follows diffusers' Apache-2.0 script
`scripts/convert_diffusers_to_original_stable_diffusion.py`, rewritten for any block layout.

The files look like the ones the AUTOMATIC1111 web UI loads: they carry the DDPM schedule
buffers, SD 1.x's `position_ids`, and for SD 2.x the OpenCLIP `text_projection`, `logit_scale`
and the final resblock that SD 2 never uses (it conditions on the penultimate layer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
XL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
XL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
FAMILIES = ("sd1", "sd2", "sdxl")
EXTRA_RESBLOCK_SEED = 1234

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL: pooled text and size conditioning
    "add_embedding.linear_2.": "label_emb.0.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_TOP_LEVEL = {
    "encoder.conv_norm_out.": "encoder.norm_out.",
    "decoder.conv_norm_out.": "decoder.norm_out.",
    "encoder.conv_in.": "encoder.conv_in.",
    "encoder.conv_out.": "encoder.conv_out.",
    "decoder.conv_in.": "decoder.conv_in.",
    "decoder.conv_out.": "decoder.conv_out.",
    "quant_conv.": "quant_conv.",
    "post_quant_conv.": "post_quant_conv.",
}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}
_OPEN_CLIP_TOP_LEVEL = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def to_ldm_state_dict(pipe: StableDiffusionPipeline, family: str) -> dict[str, torch.Tensor]:
    """The whole pipeline (UNet, VAE, text encoder, DDPM schedule) in the LDM single-file layout."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    state: dict[str, torch.Tensor] = {}
    state.update(_schedule_buffers(pipe))
    state.update(_prefixed(UNET_PREFIX, unet_to_ldm(pipe.unet)))
    state.update(_prefixed(VAE_PREFIX, vae_to_ldm(pipe.vae)))
    if family == "sdxl":
        state.update(_prefixed(XL_CLIP_PREFIX, clip_to_ldm(pipe.text_encoder)))
        state.update(_prefixed(XL_OPEN_CLIP_PREFIX, open_clip_xl_to_ldm(pipe.text_encoder_2)))
    elif family == "sd2":
        state.update(_prefixed(OPEN_CLIP_PREFIX, open_clip_to_ldm(pipe.text_encoder)))
    else:
        state.update(_prefixed(CLIP_PREFIX, clip_to_ldm(pipe.text_encoder)))
    return {key: value.detach().clone().contiguous() for key, value in state.items()}


def save_single_file(pipe: StableDiffusionPipeline, path: Path, family: str) -> Path:
    """Write `pipe` as `.safetensors` or `.ckpt` (a pickled `{"state_dict": ...}`), by suffix."""
    state = to_ldm_state_dict(pipe, family)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    elif path.suffix == ".ckpt":
        torch.save({"state_dict": state}, path)
    else:
        raise ValueError(f"unsupported checkpoint suffix {path.suffix!r} (.safetensors or .ckpt)")
    return path


# UNet


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """UNet weights under LDM names (without the `model.diffusion_model.` prefix)."""
    prefixes = _unet_block_prefixes(unet)
    return {_unet_key(key, prefixes): value for key, value in unet.state_dict().items()}


def _unet_key(key: str, block_prefixes: Mapping[str, str]) -> str:
    renamed = _rename_prefix(key, _UNET_TOP_LEVEL)
    if renamed is not None:
        return renamed
    for diffusers_prefix, ldm_prefix in block_prefixes.items():
        if key.startswith(diffusers_prefix):
            rest = key.removeprefix(diffusers_prefix)
            if ".resnets." in diffusers_prefix:
                rest = _rename_prefix(rest, _UNET_RESNET) or rest
            return ldm_prefix + rest
    raise KeyError(f"no LDM name for UNet key {key!r}")


def _unet_block_prefixes(unet: UNet2DConditionModel) -> dict[str, str]:
    config = unet.config
    layers = config.layers_per_block
    if not isinstance(layers, int):
        raise ValueError("LDM checkpoints need the same layers_per_block at every level")
    prefixes: dict[str, str] = {}
    for level, up_type in enumerate(config.up_block_types):
        prefixes.update(_unet_down_level(level, layers))
        prefixes.update(_unet_up_level(level, layers, up_type.startswith("CrossAttn")))
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    prefixes["mid_block.resnets.0."] = "middle_block.0."
    prefixes["mid_block.resnets.1."] = "middle_block.2."
    return prefixes


def _unet_down_level(level: int, layers: int) -> dict[str, str]:
    # input_blocks.0 is conv_in; each level has `layers` blocks plus one downsampler.
    prefixes: dict[str, str] = {}
    for layer in range(layers):
        block = 1 + level * (layers + 1) + layer
        prefixes[f"down_blocks.{level}.resnets.{layer}."] = f"input_blocks.{block}.0."
        prefixes[f"down_blocks.{level}.attentions.{layer}."] = f"input_blocks.{block}.1."
    downsampler = (level + 1) * (layers + 1)
    prefixes[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{downsampler}.0.op."
    return prefixes


def _unet_up_level(level: int, layers: int, has_attention: bool) -> dict[str, str]:
    # Up levels have `layers + 1` blocks; the last one also holds the upsampler, after the
    # attention when there is one.
    prefixes: dict[str, str] = {}
    for layer in range(layers + 1):
        block = level * (layers + 1) + layer
        prefixes[f"up_blocks.{level}.resnets.{layer}."] = f"output_blocks.{block}.0."
        prefixes[f"up_blocks.{level}.attentions.{layer}."] = f"output_blocks.{block}.1."
    last = level * (layers + 1) + layers
    slot = 2 if has_attention else 1
    prefixes[f"up_blocks.{level}.upsamplers.0."] = f"output_blocks.{last}.{slot}."
    return prefixes


# VAE


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """VAE weights under LDM names (without `first_stage_model.`); attention as 1x1 convs."""
    prefixes = _vae_block_prefixes(len(vae.config.block_out_channels))
    state: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        ldm_key = _vae_key(key, prefixes)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        state[ldm_key] = value
    return state


def _vae_key(key: str, block_prefixes: Mapping[str, str]) -> str:
    renamed = _rename_prefix(key, _VAE_TOP_LEVEL)
    if renamed is not None:
        return renamed
    for diffusers_prefix, ldm_prefix in block_prefixes.items():
        if key.startswith(diffusers_prefix):
            rest = key.removeprefix(diffusers_prefix)
            if ".attentions." in diffusers_prefix:
                rest = _rename_prefix(rest, _VAE_ATTENTION) or rest
            return ldm_prefix + rest.replace("conv_shortcut.", "nin_shortcut.")
    raise KeyError(f"no LDM name for VAE key {key!r}")


def _vae_block_prefixes(levels: int) -> dict[str, str]:
    prefixes: dict[str, str] = {}
    for level in range(levels):
        ldm_up = levels - 1 - level  # the decoder's levels are numbered in reverse in LDM
        prefixes[f"encoder.down_blocks.{level}.resnets."] = f"encoder.down.{level}.block."
        downsampler = f"encoder.down.{level}.downsample."
        prefixes[f"encoder.down_blocks.{level}.downsamplers.0."] = downsampler
        prefixes[f"decoder.up_blocks.{level}.resnets."] = f"decoder.up.{ldm_up}.block."
        prefixes[f"decoder.up_blocks.{level}.upsamplers.0."] = f"decoder.up.{ldm_up}.upsample."
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
    return prefixes


# Text encoders


def clip_to_ldm(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """SD 1.x: HF CLIP weights under `cond_stage_model.transformer.text_model.` names.

    transformers >= 5.6 flattened `CLIPTextModel` (no `text_model.` wrapper); older versions
    have it. Either way the checkpoint keys get exactly one `text_model.`. Real SD 1.x
    checkpoints also carry the `position_ids` buffer (int64 [1, 77]), so it is written too.
    """
    state = {_strip_text_model(key): value for key, value in text_encoder.state_dict().items()}
    positions = text_encoder.config.max_position_embeddings
    state.setdefault("embeddings.position_ids", torch.arange(positions, dtype=torch.int64)[None])
    return state


def open_clip_to_ldm(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """SD 2.x: HF CLIP weights in the OpenCLIP layout under `cond_stage_model.model.` names."""
    source = {_strip_text_model(key): value for key, value in text_encoder.state_dict().items()}
    state = {ldm: source[hf] for hf, ldm in _OPEN_CLIP_TOP_LEVEL.items()}
    for layer in range(text_encoder.config.num_hidden_layers):
        state.update(_open_clip_resblock(source, layer))
    state.update(_open_clip_unused_weights(text_encoder))
    return state


def open_clip_xl_to_ldm(text_encoder: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """SDXL's second encoder in the OpenCLIP layout: every block is used (the pooled embedding
    comes after the last), and `text_projection` is the real one, [width, projection]."""
    source = {_strip_text_model(key): value for key, value in text_encoder.state_dict().items()}
    state = {ldm: source[hf] for hf, ldm in _OPEN_CLIP_TOP_LEVEL.items()}
    for layer in range(text_encoder.config.num_hidden_layers):
        state.update(_open_clip_resblock(source, layer))
    state["text_projection"] = source["text_projection.weight"].T.contiguous()
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return state


def _open_clip_resblock(source: Mapping[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    hf = f"encoder.layers.{layer}."
    ldm = f"transformer.resblocks.{layer}."
    state: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        parts = [source[f"{hf}self_attn.{proj}.{kind}"] for proj in _QKV]
        state[f"{ldm}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        for hf_name, ldm_name in _OPEN_CLIP_LAYER.items():
            state[f"{ldm}{ldm_name}{kind}"] = source[f"{hf}{hf_name}{kind}"]
    return state


def _open_clip_unused_weights(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """Weights real SD 2.x checkpoints carry that the diffusers text encoder never reads.

    OpenCLIP ViT-H/14 has 24 resblocks; SD 2 conditions on the penultimate one, so the diffusers
    text encoder has 23 and the checkpoint holds one more (random here, fixed seed). diffusers
    drops `resblocks.23.*` and `text_projection` by name (`SD_2_TEXT_ENCODER_KEYS_TO_IGNORE`);
    at other depths it converts the extra block to `encoder.layers.{n}.*`, which is not a
    parameter of the model, and `load_model_dict_into_meta` skips it. `text_projection` is
    [width, embed_dim]: diffusers splits `in_proj_weight` by its `shape[0]`, so it must be the
    text width.
    """
    config = text_encoder.config
    width, hidden = config.hidden_size, config.intermediate_size
    generator = torch.Generator().manual_seed(EXTRA_RESBLOCK_SEED)
    shapes = {
        "ln_1.weight": (width,),
        "ln_1.bias": (width,),
        "attn.in_proj_weight": (3 * width, width),
        "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width),
        "attn.out_proj.bias": (width,),
        "ln_2.weight": (width,),
        "ln_2.bias": (width,),
        "mlp.c_fc.weight": (hidden, width),
        "mlp.c_fc.bias": (hidden,),
        "mlp.c_proj.weight": (width, hidden),
        "mlp.c_proj.bias": (width,),
    }
    extra = f"transformer.resblocks.{config.num_hidden_layers}."
    state = {extra + name: _random(shape, generator) for name, shape in shapes.items()}
    state["text_projection"] = _random((width, config.projection_dim), generator)
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return state


def _random(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * 0.02


def _strip_text_model(key: str) -> str:
    return key.removeprefix("text_model.")


# DDPM schedule


def _schedule_buffers(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The `LatentDiffusion.register_schedule` buffers real checkpoints carry (float32)."""
    betas = pipe.scheduler.betas.to(torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - previous) / (1.0 - alphas_cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": previous,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * previous.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - previous) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    return {name: value.to(torch.float32) for name, value in buffers.items()}


# Helpers


def _rename_prefix(key: str, mapping: Mapping[str, str]) -> str | None:
    for old, new in mapping.items():
        if key.startswith(old):
            return new + key.removeprefix(old)
    return None


def _prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def controlnet_to_ldm(
    controlnet: ControlNetModel, unet: UNet2DConditionModel
) -> dict[str, torch.Tensor]:
    """A ControlNet made from `unet` as A1111's single files hold it (`control_model.` keys):
    the UNet-shaped encoder under LDM names, the hint encoder as `input_hint_block`, the zero
    convolutions as `zero_convs` and `middle_block_out`."""
    weights = controlnet.state_dict()
    shared = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
    prefixes = _unet_block_prefixes(unet)  # the ControlNet's down and mid blocks are the UNet's
    state = {
        _unet_key(key, prefixes): value for key, value in weights.items() if key.startswith(shared)
    }
    embedding = "controlnet_cond_embedding."
    hint_layers = [f"{embedding}conv_in"]
    blocks = len(controlnet.controlnet_cond_embedding.blocks)
    hint_layers += [f"{embedding}blocks.{index}" for index in range(blocks)]
    for index, layer in enumerate(hint_layers):
        for part in ("weight", "bias"):
            state[f"input_hint_block.{2 * index}.{part}"] = weights[f"{layer}.{part}"]
    for part in ("weight", "bias"):
        state[f"input_hint_block.14.{part}"] = weights[f"{embedding}conv_out.{part}"]
        state[f"middle_block_out.0.{part}"] = weights[f"controlnet_mid_block.{part}"]
        for index in range(len(controlnet.controlnet_down_blocks)):
            state[f"zero_convs.{index}.0.{part}"] = weights[
                f"controlnet_down_blocks.{index}.{part}"
            ]
    return {f"control_model.{key}": value for key, value in state.items()}
