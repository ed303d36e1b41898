"""Reroll, subtle and strong variations: Midjourney's buttons on the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.images import read_infotext
from pipeline.request import GenerationRequest, ImageRef
from pipeline.variations import (
    request_from_infotext,
    reroll,
    strong_variation,
    subtle_variation,
)

BASE = GenerationRequest(
    prompt="a lighthouse", steps=4, seeds=(40, 41), width=64, height=64, sampler="Euler a"
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_variation_strength_zero_is_the_original(engine: Engine) -> None:
    original = engine.generate(BASE)
    same = engine.generate(subtle_variation(BASE, 1, count=2, strength=0.0, variation_seed=5))
    for item in same.images:
        assert np.array_equal(pixels(item.image), pixels(original.images[1].image))


def test_subtle_variations_differ_a_little_and_are_reproducible(engine: Engine) -> None:
    original = pixels(engine.generate(BASE).images[0].image)
    request = subtle_variation(BASE, 0, count=2, variation_seed=900)
    varied = engine.generate(request)
    first, second = (pixels(item.image) for item in varied.images)
    assert not np.array_equal(first, original) and not np.array_equal(first, second)
    strong_change = pixels(engine.generate(subtle_variation(BASE, 0, 1, 1.0, 900)).images[0].image)
    assert np.abs(first - original).mean() < np.abs(strong_change - original).mean()
    alone = engine.generate(subtle_variation(BASE, 0, count=1, variation_seed=901))
    assert np.array_equal(second, pixels(alone.images[0].image))
    info = varied.images[1].infotext
    assert (info.seed, info.variation_seed, info.variation_seed_strength) == (40, 901, 0.25)


def test_strong_variation_keeps_the_size_and_changes_the_image(engine: Engine) -> None:
    source = engine.generate(BASE).images[0].image
    result = engine.generate(strong_variation(BASE, source, count=2, seed=3))
    assert all(item.image.size == (64, 64) for item in result.images)
    assert not np.array_equal(pixels(result.images[0].image), pixels(source))
    assert result.images[0].infotext.denoising_strength == 0.65
    assert result.request.prompt == BASE.prompt and result.request.steps == BASE.steps


def test_reroll_draws_new_seeds_with_everything_else_kept() -> None:
    again = reroll(BASE)
    assert again.seeds != BASE.seeds and len(again.seeds) == 2
    assert (again.prompt, again.steps, again.sampler) == (BASE.prompt, BASE.steps, BASE.sampler)


def test_variation_seeds_are_checked(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="one variation seed per image"):
        engine.generate(GenerationRequest(prompt="x", seeds=(1, 2), variation_seeds=(3,)))
    init = ImageRef.from_image(Image.new("RGB", (64, 64)))
    with pytest.raises(InvalidRequestError, match="init image cannot take them"):
        engine.generate(
            GenerationRequest(prompt="x", seeds=(1,), variation_seeds=(3,), init_image=init)
        )


def test_a_saved_image_gives_back_its_request(engine: Engine, tmp_path: Path) -> None:
    from pipeline.images import save_png

    result = engine.generate(BASE)
    path = save_png(result.images[1].image, tmp_path / "a.png", result.images[1].infotext)
    info = read_infotext(path)
    assert info is not None
    request = request_from_infotext(info)
    assert (request.prompt, request.seeds, request.steps) == ("a lighthouse", (41,), 4)
    again = engine.generate(request)
    assert np.array_equal(pixels(again.images[0].image), pixels(result.images[1].image))
