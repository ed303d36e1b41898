"""Several jobs (different prompts, seeds, init images) as one diffusers call: each job's images
are bit-identical to running it alone, and whole batches share one UNet call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipeline.batching import BatchMode, BatchShape, batch_key
from pipeline.engine import Engine, PreparedJob
from pipeline.loading import LoadedModel
from pipeline.request import (
    GenerationRequest,
    GenerationResult,
    HiresFix,
    ImageRef,
    LoraUse,
    ProgressEvent,
    ResultStatus,
)

pytestmark = pytest.mark.heavy  # started first: see conftest.py

LONG_PROMPT = ", ".join(f"a tall stone tower number {index}" for index in range(16))


@pytest.fixture(scope="module")
def engine(tiny_model: LoadedModel) -> Engine:
    """The product's default batching (calls of 8 rows), on the shared weights."""
    return Engine(tiny_model)


def request(prompt: str, **overrides: object) -> GenerationRequest:
    values: dict[str, object] = {
        "prompt": prompt,
        "steps": 4,
        "seeds": (7,),
        "width": 64,
        "height": 64,
        "sampler": "Euler a",
    }
    values.update(overrides)
    return GenerationRequest(**values)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def run_together(engine: Engine, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
    return engine.run_batch([engine.prepare(item) for item in requests])


def assert_each_equals_alone(
    engine: Engine, requests: Sequence[GenerationRequest], results: Sequence[GenerationResult]
) -> None:
    assert len(results) == len(requests)
    for item, result in zip(requests, results, strict=True):
        alone = engine.generate(item)
        assert result.status is ResultStatus.DONE
        assert result.request == alone.request
        assert len(result.images) == item.image_count
        for batched, single in zip(result.images, alone.images, strict=True):
            assert np.array_equal(pixels(batched.image), pixels(single.image))
            assert batched.infotext == single.infotext


@pytest.fixture(scope="module")
def loose_engine(tiny_model: LoadedModel) -> Engine:
    """Same weights, but images of one conditioning shape share UNet calls."""
    return Engine(tiny_model, batching=BatchShape(BatchMode.WHOLE))


def test_different_prompts_and_seed_counts_equal_each_job_alone(engine: Engine) -> None:
    requests = [
        request("a castle :0.7 AND a misty river", seeds=(1,), negative_prompt="blurry"),
        request("a [castle:tower:0.5] on a hill", seeds=(2, 3)),
        request("a lighthouse", seeds=(4,), negative_prompt="[fog:rain:1]"),
    ]
    events: list[ProgressEvent] = []
    results = engine.run_batch([engine.prepare(item) for item in requests], events.append)
    assert [(event.step, event.total) for event in events] == [(step, 4) for step in range(1, 5)]
    assert [result.seeds for result in results] == [(1,), (2, 3), (4,)]
    for item, result in zip(requests, results, strict=True):
        assert {image.infotext.prompt for image in result.images} == {item.prompt}
        assert [image.infotext.seed for image in result.images] == list(item.seeds)
    assert results[2].images[0].infotext.negative_prompt == "[fog:rain:1]"
    assert_each_equals_alone(engine, requests, results)
    assert not np.array_equal(
        pixels(results[0].images[0].image), pixels(results[2].images[0].image)
    )


def test_different_cfg_scales_share_a_batch_and_each_equals_alone(engine: Engine) -> None:
    requests = [
        request("a castle", seeds=(71,), cfg_scale=3.0),
        request("a castle", seeds=(71,), cfg_scale=11.0),
        request("a fox AND a hound :0.6", seeds=(72, 73), cfg_scale=5.5),
    ]
    results = run_together(engine, requests)
    assert [result.images[0].infotext.cfg_scale for result in results] == [3.0, 11.0, 5.5]
    assert_each_equals_alone(engine, requests, results)
    assert not np.array_equal(
        pixels(results[0].images[0].image), pixels(results[1].images[0].image)
    ), "the same seed and prompt at another scale is another image"


def test_variation_seeds_in_one_job_leave_the_others_alone(engine: Engine) -> None:
    requests = [
        request("a lighthouse", seeds=(11, 12), variation_seeds=(21, 22), variation_strength=0.3),
        request("a harbour at dusk", seeds=(13,)),
        request("a lighthouse", seeds=(14,), variation_seeds=(24,), variation_strength=0.8),
    ]
    results = run_together(engine, requests)
    assert results[0].images[1].infotext.variation_seed == 22
    assert results[1].images[0].infotext.variation_seed is None
    assert_each_equals_alone(engine, requests, results)


def test_img2img_jobs_with_different_init_images(engine: Engine) -> None:
    red = ImageRef.from_image(Image.new("RGB", (64, 64), (255, 0, 0)))
    blue = ImageRef.from_image(Image.new("RGB", (80, 64), (0, 0, 255)))  # resized to 64x64
    img2img = {"denoising_strength": 0.6}
    requests = [
        request("a red barn", seeds=(31, 32), init_image=red, **img2img),
        request("a blue lake", seeds=(33,), init_image=blue, **img2img),
    ]
    results = run_together(engine, requests)
    assert_each_equals_alone(engine, requests, results)
    red_mean = pixels(results[0].images[0].image).mean(axis=(0, 1))
    blue_mean = pixels(results[1].images[0].image).mean(axis=(0, 1))
    assert red_mean[0] - red_mean[2] > blue_mean[0] - blue_mean[2]


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_batches_equal_each_job_alone(engine: Engine, upscaler: str) -> None:
    hires = HiresFix(scale=1.5, steps=4, denoising_strength=0.5, upscaler=upscaler)
    requests = [
        request("a [castle:tower:0.5] on a hill", seeds=(5,), hires=hires, steps=3),
        request("a cat AND a dog :0.5", seeds=(6, 7), hires=hires, steps=3),
    ]
    events: list[ProgressEvent] = []
    results = engine.run_batch([engine.prepare(item) for item in requests], events.append)
    assert [event.step for event in events] == [1, 2, 3, 4, 5]  # 3 base steps + 2 of 4
    assert all(image.image.size == (96, 96) for result in results for image in result.images)
    assert_each_equals_alone(engine, requests, results)


def test_prompts_of_different_chunk_counts(
    engine: Engine, loose_engine: Engine, unet_rows: list[int]
) -> None:
    long_job = engine.prepare(request(LONG_PROMPT))
    assert long_job.prompt.parts[0].schedule[0].text == LONG_PROMPT
    requests = [request(LONG_PROMPT, seeds=(41,)), request("a small hut", seeds=(42, 43))]
    assert_each_equals_alone(engine, requests, run_together(engine, requests))
    unet_rows.clear()
    loose = run_together(loose_engine, requests)
    assert [len(result.images) for result in loose] == [1, 2]
    assert all(image.image.size == (64, 64) for result in loose for image in result.images)
    assert unet_rows == [2, 4] * 4  # the long prompt's rows, then both short images'


def test_a_loose_batch_of_plain_prompts_is_one_unet_call_per_step(
    loose_engine: Engine, unet_rows: list[int]
) -> None:
    requests = [
        request(f"a {thing}", seeds=(50 + index,))
        for index, thing in enumerate(("castle", "river", "forest", "harbour", "meadow"))
    ]
    loose = run_together(loose_engine, requests)
    assert unet_rows == [10] * 4  # negative and positive rows of five images, once a step
    assert all(result.status is ResultStatus.DONE for result in loose)


def _cancel_at_step(
    events: Sequence[threading.Event], step: int, seen: list[int]
) -> Callable[[ProgressEvent], None]:
    """A progress callback that records each step into `seen` and sets `events` at `step`."""

    def on_progress(event: ProgressEvent) -> None:
        seen.append(event.step)
        if event.step == step:
            for cancel in events:
                cancel.set()

    return on_progress


def test_cancelling_one_job_keeps_the_other(engine: Engine) -> None:
    requests = [request("a castle", seeds=(61,), steps=5), request("a river", seeds=(62,), steps=5)]
    cancel = threading.Event()
    seen: list[int] = []
    jobs = [engine.prepare(item) for item in requests]
    results = engine.run_batch(jobs, _cancel_at_step([cancel], 2, seen), [cancel, None])
    assert seen == [1, 2, 3, 4, 5], "the other job still wants its images"
    assert results[0].status is ResultStatus.CANCELLED and results[0].images == ()
    assert results[1].status is ResultStatus.DONE
    assert_each_equals_alone(engine, requests[1:], results[1:])


def test_cancelling_every_job_stops_the_call(engine: Engine) -> None:
    requests = [request("a castle", seeds=(61,), steps=5), request("a river", seeds=(62,), steps=5)]
    cancels = [threading.Event(), threading.Event()]
    seen: list[int] = []
    jobs = [engine.prepare(item) for item in requests]
    results = engine.run_batch(jobs, _cancel_at_step(cancels, 2, seen), cancels)
    assert seen == [1, 2]
    assert [result.status for result in results] == [ResultStatus.CANCELLED] * 2
    assert all(result.images == () for result in results)
    assert engine.run_batch(jobs[:1])[0].status is ResultStatus.DONE


def _with_loras(job: PreparedJob, *uses: LoraUse) -> PreparedJob:
    return replace(job, loras=uses)


def test_batch_keys(engine: Engine) -> None:
    base = engine.prepare(request("a castle", seeds=(1,)))
    key = batch_key(base)
    same = engine.prepare(
        request("a river AND a [boat:ship:0.5]", seeds=(2, 3), negative_prompt="fog")
    )
    assert batch_key(same) == key and hash(batch_key(same)) == hash(key)
    varied = request("a castle", seeds=(4,), variation_seeds=(5,), variation_strength=0.5)
    assert batch_key(engine.prepare(varied)) == key
    assert batch_key(engine.prepare(request("a castle", cfg_scale=12.5))) == key
    for different in (
        {"width": 72},
        {"steps": 5},
        {"sampler": "Euler"},
        {"sampler": "DPM++ 2M", "schedule_type": "Karras"},
        {"cfg_scale": 1.0},  # unguided: no negative rows at all
        {"clip_skip": 2},
        {"tiling": True},
        {"hires": HiresFix(scale=1.5)},
    ):
        assert batch_key(engine.prepare(request("a castle", **different))) != key, different
    ink, oak = LoraUse("ink", 0.5, 0.5), LoraUse("oak", 1.0, 1.0)
    assert batch_key(_with_loras(base, ink, oak)) == batch_key(
        _with_loras(base, oak, LoraUse("zero", 0.0, 0.0), ink)
    )
    assert batch_key(_with_loras(base, LoraUse("zero", 0.0, 0.0))) == key
    assert batch_key(_with_loras(base, ink)) != batch_key(_with_loras(base, LoraUse("ink", 0.6)))
    red = ImageRef.from_image(Image.new("RGB", (64, 64), (255, 0, 0)))
    blue = ImageRef.from_image(Image.new("RGB", (64, 64), (0, 0, 255)))
    from_red = batch_key(engine.prepare(request("a", init_image=red)))
    assert from_red == batch_key(engine.prepare(request("b", init_image=blue)))
    assert from_red != key
    strength = batch_key(engine.prepare(request("a", init_image=red, denoising_strength=0.5)))
    assert strength != from_red


def test_jobs_of_different_keys_are_refused(engine: Engine) -> None:
    jobs = [engine.prepare(request("a castle")), engine.prepare(request("a castle", steps=5))]
    with pytest.raises(ValueError, match="steps"):
        engine.run_batch(jobs)
    with pytest.raises(ValueError, match="cancel events"):
        engine.run_batch(jobs[:1], cancels=[None, None])
    assert engine.run_batch([]) == []
