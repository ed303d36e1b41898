"""Hires fix: generate small, upscale, then img2img at the larger size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.loading import LoadedModel
from pipeline.request import GenerationRequest, HiresFix, ProgressEvent
from tests.conftest import TEST_BATCHING
from tests.test_upscale import _tiny_esrgan


def request(**overrides: object) -> GenerationRequest:
    values: dict[str, object] = {
        "prompt": "a [castle:tower:0.5] on a hill",
        "steps": 4,
        "seeds": (5, 6),
        "width": 64,
        "height": 64,
        "hires": HiresFix(scale=2.0, denoising_strength=0.5),
    }
    values.update(overrides)
    return GenerationRequest(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_output_size_and_parameters(engine: Engine, upscaler: str) -> None:
    events: list[ProgressEvent] = []
    hires = HiresFix(scale=1.5, steps=6, denoising_strength=0.5, upscaler=upscaler)
    result = engine.generate(request(hires=hires), on_progress=events.append)
    assert all(item.image.size == (96, 96) for item in result.images)
    info = result.images[0].infotext
    assert (info.width, info.height, info.denoising_strength) == (64, 64, 0.5)
    assert info.extra == (
        ("Hires upscale", "1.5"),
        ("Hires steps", "6"),
        ("Hires upscaler", upscaler),
    )
    assert [event.step for event in events] == [1, 2, 3, 4, 5, 6, 7]
    assert {event.total for event in events} == {7}  # 4 base steps + 3 of the 6 hires steps


def test_hires_changes_the_image_and_batches_stay_exact(engine: Engine) -> None:
    plain = engine.generate(request(hires=None))
    fixed = engine.generate(request())
    assert fixed.images[0].image.size == (128, 128)
    small = np.asarray(fixed.images[0].image.resize((64, 64)))
    assert not np.array_equal(small, np.asarray(plain.images[0].image))
    alone = engine.generate(request(seeds=(6,)))
    assert np.array_equal(np.asarray(fixed.images[1].image), np.asarray(alone.images[0].image))


def test_hires_limits_are_clear(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="Hires fix to 2048x2048"):
        engine.generate(request(width=1024, height=1024))
    with pytest.raises(InvalidRequestError, match="Hires scale must be above 1"):
        engine.generate(request(hires=HiresFix(scale=1.0)))


def test_hires_with_an_upscaler_model(tiny_model: LoadedModel, tmp_path: Path) -> None:

    (tmp_path / "upscale").mkdir()
    torch.save(_tiny_esrgan(2), tmp_path / "upscale" / "Tiny-2x.pth")
    engine = Engine(tiny_model, models_dir=tmp_path, batching=TEST_BATCHING)
    hires = HiresFix(scale=2.0, upscaler="tiny-2x")
    result = engine.generate(request(hires=hires, seeds=(5,)))
    assert result.images[0].image.size == (128, 128)
    assert ("Hires upscaler", "tiny-2x") in result.images[0].infotext.extra
    lanczos = engine.generate(request(hires=HiresFix(scale=2.0, upscaler="Lanczos"), seeds=(5,)))
    assert not np.array_equal(
        np.asarray(result.images[0].image), np.asarray(lanczos.images[0].image)
    )
    with pytest.raises(InvalidRequestError, match="No upscaler named 'missing'"):
        engine.prepare(request(hires=HiresFix(upscaler="missing")))
