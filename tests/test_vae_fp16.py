"""SDXL's VAE in fp16: a fixed VAE from models/VAE, else an fp32 retry when a decode
overflows; the parameters name a fixed VAE."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL

from pipeline.vae import choose_vae, find_fixed_vae


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        force_upcast=True,
    ).eval()


def overflowing_vae() -> AutoencoderKL:
    """A VAE whose first decoder layer overflows fp16 (past 65,504) on large latents."""
    vae = tiny_vae()
    with torch.no_grad():
        vae.post_quant_conv.weight.mul_(1e4)  # still finite in fp16
    return vae


def test_a_fixed_vae_is_found_by_its_name(tmp_path: Path) -> None:
    assert find_fixed_vae(tmp_path) is None
    folder = tmp_path / "VAE"
    folder.mkdir()
    (folder / "vae-ft-mse-840000.safetensors").write_bytes(b"")
    assert find_fixed_vae(tmp_path) is None  # not an fp16 fix
    (folder / "sdxl_vae_fp16_fix.safetensors").write_bytes(b"")
    assert find_fixed_vae(tmp_path) == folder / "sdxl_vae_fp16_fix.safetensors"


def test_the_fixed_vae_replaces_the_checkpoints_in_fp16(tmp_path: Path) -> None:
    fixed = tiny_vae(seed=1)
    fixed.save_pretrained(tmp_path / "VAE" / "sdxl-vae-fp16-fix")
    pipe = SimpleNamespace(vae=tiny_vae().half())
    choice = choose_vae(pipe, tmp_path, needs_fix=True)
    assert choice.name == "sdxl-vae-fp16-fix" and not choice.retries_in_fp32
    assert pipe.vae.dtype == torch.float16 and not pipe.vae.config.force_upcast
    expected = fixed.decoder.conv_out.weight.half()
    assert torch.equal(pipe.vae.decoder.conv_out.weight, expected)


def test_without_one_an_overflowing_decode_runs_again_in_fp32(tmp_path: Path) -> None:
    latents = 100 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = overflowing_vae().decode(latents).sample  # fp32 throughout
    pipe = SimpleNamespace(vae=overflowing_vae().half())
    plain = pipe.vae.decode(latents.half()).sample
    assert not torch.isfinite(plain).all()  # fp16 alone gives NaN or infinity
    choice = choose_vae(pipe, tmp_path, needs_fix=True)
    assert choice.name is None and choice.retries_in_fp32
    guarded = pipe.vae.decode(latents.half()).sample
    assert guarded.dtype == torch.float16 and torch.isfinite(guarded).all()
    assert torch.allclose(guarded.float(), reference, atol=2e-2)
    assert pipe.vae.dtype == torch.float16  # back in fp16 for the next batch


@pytest.mark.parametrize("needs_fix", [False, True])
def test_fp32_and_other_families_are_left_alone(tmp_path: Path, needs_fix: bool) -> None:
    vae = tiny_vae()
    pipe = SimpleNamespace(vae=vae)
    assert choose_vae(pipe, tmp_path, needs_fix=needs_fix).name is None
    assert pipe.vae is vae and "decode" not in vae.__dict__


def test_a_single_file_fixed_vae_loads_offline(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from tests.ldm_checkpoint import vae_to_ldm

    fixed = tiny_vae(seed=2)
    folder = tmp_path / "VAE"
    folder.mkdir()
    save_file(vae_to_ldm(fixed), folder / "sdxl_vae_fp16_fix.safetensors")
    pipe = SimpleNamespace(vae=tiny_vae().half())
    choice = choose_vae(pipe, tmp_path, needs_fix=True)
    assert choice.name == "sdxl_vae_fp16_fix"
    expected = fixed.decoder.conv_out.weight.half()
    assert torch.equal(pipe.vae.decoder.conv_out.weight, expected)
