"""The LDM single-file writer round-trips bit-exactly through diffusers' own loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from tests.ldm_checkpoint import (
    CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    save_single_file,
    to_ldm_state_dict,
)

COMPONENTS = ("unet", "vae", "text_encoder")
DIFFUSERS_ONLY_NAMES = ("down_blocks", "up_blocks", "mid_block", "resnets", "attentions")


@dataclass(frozen=True)
class Original:
    """A tiny pipeline, its diffusers folder (the config source) and its reference image."""

    family: str
    pipe: StableDiffusionPipeline
    folder: Path
    image: np.ndarray


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def original(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Original:
    family: str = request.param
    pipe: StableDiffusionPipeline = request.getfixturevalue(f"random_{family}")
    folder = tmp_path_factory.mktemp(family) / "folder"
    pipe.save_pretrained(folder)
    return Original(family, pipe, folder, _generate(pipe))


def _load_single_file(path: Path, folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_single_file(
        str(path),
        config=str(folder),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe: StableDiffusionPipeline) -> np.ndarray:
    result = pipe(
        "a lighthouse at dusk",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    return result.images


def _assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module, name: str) -> None:
    want, got = expected.state_dict(), actual.state_dict()
    assert sorted(got) == sorted(want), f"{name}: parameter names differ"
    for key, value in want.items():
        loaded = got[key]
        assert loaded.device.type != "meta", f"{name}.{key} was never loaded"
        assert loaded.dtype == value.dtype, f"{name}.{key}: {loaded.dtype} != {value.dtype}"
        assert torch.equal(loaded, value), f"{name}.{key} differs after the round trip"


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_round_trip_through_diffusers_single_file_loader(
    original: Original, tmp_path: Path, suffix: str
) -> None:
    path = save_single_file(original.pipe, tmp_path / f"model{suffix}", original.family)

    loaded = _load_single_file(path, original.folder)

    for name in COMPONENTS:
        _assert_same_weights(getattr(original.pipe, name), getattr(loaded, name), name)
    assert type(loaded.scheduler) is type(original.pipe.scheduler)
    np.testing.assert_array_equal(_generate(loaded), original.image)


def test_unet_and_vae_use_ldm_names_only(random_sd1: StableDiffusionPipeline) -> None:
    state = to_ldm_state_dict(random_sd1, "sd1")
    model_keys = [key for key in state if key.startswith((UNET_PREFIX, VAE_PREFIX))]
    leaked = [key for key in model_keys if any(name in key for name in DIFFUSERS_ONLY_NAMES)]
    assert leaked == []
    vae_keys = [key for key in state if key.startswith(VAE_PREFIX)]
    diffusers_vae_names = ("to_q", "to_out", "group_norm", "conv_shortcut")
    assert not any(name in key for key in vae_keys for name in diffusers_vae_names)


def test_sd1_layout_matches_real_checkpoints(random_sd1: StableDiffusionPipeline) -> None:
    pipe = random_sd1
    state = to_ldm_state_dict(pipe, "sd1")

    assert f"{CLIP_PREFIX}embeddings.token_embedding.weight" in state
    assert f"{CLIP_PREFIX}encoder.layers.1.self_attn.q_proj.weight" in state
    assert state[f"{CLIP_PREFIX}embeddings.position_ids"].dtype == torch.int64
    assert not any(key.startswith(OPEN_CLIP_PREFIX) for key in state)
    clip_keys = [key for key in state if key.startswith(CLIP_PREFIX)]
    assert len(clip_keys) == len(pipe.text_encoder.state_dict()) + 1  # + position_ids

    assert f"{UNET_PREFIX}input_blocks.0.0.weight" in state
    assert f"{UNET_PREFIX}input_blocks.1.0.in_layers.0.weight" in state
    assert f"{UNET_PREFIX}input_blocks.3.0.op.weight" in state  # level 0 downsampler
    assert f"{UNET_PREFIX}input_blocks.4.1.proj_in.weight" in state
    assert f"{UNET_PREFIX}middle_block.1.transformer_blocks.0.attn2.to_k.weight" in state
    assert f"{UNET_PREFIX}output_blocks.2.2.conv.weight" in state  # upsampler after attention
    assert state["alphas_cumprod"].shape == (1000,)


def test_vae_attention_is_stored_as_1x1_convs(random_sd1: StableDiffusionPipeline) -> None:
    pipe = random_sd1
    state = to_ldm_state_dict(pipe, "sd1")
    width = pipe.vae.config.block_out_channels[-1]
    for part in ("encoder", "decoder"):
        for name in ("q", "k", "v", "proj_out"):
            weight = state[f"{VAE_PREFIX}{part}.mid.attn_1.{name}.weight"]
            assert weight.shape == (width, width, 1, 1)
        assert f"{VAE_PREFIX}{part}.mid.attn_1.norm.weight" in state
        assert f"{VAE_PREFIX}{part}.mid.block_2.conv2.weight" in state
    last = len(pipe.vae.config.block_out_channels) - 1
    decoder_first = pipe.vae.decoder.up_blocks[0].resnets[0].conv1.weight
    assert torch.equal(state[f"{VAE_PREFIX}decoder.up.{last}.block.0.conv1.weight"], decoder_first)


def test_sd2_text_encoder_uses_open_clip_layout_with_extra_resblock(
    random_sd2: StableDiffusionPipeline,
) -> None:
    pipe = random_sd2
    config = pipe.text_encoder.config
    width, layers = config.hidden_size, config.num_hidden_layers
    state = to_ldm_state_dict(pipe, "sd2")

    assert not any(key.startswith("cond_stage_model.transformer.") for key in state)
    in_proj = state[f"{OPEN_CLIP_PREFIX}transformer.resblocks.0.attn.in_proj_weight"]
    assert in_proj.shape == (3 * width, width)
    attention = pipe.text_encoder.encoder.layers[0].self_attn
    assert torch.equal(in_proj[width : 2 * width], attention.k_proj.weight)
    assert state[f"{OPEN_CLIP_PREFIX}positional_embedding"].shape == (77, width)
    assert state[f"{OPEN_CLIP_PREFIX}text_projection"].shape == (width, config.projection_dim)

    extra = f"{OPEN_CLIP_PREFIX}transformer.resblocks.{layers}."
    assert state[f"{extra}mlp.c_proj.weight"].shape == (width, config.intermediate_size)
    assert f"{OPEN_CLIP_PREFIX}transformer.resblocks.{layers + 1}.ln_1.weight" not in state
    again = to_ldm_state_dict(pipe, "sd2")  # seeded: independent of the global RNG
    assert torch.equal(again[f"{extra}attn.in_proj_weight"], state[f"{extra}attn.in_proj_weight"])


def test_unknown_suffix_and_family_are_rejected(
    tmp_path: Path, random_sd1: StableDiffusionPipeline
) -> None:
    pipe = random_sd1
    with pytest.raises(ValueError, match="suffix"):
        save_single_file(pipe, tmp_path / "model.bin", "sd1")
    with pytest.raises(ValueError, match="family"):
        to_ldm_state_dict(pipe, "sd3")
