"""Fixed-size UNet calls: a batch's rows run in calls of one size, padded, so that an image is
the same whichever jobs shared its batch; a device that mixes rows falls back to one image a
call."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pipeline.batching import BatchMode, BatchShape, RowChecks, call_in_fixed_rows
from pipeline.engine import Engine
from pipeline.loading import LoadedModel
from pipeline.request import GenerationRequest, HiresFix, ResultStatus
from pipeline.samplers import make_scheduler, resolve_sampler


@pytest.fixture(scope="module")
def engine(tiny_model: LoadedModel) -> Engine:
    """The product's default batching (calls of 8 rows), on the shared weights."""
    return Engine(tiny_model)


def request(prompt: str, *seeds: int, **overrides: object) -> GenerationRequest:
    values: dict[str, object] = {
        "prompt": prompt,
        "steps": 2,
        "seeds": seeds or (7,),
        "width": 64,
        "height": 64,
        "sampler": "Euler",
    }
    values.update(overrides)
    return GenerationRequest(**values)  # type: ignore[arg-type]


def pixels(result_image: object) -> np.ndarray:
    return np.asarray(result_image).astype(np.int16)


def checked(engine: Engine, rows: int) -> int:
    """Call shapes of `rows` rows the engine has checked (each check is one extra call)."""
    return sum(1 for shape in engine.row_checks.results if shape.rows == rows)


def test_rows_per_call_shrink_with_the_area_and_never_grow() -> None:
    shape = BatchShape(rows=8)
    assert shape.rows_for(512, 512, 512) == 8
    assert shape.rows_for(256, 256, 512) == 8  # smaller images keep the operator's size
    assert shape.rows_for(768, 512, 512) == 4  # 1.5x the area
    assert shape.rows_for(768, 768, 512) == 2  # 2.25x
    assert shape.rows_for(1024, 1024, 512) == 2
    assert shape.rows_for(2048, 2048, 512) == 1
    assert BatchShape(rows=2).rows_for(512, 512, 512) == 2
    with pytest.raises(ValueError, match="at least one row"):
        BatchShape(rows=0)


def test_every_call_has_the_fixed_size_whatever_the_batch_holds(
    engine: Engine, unet_rows: list[int]
) -> None:
    assert engine.batching == BatchShape(BatchMode.FIXED, 8)
    three = [request("a castle", 1), request("a river", 2), request("a fox AND a hound", 3)]
    jobs = [engine.prepare(item) for item in three]
    before = checked(engine, 8)
    results = engine.run_batch(jobs)
    assert all(result.status is ResultStatus.DONE for result in results)
    # 2 + 2 + 3 rows (the AND image has two parts) padded to one call of 8 a step.
    assert unet_rows == [8] * (2 + checked(engine, 8) - before)
    unet_rows.clear()
    engine.run_batch(
        [engine.prepare(request("a meadow", 4, 5, 6)), engine.prepare(request("a bay", 8, 9))]
    )
    assert unet_rows == [8, 8, 8, 8]  # 10 rows a step: two calls of 8


def test_an_image_is_the_same_in_a_full_call_and_padded_alone(engine: Engine) -> None:
    lone = engine.generate(request("a lighthouse at dusk", 21))
    crowded = engine.run_batch(
        [
            engine.prepare(request("a harbour", 22, 23)),
            engine.prepare(request("a lighthouse at dusk", 21)),
            engine.prepare(request("a storm at sea AND gulls", 24)),
        ]
    )
    assert np.array_equal(pixels(lone.images[0].image), pixels(crowded[1].images[0].image))


def test_a_hires_pass_runs_fewer_rows_a_call_at_its_larger_size(
    engine: Engine, unet_rows: list[int]
) -> None:
    hires = HiresFix(scale=1.5, steps=2, denoising_strength=0.5, upscaler="Latent")
    before = checked(engine, 8), checked(engine, 2)
    engine.generate(request("a tower", 31, 32, hires=hires))
    new = checked(engine, 8) - before[0], checked(engine, 2) - before[1]
    # 64x64 is the tiny model's native size: 8 rows a call; 96x96 is 2.25x the area: 2 rows.
    assert unet_rows == [8] * (2 + new[0]) + [2] * (2 + new[1])


def test_the_row_check_runs_once_for_each_new_shape(
    tiny_model: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(tiny_model, batching=BatchShape(rows=4))
    calls: list[int] = []
    unet = engine.pipelines[0].unet
    original = unet.forward

    def counting(sample: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(sample.shape[0])
        return original(sample, *args, **kwargs)

    unet.forward = counting
    try:
        with caplog.at_level(logging.INFO, logger="pipeline.batching"):
            engine.generate(request("a castle", 41))
            engine.generate(request("a castle", 42))
    finally:
        del unet.forward
    assert calls == [4, 4, 4, 4, 4]  # the first call again, rows moved, then the job's own
    assert list(engine.row_checks.results.values()) == [True]
    assert "give each row its own result" in caplog.text


class _Mixing:
    """A UNet whose rows leak into each other, as some GPU kernels might."""

    def __init__(self, original: object) -> None:
        self.original = original

    def __call__(self, sample: torch.Tensor, *args: object, **kwargs: object) -> object:
        output = self.original(sample, *args, **kwargs)  # type: ignore[operator]
        predicted = output[0] if isinstance(output, tuple) else output.sample
        predicted += 0.01 * predicted.mean(dim=0, keepdim=True)
        return output


def test_a_device_that_mixes_rows_runs_images_one_by_one(
    tiny_model: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(tiny_model, batching=BatchShape(rows=8))
    unet = engine.pipelines[0].unet
    unet.forward = _Mixing(unet.forward)
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.batching"):
            together = engine.run_batch(
                [engine.prepare(request("a castle", 51)), engine.prepare(request("a river", 52))]
            )
        alone = engine.generate(request("a river", 52))
    finally:
        del unet.forward
    assert list(engine.row_checks.results.values()) == [False]
    assert "run one by one" in caplog.text
    assert np.array_equal(pixels(together[1].images[0].image), pixels(alone.images[0].image))


def test_fixed_calls_give_each_row_exactly_its_own_prediction() -> None:
    weight = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))

    def call(sample: torch.Tensor, timestep: object, context: torch.Tensor) -> torch.Tensor:
        return sample @ weight + context.sum(dim=1, keepdim=True)

    sample, context = torch.randn(5, 16), torch.randn(5, 3)
    checks = RowChecks()
    fixed = call_in_fixed_rows(call, sample, 0, context, rows=4, checks=checks)
    assert fixed is not None and fixed.shape == (5, 16)
    for row in range(5):
        padded = torch.cat([sample[row : row + 1]] * 4)
        alone = call(padded, 0, torch.cat([context[row : row + 1]] * 4))[0]
        assert torch.equal(fixed[row], alone)
    assert len(checks.results) == 1  # both calls (4 rows, then 1 padded to 4) share a shape


def test_a_grid_of_four_is_exactly_plain_diffusers_batch_of_four(engine: Engine) -> None:
    ours = engine.generate(request("a castle on a hill", 11, 12, 13, 14, negative_prompt="fog"))
    pipe = engine.pipelines[0]
    pipe.scheduler = make_scheduler(resolve_sampler("Euler"), dict(pipe.scheduler.config))
    pipe.vae.use_slicing = True  # diffusers' own switch: one image a decode, as Easel decodes
    try:
        theirs = pipe(
            prompt="a castle on a hill",
            negative_prompt="fog",
            num_images_per_prompt=4,
            guidance_scale=7.0,
            num_inference_steps=2,
            width=64,
            height=64,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in (11, 12, 13, 14)],
        ).images
    finally:
        pipe.vae.use_slicing = False
    for mine, plain in zip(ours.images, theirs, strict=True):
        assert np.array_equal(pixels(mine.image), pixels(plain))
