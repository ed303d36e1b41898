"""Zoom out and pan: the canvas and mask, and the inpainting pass that fills them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.outpaint import Move, build_canvas, canvas_size, outpaint_request
from pipeline.request import GenerationRequest, ImageRef


def picture(size: tuple[int, int] = (128, 128)) -> Image.Image:
    """A picture with structure everywhere: a gradient with a red square."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.stack([np.tile(x, (height, 1))] * 3, axis=-1)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (255, 0, 0)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("move", "expected"),
    [
        (Move.ZOOM_2, (512, 512)),
        (Move.ZOOM_1_5, (512, 512)),
        (Move.LEFT, (768, 512)),
        (Move.UP, (512, 768)),
    ],
)
def test_canvas_sizes_follow_midjourney(move: Move, expected: tuple[int, int]) -> None:
    assert canvas_size(move, 512, 512, 1024 * 1024) == expected


def test_a_pan_past_the_area_limit_is_scaled_down_to_fit() -> None:
    width, height = canvas_size(Move.RIGHT, 1024, 1024, 1024 * 1024)
    assert width * height <= 1024 * 1024
    assert width % 8 == height % 8 == 0
    assert width / height == pytest.approx(1.5, rel=0.02)


def test_zoom_out_puts_the_picture_in_the_middle_and_masks_the_frame() -> None:
    canvas = build_canvas(picture((256, 256)), Move.ZOOM_2, (128, 128))
    assert canvas.box == (32, 32, 96, 96)
    mask = np.asarray(canvas.mask)
    assert mask[0, 0] == 255 and mask[127, 127] == 255  # the new frame is painted
    assert mask[64, 64] == 0  # the middle of the old picture is kept
    # The mask reaches into the old picture and fades there: no hard seam.
    assert 0 < mask[64, 34] < 255
    shrunk = np.asarray(picture((256, 256)).resize((64, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(canvas.image)[32:96, 32:96], shrunk)


def test_pan_left_keeps_the_picture_at_the_right_edge() -> None:
    bright_left = picture((128, 128)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = build_canvas(bright_left, Move.LEFT, (192, 128))
    assert canvas.box == (64, 0, 192, 128)
    mask = np.asarray(canvas.mask)
    assert mask[64, 0] == 255 and mask[64, 191] == 0
    # The frame starts from the old picture's edge colours (bright), not black.
    assert np.asarray(canvas.image)[:, :32].mean() > 150


def test_outpainting_keeps_the_old_pixels_and_paints_the_frame(engine: Engine) -> None:
    parent = GenerationRequest(prompt="a lighthouse", steps=3, seeds=(7,), width=64, height=64)
    canvas = build_canvas(picture((128, 128)), Move.ZOOM_1_5, (96, 96))
    request = outpaint_request(
        parent, ImageRef.from_image(canvas.image), ImageRef.from_image(canvas.mask), (96, 96), 2
    )
    result = engine.generate(request)
    assert [item.image.size for item in result.images] == [(96, 96), (96, 96)]
    out = np.asarray(result.images[0].image).astype(int)
    kept = np.asarray(canvas.mask) == 0
    assert kept.any()
    assert np.array_equal(out[kept], np.asarray(canvas.image).astype(int)[kept])
    frame = np.asarray(canvas.mask) == 255
    assert np.abs(out[frame] - np.asarray(canvas.image).astype(int)[frame]).mean() > 5
    assert result.images[0].infotext.denoising_strength == 1.0
    # The two seeds paint two different frames.
    other = np.asarray(result.images[1].image).astype(int)
    assert not np.array_equal(out[frame], other[frame])


def test_a_mask_without_an_image_is_refused(engine: Engine) -> None:
    mask = ImageRef.from_image(Image.new("L", (64, 64), 255))
    request = GenerationRequest(prompt="x", steps=2, width=64, height=64, mask_image=mask)
    with pytest.raises(InvalidRequestError, match="mask needs the image"):
        engine.prepare(request)


def test_masked_requests_travel_as_json() -> None:
    mask = ImageRef.from_image(Image.new("L", (8, 8), 255))
    request = GenerationRequest(prompt="x", init_image=ImageRef(path="/tmp/a.png"), mask_image=mask)
    assert GenerationRequest.from_json(request.to_json()) == request


def test_an_inpainting_checkpoint_outpaints_and_refuses_plain_jobs(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    from pipeline.loading import HashCache, ModelSource, SourceKind, load_model
    from tests.tiny_models import CPU, build_random_pipeline

    pipe = build_random_pipeline("sd1")
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    pipe.save_pretrained(tmp_path / "tiny-inpainting")
    source = ModelSource(
        "tiny-inpainting", SourceKind.DIFFUSERS_FOLDER, str(tmp_path / "tiny-inpainting")
    )
    engine = Engine(load_model(source, CPU, tmp_path, HashCache(tmp_path / "hashes.json")))
    parent = GenerationRequest(prompt="a lighthouse", steps=2, seeds=(7,), width=64, height=64)
    canvas = build_canvas(picture((128, 128)), Move.LEFT, (96, 64))
    request = outpaint_request(
        parent, ImageRef.from_image(canvas.image), ImageRef.from_image(canvas.mask), (96, 64), 1
    )
    out = np.asarray(engine.generate(request).images[0].image).astype(int)
    kept = np.asarray(canvas.mask) == 0
    assert np.array_equal(out[kept], np.asarray(canvas.image).astype(int)[kept])
    with pytest.raises(InvalidRequestError, match="tiny-inpainting is an inpainting checkpoint"):
        engine.generate(parent)


def test_variation_seeds_vary_an_outpainting_and_keep_the_old_pixels(engine: Engine) -> None:
    from pipeline.variations import subtle_variation

    parent = GenerationRequest(prompt="a lighthouse", steps=3, seeds=(7,), width=64, height=64)
    canvas = build_canvas(picture((128, 128)), Move.ZOOM_1_5, (96, 96))
    grid = outpaint_request(
        parent, ImageRef.from_image(canvas.image), ImageRef.from_image(canvas.mask), (96, 96), 1
    )
    grid = engine.generate(grid).request  # its seed fixed
    original = np.asarray(engine.generate(grid).images[0].image).astype(int)
    same = subtle_variation(grid, 0, count=2, strength=0.0)
    varied = subtle_variation(grid, 0, count=2, strength=0.5)
    unchanged = np.asarray(engine.generate(same).images[0].image).astype(int)
    assert np.array_equal(unchanged, original)  # strength 0 is the picture itself
    result = engine.generate(varied)
    kept = np.asarray(canvas.mask) == 0
    frame = np.asarray(canvas.mask) == 255
    first = np.asarray(result.images[0].image).astype(int)
    assert np.array_equal(first[kept], original[kept])
    assert np.abs(first[frame] - original[frame]).mean() > 1
    assert result.images[0].infotext.variation_seed_strength == 0.5
