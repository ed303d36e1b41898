"""Upscalers: tiny random-weight spandrel models saved to disk in Easel and A1111 folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.DnCNN import DnCNN
from spandrel.architectures.ESRGAN import ESRGAN

from pipeline.errors import InvalidRequestError, ModelLoadError
from pipeline.upscale import (
    LANCZOS,
    Upscaler,
    UpscalerInfo,
    clear_upscaler_cache,
    find_upscalers,
    lanczos_upscale,
    load_upscaler,
    resolve_upscaler,
    upscale_image,
)


def _tiny_esrgan(scale: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(scale)
    model = ESRGAN(num_filters=8, num_blocks=1, scale=scale)
    state = model.state_dict()
    # Random weights give a dark, mostly clamped output; a mid-grey bias keeps the output in
    # range, so that tiling differences show instead of being clamped away.
    biases = [key for key in state if key.startswith("model.") and key.endswith(".bias")]
    state[max(biases, key=lambda key: int(key.split(".")[1]))] += 0.5
    return {key: value.contiguous() for key, value in state.items()}


@pytest.fixture(scope="module")
def upscale_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ with a 2x .pth in Easel's folder and a 4x .safetensors in A1111's ESRGAN one."""
    root = tmp_path_factory.mktemp("models")
    (root / "upscale").mkdir()
    (root / "ESRGAN").mkdir()
    torch.save(_tiny_esrgan(2), root / "upscale" / "Tiny-2x.pth")
    save_file(_tiny_esrgan(4), root / "ESRGAN" / "tiny_4x.safetensors")
    return root


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_upscaler_cache()


def _image(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _load(models: Path, name: str) -> Upscaler:
    upscaler = load_upscaler(name, models)
    assert upscaler is not None
    return upscaler


def _difference(first: Image.Image, second: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(first, dtype=np.int16) - np.asarray(second, dtype=np.int16))


def test_finds_upscalers_in_easel_and_a1111_folders(upscale_models: Path) -> None:
    assert find_upscalers(upscale_models) == [
        UpscalerInfo("Tiny-2x", upscale_models / "upscale" / "Tiny-2x.pth"),
        UpscalerInfo("tiny_4x", upscale_models / "ESRGAN" / "tiny_4x.safetensors"),
    ]


def test_resolves_names_case_insensitively(upscale_models: Path) -> None:
    info = resolve_upscaler("TINY-2X", upscale_models)
    assert info is not None
    assert info.path == upscale_models / "upscale" / "Tiny-2x.pth"
    assert resolve_upscaler(None, upscale_models) is None
    assert resolve_upscaler("lanczos", upscale_models) is None


def test_unknown_name_lists_the_available_upscalers(upscale_models: Path) -> None:
    with pytest.raises(InvalidRequestError, match="No upscaler named 'Ultra'") as caught:
        resolve_upscaler("Ultra", upscale_models)
    assert "Tiny-2x, tiny_4x" in str(caught.value)


def test_unknown_name_with_no_models(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="Available: none"):
        resolve_upscaler("Ultra", tmp_path)


@pytest.mark.parametrize(("name", "native"), [("tiny-2x", 2), ("tiny_4x", 4)])
def test_pth_and_safetensors_load_by_name(upscale_models: Path, name: str, native: int) -> None:
    upscaler = _load(upscale_models, name)
    assert upscaler.native_scale == native
    assert upscaler.architecture == "ESRGAN"
    assert upscaler.dtype == torch.float32


@pytest.mark.parametrize("name", ["Tiny-2x", "tiny_4x", None])
@pytest.mark.parametrize("scale", [2, 4])
def test_output_is_exactly_scale_times_larger(
    upscale_models: Path, name: str | None, scale: int
) -> None:
    upscaler = load_upscaler(name, upscale_models)
    result, _ = upscale_image(_image(30, 22), scale, upscaler)
    assert result.size == (30 * scale, 22 * scale)
    assert result.mode == "RGB"


def test_a_2x_model_runs_twice_for_4x(
    upscale_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upscaler = _load(upscale_models, "Tiny-2x")
    sizes: list[tuple[int, int]] = []
    original = Upscaler._run_once

    def spy(self: Upscaler, image: Image.Image, tile: int, overlap: int) -> Image.Image:
        sizes.append(image.size)
        return original(self, image, tile, overlap)

    monkeypatch.setattr(Upscaler, "_run_once", spy)
    upscaler.upscale(_image(20, 10), 4)
    assert sizes == [(20, 10), (40, 20)]


def test_the_model_changes_the_result(upscale_models: Path) -> None:
    image = _image()
    modelled = _load(upscale_models, "tiny_4x").upscale(image, 4)
    assert _difference(modelled, lanczos_upscale(image, 4)).mean() > 10


@pytest.mark.parametrize("name", ["Tiny-2x", "tiny_4x"])
def test_tiled_matches_untiled(upscale_models: Path, name: str) -> None:
    upscaler = _load(upscale_models, name)
    image = _image()
    whole = upscaler.upscale(image, 4, tile=512)
    tiled = upscaler.upscale(image, 4, tile=16, overlap=4)
    difference = _difference(whole, tiled)
    assert difference.mean() < 1
    assert difference.max() <= 4


def test_blending_the_overlap_hides_the_seams(upscale_models: Path) -> None:
    upscaler = _load(upscale_models, "Tiny-2x")
    image = _image()
    whole = upscaler.upscale(image, 2, tile=512)
    blended = _difference(whole, upscaler.upscale(image, 2, tile=16, overlap=4)).mean()
    pasted = _difference(whole, upscaler.upscale(image, 2, tile=16, overlap=0)).mean()
    assert blended < 0.6 * pasted


def test_keeps_transparency(upscale_models: Path) -> None:
    image = _image(16, 12).convert("RGBA")
    image.putalpha(128)
    result = _load(upscale_models, "Tiny-2x").upscale(image, 2)
    assert result.mode == "RGBA"
    assert result.getchannel("A").getextrema() == (128, 128)


def test_recorded_name(upscale_models: Path) -> None:
    image = _image(8, 8)
    assert upscale_image(image, 2, None)[1] == LANCZOS
    assert upscale_image(image, 2, _load(upscale_models, "tiny-2x"))[1] == "Tiny-2x"


@pytest.mark.parametrize("scale", [0, 1, 3, 8])
def test_other_factors_are_refused(upscale_models: Path, scale: int) -> None:
    with pytest.raises(InvalidRequestError, match="must be 2 or 4"):
        upscale_image(_image(8, 8), scale, None)
    with pytest.raises(InvalidRequestError, match="must be 2 or 4"):
        _load(upscale_models, "Tiny-2x").upscale(_image(8, 8), scale)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_random_bytes_are_a_load_error_naming_the_file(tmp_path: Path, suffix: str) -> None:
    junk = tmp_path / f"broken{suffix}"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match=f"broken\\{suffix} could not be loaded"):
        Upscaler(junk)


def test_a_lora_is_a_load_error_naming_the_file(tmp_path: Path) -> None:
    lora = tmp_path / "style-lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 4)}, lora)
    with pytest.raises(ModelLoadError, match=r"style-lora\.safetensors.*spandrel"):
        Upscaler(lora)


def test_models_are_cached_by_path(upscale_models: Path) -> None:
    first = _load(upscale_models, "Tiny-2x")
    second = _load(upscale_models, "tiny-2x")
    assert first._model is second._model


def test_half_precision_only_where_the_model_supports_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    denoiser = DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R")
    torch.save(denoiser.state_dict(), tmp_path / "denoise-1x.pth")
    torch.save(_tiny_esrgan(2), tmp_path / "esrgan-2x.pth")
    assert Upscaler(tmp_path / "denoise-1x.pth", dtype=torch.float16).dtype == torch.float32
    assert Upscaler(tmp_path / "esrgan-2x.pth", dtype=torch.float16).dtype == torch.float16


def test_a_1x_model_is_followed_by_lanczos(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R").state_dict(), tmp_path / "d.pth")
    assert Upscaler(tmp_path / "d.pth").upscale(_image(12, 10), 2).size == (24, 20)
