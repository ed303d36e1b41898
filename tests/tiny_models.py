"""Tiny random-weight Stable Diffusion pipelines for offline tests and benchmarks.

The shapes follow the real families (SD 1.x: OpenAI CLIP text encoder, quick_gelu, epsilon;
SD 2.x: OpenCLIP text encoder, gelu, linear attention projections) at a fraction of the width,
so they load through the same code as real checkpoints. The tokenizer is the real CLIP one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pipeline.device import DeviceChoice
from pipeline.tokenizer import OPEN_CLIP_PAD, build_clip_tokenizer

HEAD_WIDTH = 64
CPU = DeviceChoice(torch.device("cpu"), torch.float32)  # the tests' device and dtype


@dataclass(frozen=True)
class TinyShape:
    """Widths of a random model: `tiny` for tests, `mid` for SD 1.5-shaped benchmarks."""

    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers: int = 2
    text_width: int = 64
    text_layers: int = 2
    vae_channels: tuple[int, ...] = (32, 32, 64, 64)
    vae_layers: int = 1
    sample_size: int = 8


TINY = TinyShape()
# SD 1.5's block layout (4 levels, 2 layers each, 3 with cross-attention) at half width.
MID = TinyShape(
    unet_channels=(160, 320, 640, 640),
    unet_layers=2,
    text_width=384,
    text_layers=6,
    vae_channels=(64, 128, 256, 256),
    vae_layers=2,
    sample_size=64,
)


def _unet_layout(shape: TinyShape) -> dict[str, object]:
    return {
        "sample_size": shape.sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": shape.unet_channels,
        "layers_per_block": shape.unet_layers,
    }


def _unet(shape: TinyShape, family: str) -> UNet2DConditionModel:
    levels = len(shape.unet_channels)
    cross = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",)
    if levels == 2:
        cross = ("DownBlock2D", "CrossAttnDownBlock2D")
    up = tuple(
        "CrossAttnUpBlock2D" if block.startswith("CrossAttn") else "UpBlock2D"
        for block in reversed(cross)
    )
    if family == "sd2":
        heads: int | tuple[int, ...] = tuple(max(1, c // HEAD_WIDTH) for c in shape.unet_channels)
    else:
        heads = 8
    return UNet2DConditionModel(
        **_unet_layout(shape),
        down_block_types=cross,
        up_block_types=up,
        cross_attention_dim=shape.text_width,
        attention_head_dim=heads,
        use_linear_projection=family == "sd2",
    )


def _vae(shape: TinyShape, scaling_factor: float = 0.18215) -> AutoencoderKL:
    levels = len(shape.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=shape.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        layers_per_block=shape.vae_layers,
        sample_size=shape.sample_size * 8,
        scaling_factor=scaling_factor,
    )


def _text_encoder(shape: TinyShape, family: str) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=shape.text_width,
        intermediate_size=shape.text_width * 4,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=max(1, shape.text_width // HEAD_WIDTH),
        max_position_embeddings=77,
        hidden_act="gelu" if family == "sd2" else "quick_gelu",
        projection_dim=shape.text_width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0 if family == "sd2" else 49407,
    )
    model = CLIPTextModel(config)
    # A trained final layer norm has its own scale and shift; the default (1, 0) would make
    # every token's mean exactly 0, which no real checkpoint does.
    norm = getattr(model, "text_model", model).final_layer_norm
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
        norm.bias.normal_(0.0, 0.5)
    return model


def _scheduler(family: str) -> PNDMScheduler | DDIMScheduler:
    common = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "steps_offset": 1,
        "set_alpha_to_one": False,
    }
    if family == "sd2":
        return DDIMScheduler(**common, clip_sample=False, prediction_type="v_prediction")
    return PNDMScheduler(**common, skip_prk_steps=True)


def build_random_pipeline(
    family: str = "sd1", shape: TinyShape = TINY, seed: int = 0
) -> StableDiffusionPipeline:
    """A randomly initialised SD 1.x or 2.x pipeline (fp32, CPU)."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(OPEN_CLIP_PAD if family == "sd2" else "<|endoftext|>")
    pipe = StableDiffusionPipeline(
        vae=_vae(shape),
        text_encoder=_text_encoder(shape, family),
        tokenizer=tokenizer,
        unet=_unet(shape, family),
        scheduler=_scheduler(family),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# SDXL's layout at a fraction of its width: two text encoders (OpenAI CLIP, then OpenCLIP with
# a projection for the pooled embedding) whose hidden states are concatenated, and a UNet
# that takes the pooled embedding and the size and crop conditioning ("text_time").
XL_TEXT_WIDTHS = (32, 64)
XL_POOLED_WIDTH = 32
XL_TIME_WIDTH = 8  # the UNet's embedding of each of the six size and crop numbers
XL_VAE_SCALE = 0.13025  # SDXL's VAE latents are scaled by this (SD's: 0.18215)


def _xl_text_config(width: int, act: str, pad: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=3,
        num_attention_heads=max(1, width // HEAD_WIDTH),  # as single-file configs derive it
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=XL_POOLED_WIDTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad,
    )


def _xl_unet(shape: TinyShape) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        **_unet_layout(shape),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=sum(XL_TEXT_WIDTHS),
        attention_head_dim=tuple(max(1, c // HEAD_WIDTH) for c in shape.unet_channels),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=XL_TIME_WIDTH,
        projection_class_embeddings_input_dim=XL_TIME_WIDTH * 6 + XL_POOLED_WIDTH,
        transformer_layers_per_block=(1, 2),
    )


def build_random_xl_pipeline(shape: TinyShape = TINY, seed: int = 0) -> StableDiffusionXLPipeline:
    """A randomly initialised SDXL base pipeline (fp32, CPU), in SDXL's layout."""
    torch.manual_seed(seed)
    first = CLIPTextModel(_xl_text_config(XL_TEXT_WIDTHS[0], "quick_gelu", 49407))
    second = CLIPTextModelWithProjection(_xl_text_config(XL_TEXT_WIDTHS[1], "gelu", 0))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(shape, scaling_factor=XL_VAE_SCALE),
        text_encoder=first,
        text_encoder_2=second,
        tokenizer=build_clip_tokenizer("<|endoftext|>"),
        tokenizer_2=build_clip_tokenizer(OPEN_CLIP_PAD),
        unet=_xl_unet(shape),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_random_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """A random ControlNet shaped as `unet`. A trained ControlNet's output convolutions start
    at zero; these are random too, so the control changes the image from the first test."""
    torch.manual_seed(seed)
    model = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.05)
    return model.eval()
