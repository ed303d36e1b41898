"""Hostile images and jobs: huge headers, metadata with escape sequences, oversized upscales,
AND amplification and jobs that cannot run, all refused before any work with a clear message."""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from safetensors.torch import save_file
from spandrel.architectures.ESRGAN import ESRGAN

from pipeline import upscale
from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError, ModelLoadError
from pipeline.executors.local import LocalExecutor
from pipeline.images import format_infotext, open_rgb, read_infotext
from pipeline.lora import read_lora_file, to_peft_state
from pipeline.request import GenerationRequest, HiresFix, ImageRef, UpscaleRequest
from pipeline.upscale import load_upscaler, upscale_image
from pipeline.validation import Limits
from tests.lora_files import write_not_a_lora

PARAMETERS = "a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _huge_png(path: Path, side: int, late: list[bytes] | None = None) -> Path:
    """A black 1-bit PNG of side x side pixels: a few KB on disk, side^2 pixels decoded."""
    row = b"\0" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header), _chunk(b"IDAT", data), *(late or []), _chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))
    return path


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_infotext_after_the_pixels_of_a_huge_png_is_read_without_decoding(
    tmp_path: Path, no_decoding: None
) -> None:
    late = [_chunk(b"tEXt", b"parameters\0" + PARAMETERS.encode())]
    path = _huge_png(tmp_path / "huge.png", 12_000, late)
    assert path.stat().st_size < 100_000
    info = read_infotext(path)
    assert info is not None and info.prompt == "a fox" and info.seed == 5


@pytest.mark.parametrize("compressed", [False, True])
def test_late_international_text_chunks_are_read(
    tmp_path: Path, no_decoding: None, compressed: bool
) -> None:
    text = PARAMETERS.replace("a fox", "여우 한 마리").encode()
    body = zlib.compress(text) if compressed else text
    flag = b"\1\0" if compressed else b"\0\0"
    late = [_chunk(b"iTXt", b"parameters\0" + flag + b"\0\0" + body)]
    info = read_infotext(_huge_png(tmp_path / "korean.png", 64, late))
    assert info is not None and info.prompt == "여우 한 마리"


def test_escape_sequences_in_metadata_never_reach_the_terminal(tmp_path: Path) -> None:
    hostile = "a \x1b[2J\x1b]0;owned\x07fox\x9b31m\nSteps: 20, Sampler: Euler\x1b[8m, Seed: 1"
    image = Image.new("RGB", (8, 8))
    from PIL import PngImagePlugin

    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", hostile)
    image.save(tmp_path / "hostile.png", pnginfo=pnginfo)
    info = read_infotext(tmp_path / "hostile.png")
    assert info is not None
    shown = format_infotext(info)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert info.prompt == "a [2J]0;ownedfox31m" and info.sampler == "Euler[8m"


def test_a_huge_image_is_refused_from_its_header(tmp_path: Path, no_decoding: None) -> None:
    path = _huge_png(tmp_path / "huge.png", 12_000)
    with pytest.raises(InvalidRequestError) as error:
        open_rgb(path, Limits().max_input_pixels, "The init image")
    message = str(error.value)
    assert "12000x12000 (144,000,000 pixels); the limit is 16,777,216" in message
    assert str(tmp_path) not in message


def test_an_upscale_past_the_output_limit_is_refused() -> None:
    image = Image.new("RGB", (64, 48))
    with pytest.raises(InvalidRequestError, match=r"would make 256x192 .* the limit is 40,000"):
        upscale_image(image, 4, None, max_output_pixels=200 * 200)
    enlarged, used = upscale_image(image, 2, None, max_output_pixels=200 * 200)
    assert enlarged.size == (128, 96) and used == "Lanczos"


def _tiny_esrgan_file(path: Path) -> Path:
    torch.manual_seed(2)
    state = ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


def test_the_upscaler_holds_one_strip_of_tiles_and_blends_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tiny_esrgan_file(tmp_path / "upscale" / "tiny-2x.safetensors")
    upscaler = load_upscaler("tiny-2x", tmp_path)
    assert upscaler is not None
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    held: list[int] = []
    original = upscale._Strip.extend_to

    def spy(self: upscale._Strip, bottom: int) -> None:
        original(self, bottom)
        held.append(self.total.shape[2])

    monkeypatch.setattr(upscale._Strip, "extend_to", spy)
    result = upscaler.upscale(image, 2, tile=16, overlap=4)
    assert max(held) <= 16 * 2  # one row of 16-pixel tiles, doubled; the image is 80 rows
    assert np.array_equal(np.asarray(result), _blended_reference(upscaler, image, 16, 4))


def _blended_reference(
    upscaler: upscale.Upscaler, image: Image.Image, tile: int, overlap: int
) -> np.ndarray:
    """The whole-canvas blend the strips must reproduce exactly."""
    pixels = upscale._to_tensor(image, 3)
    _, _, height, width = pixels.shape
    scale = upscaler.native_scale
    total = torch.zeros(1, 3, height * scale, width * scale)
    weights = torch.zeros(1, 1, height * scale, width * scale)
    with torch.inference_mode():
        for top in upscale._starts(height, tile, overlap):
            for left in upscale._starts(width, tile, overlap):
                part = upscale._Tile(top, left, min(tile, height), min(tile, width))
                piece = pixels[:, :, top : top + part.height, left : left + part.width]
                output = upscaler._model(piece).float()
                weight = upscale._tile_weight(part, height, width, overlap, scale)
                rows = slice(top * scale, (top + part.height) * scale)
                columns = slice(left * scale, (left + part.width) * scale)
                total[:, :, rows, columns] += output * weight
                weights[:, :, rows, columns] += weight
    return upscale._to_array(total / weights)


def test_upscale_work_is_refused_before_the_queue(engine: Engine, tmp_path: Path) -> None:
    huge = _huge_png(tmp_path / "huge.png", 12_000)
    large = _huge_png(tmp_path / "large.png", 2_000)
    executor = LocalExecutor(engine, tmp_path)

    async def prepare(path: Path, scale: int) -> float:
        work = UpscaleRequest(ImageRef(path=str(path)), scale=scale)
        return (await executor.prepare(work)).cost

    try:
        with pytest.raises(InvalidRequestError, match="The image to upscale is 12000x12000"):
            asyncio.run(prepare(huge, 2))
        with pytest.raises(InvalidRequestError, match="would make 8000x8000"):
            asyncio.run(prepare(large, 4))
        assert asyncio.run(prepare(large, 2)) == 1.0
    finally:
        asyncio.run(executor.close())


def test_a_huge_init_image_is_refused_by_prepare(engine: Engine, tmp_path: Path) -> None:
    huge = _huge_png(tmp_path / "huge.png", 12_000)
    request = GenerationRequest(prompt="a fox", init_image=ImageRef(path=str(huge)))
    with pytest.raises(InvalidRequestError, match=r"The init image \(huge.png\) is 12000x12000"):
        engine.prepare(request)


def test_prepared_jobs_carry_their_cost(engine: Engine) -> None:
    def cost(prompt: str, images: int = 1, negative: str = "") -> float:
        request = GenerationRequest(
            prompt=prompt, negative_prompt=negative, seeds=tuple(range(images)), steps=2
        )
        return engine.prepare(request).cost

    assert cost("a fox") == 1.0
    assert cost("a fox", images=4) == 4.0
    assert cost("a fox AND a hen AND a dog", images=2) == 4.0  # 2 x (3 + 1) / 2
    assert cost("a fox BREAK a hen") == 2.0  # two chunks each
    assert cost("a fox", negative="ugly BREAK blurry BREAK dark") == 3.0


def test_and_amplification_is_refused_by_prepare(engine: Engine) -> None:
    prompt = " AND ".join(["a fox"] * 682)
    with pytest.raises(InvalidRequestError, match="682 parts joined by AND; the limit is 8"):
        engine.prepare(GenerationRequest(prompt=prompt))


def test_one_step_with_a_hires_fix_is_refused_and_two_run(engine: Engine) -> None:
    def request(steps: int) -> GenerationRequest:
        return GenerationRequest(
            prompt="a fox", steps=steps, seeds=(1,), width=64, height=64, hires=HiresFix(2.0)
        )

    with pytest.raises(InvalidRequestError, match="leaves no step to run"):
        engine.prepare(request(1))
    result = engine.generate(request(2))
    assert result.images[0].image.size == (128, 128)


def test_lora_failures_name_the_file_not_its_folder(engine: Engine, tmp_path: Path) -> None:
    path = write_not_a_lora(tmp_path / "private" / "lora" / "garbage.safetensors")
    with pytest.raises(ModelLoadError) as error:
        to_peft_state(read_lora_file(path), engine.model.pipe, path)
    assert str(error.value).startswith("garbage.safetensors is not a LoRA")
    assert "private" not in str(error.value)
