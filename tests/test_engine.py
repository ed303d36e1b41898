"""The generation engine on a tiny random-weight model: seeds, img2img, samplers, tiling,
cancellation, memory errors and the limits."""

from __future__ import annotations

import threading
import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.engine import Engine
from pipeline.errors import GenerationOutOfMemory, InvalidRequestError, UnknownSamplerError
from pipeline.request import (
    GenerationRequest,
    HiresFix,
    ImageRef,
    LoraUse,
    ProgressEvent,
    ResultStatus,
)
from pipeline.samplers import SAMPLER_NAMES
from pipeline.validation import MAX_SEED, batch_seeds

pytestmark = pytest.mark.heavy  # started first: see conftest.py


def request(**overrides: object) -> GenerationRequest:
    values: dict[str, object] = {
        "prompt": "a castle on a hill, watercolor",
        "steps": 3,
        "seeds": (7,),
        "width": 64,
        "height": 64,
    }
    values.update(overrides)
    return GenerationRequest(**values)  # type: ignore[arg-type]


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_image_of_a_batch_equals_that_seed_alone(engine: Engine) -> None:
    batch = engine.generate(request(seeds=(101, 102, 103, 104)))
    assert batch.seeds == (101, 102, 103, 104)
    for index, seed in enumerate(batch.seeds):
        alone = engine.generate(request(seeds=(seed,)))
        assert np.array_equal(as_array(batch.images[index].image), as_array(alone.images[0].image))
    assert not np.array_equal(as_array(batch.images[0].image), as_array(batch.images[1].image))


def test_random_seed_is_resolved_reported_and_reproducible(engine: Engine) -> None:
    first = engine.generate(request(seeds=(-1,)))
    seed = first.seeds[0]
    assert 0 <= seed <= MAX_SEED
    assert first.images[0].infotext.seed == seed
    assert first.request.seeds == (seed,)
    again = engine.generate(request(seeds=(seed,)))
    assert np.array_equal(as_array(first.images[0].image), as_array(again.images[0].image))


def test_batch_seeds_follow_a1111() -> None:
    assert batch_seeds(10, 4) == (10, 11, 12, 13)
    random_start = batch_seeds(-1, 3)
    assert random_start[1] == (random_start[0] + 1) % (MAX_SEED + 1)


def test_img2img_follows_the_init_image_and_shares_weights(engine: Engine) -> None:
    txt2img, img2img = engine.pipelines
    assert img2img.unet is txt2img.unet
    assert img2img.vae is txt2img.vae
    assert img2img.text_encoder is txt2img.text_encoder
    red = ImageRef.from_image(Image.new("RGB", (64, 64), (255, 0, 0)))
    blue = ImageRef.from_image(Image.new("RGB", (64, 64), (0, 0, 255)))
    events: list[ProgressEvent] = []
    from_red = engine.generate(
        request(init_image=red, denoising_strength=0.5, steps=4), on_progress=events.append
    )
    from_blue = engine.generate(request(init_image=blue, denoising_strength=0.5, steps=4))
    assert [event.total for event in events] == [2, 2]
    assert from_red.images[0].infotext.denoising_strength == 0.5
    red_mean = as_array(from_red.images[0].image).mean(axis=(0, 1))
    blue_mean = as_array(from_blue.images[0].image).mean(axis=(0, 1))
    assert red_mean[0] - red_mean[2] > blue_mean[0] - blue_mean[2]


def test_img2img_without_size_takes_the_init_image_size(engine: Engine) -> None:
    init = ImageRef.from_image(Image.new("RGB", (96, 64), (0, 128, 0)))
    result = engine.generate(
        request(init_image=init, width=None, height=None, steps=2, denoising_strength=0.5)
    )
    assert result.images[0].image.size == (96, 64)


@pytest.fixture(scope="module")
def euler_a_image(engine: Engine) -> np.ndarray:
    return as_array(
        engine.generate(request(sampler="Euler a", steps=4, cfg_scale=1.5)).images[0].image
    )


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs(engine: Engine, sampler: str, euler_a_image: np.ndarray) -> None:
    result = engine.generate(request(sampler=sampler, steps=4, cfg_scale=1.5))
    image = result.images[0].image
    assert image.size == (64, 64)
    pixels = as_array(image)
    assert 0 < pixels.mean() < 255 and pixels.std() > 1
    if sampler != "Euler a":
        assert not np.array_equal(pixels, euler_a_image), "every sampler draws its own way"
    info = result.images[0].infotext
    shown = info.sampler if info.schedule_type is None else f"{info.sampler} {info.schedule_type}"
    assert shown == sampler


def test_new_schedule_type_spelling_matches_the_old(engine: Engine) -> None:
    old = engine.generate(request(sampler="DPM++ 2M Karras"))
    new = engine.generate(request(sampler="DPM++ 2M", schedule_type="Karras"))
    assert np.array_equal(as_array(old.images[0].image), as_array(new.images[0].image))


def test_a_karras_job_does_not_leak_into_the_next(engine: Engine) -> None:
    plain = engine.generate(request(sampler="DPM++ 2M"))
    karras = engine.generate(request(sampler="DPM++ 2M Karras"))
    plain_again = engine.generate(request(sampler="DPM++ 2M"))
    assert not np.array_equal(as_array(plain.images[0].image), as_array(karras.images[0].image))
    assert np.array_equal(as_array(plain.images[0].image), as_array(plain_again.images[0].image))


def _padding_modes(engine: Engine) -> list[str]:
    pipe = engine.pipelines[0]
    return [
        layer.padding_mode
        for module in (pipe.unet, pipe.vae)
        for layer in module.modules()
        if isinstance(layer, nn.Conv2d)
    ]


def test_tiling_changes_the_image_and_restores_the_convolutions(engine: Engine) -> None:
    before = _padding_modes(engine)
    plain = engine.generate(request())
    seen: list[set[str]] = []
    tiled = engine.generate(
        request(tiling=True), on_progress=lambda _event: seen.append(set(_padding_modes(engine)))
    )
    assert seen and all(modes == {"circular"} for modes in seen)
    assert _padding_modes(engine) == before
    assert not np.array_equal(as_array(plain.images[0].image), as_array(tiled.images[0].image))
    assert tiled.images[0].infotext.tiling is True


def test_progress_reports_every_step(engine: Engine) -> None:
    events: list[ProgressEvent] = []
    engine.generate(request(steps=5), on_progress=events.append)
    assert [(event.step, event.total) for event in events] == [(step, 5) for step in range(1, 6)]


def test_cancel_stops_within_a_step_and_the_engine_stays_usable(engine: Engine) -> None:
    cancel = threading.Event()
    events: list[ProgressEvent] = []

    def on_progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.step == 2:
            cancel.set()

    result = engine.generate(request(steps=10), on_progress=on_progress, cancel=cancel)
    assert result.status is ResultStatus.CANCELLED
    assert result.images == ()
    assert [event.step for event in events] == [1, 2]
    assert engine.generate(request()).status is ResultStatus.DONE


def test_out_of_memory_fails_that_job_only(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    unet = engine.pipelines[0].unet
    original = unet.forward
    held: list[weakref.ref[torch.Tensor]] = []

    def exhausted(*args: object, **kwargs: object) -> object:
        if not held:
            activations = torch.ones(256, 1024)
            held.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", exhausted)
    with pytest.raises(GenerationOutOfMemory, match="ran out of memory") as caught:
        engine.generate(request())
    assert held[0]() is None, "the failed job's tensors must be freed"
    assert caught.value.__context__ is None
    assert engine.generate(request()).status is ResultStatus.DONE


def test_clip_skip_changes_the_image(engine: Engine) -> None:
    normal = engine.generate(request())
    skipped = engine.generate(request(clip_skip=2))
    assert not np.array_equal(as_array(normal.images[0].image), as_array(skipped.images[0].image))
    assert skipped.images[0].infotext.clip_skip == 2


def test_negative_prompt_and_cfg_shape_the_image(engine: Engine) -> None:
    plain = engine.generate(request(cfg_scale=7))
    negative = engine.generate(request(cfg_scale=7, negative_prompt="blurry, low quality"))
    assert not np.array_equal(as_array(plain.images[0].image), as_array(negative.images[0].image))
    assert negative.images[0].infotext.negative_prompt == "blurry, low quality"


def test_size_is_rounded_to_multiples_of_8_and_said(engine: Engine) -> None:
    resolved = engine.prepare(request(width=70, height=61))
    assert (resolved.request.width, resolved.request.height) == (72, 64)
    assert "rounded to 72x64" in resolved.notes[0]
    result = engine.generate(request(width=70, height=61))
    assert result.images[0].image.size == (72, 64)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 2048, "height": 2048}, "limit is 1,048,576 pixels"),
        ({"steps": 0}, "Steps must be between 1 and 100"),
        ({"steps": 101}, "Steps must be between 1 and 100"),
        ({"seeds": (1, 2, 3, 4, 5)}, "1 to 4 images"),
        ({"cfg_scale": 31.0}, "CFG scale must be between 1 and 30"),
        ({"clip_skip": 3}, "Clip skip must be between 1 and 2 for this model"),
        ({"seeds": (2**40,)}, "Seeds are -1"),
        ({"init_image": ImageRef(data=b"not an image")}, "could not be read as an image"),
    ],
)
def test_bad_requests_are_clear_errors(
    engine: Engine, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        engine.generate(request(**overrides))


def test_zero_denoising_strength_is_refused(engine: Engine) -> None:
    init = ImageRef.from_image(Image.new("RGB", (64, 64)))
    with pytest.raises(InvalidRequestError, match="Denoising strength must be above 0"):
        engine.generate(request(init_image=init, denoising_strength=0.0))


def test_unknown_sampler_lists_the_valid_names(engine: Engine) -> None:
    with pytest.raises(UnknownSamplerError) as caught:
        engine.generate(request(sampler="Eular a"))
    text = str(caught.value)
    assert "Eular a" in text
    assert "DPM++ 2M Karras" in text
    assert "Euler a" in text


def test_request_and_result_round_trip_through_json(engine: Engine) -> None:
    init = ImageRef.from_image(Image.new("RGB", (64, 64), (10, 20, 30)))
    original = request(
        negative_prompt="fog",
        init_image=init,
        denoising_strength=0.6,
        tiling=True,
        clip_skip=2,
        schedule_type="Karras",
        sampler="DPM++ 2M",
    )
    assert GenerationRequest.from_json(original.to_json()) == original
    extended = request(
        loras=(LoraUse("ink", 0.5, 1.0),),
        hires=HiresFix(scale=1.5, steps=10, upscaler="Lanczos"),
        variation_seeds=(9,),
        variation_strength=0.3,
    )
    assert GenerationRequest.from_json(extended.to_json()) == extended
    assert GenerationRequest.from_json(request().to_json()) == request()
    result = engine.generate(
        request(prompt="  two\r\nlines\nNegative prompt: not one ", seeds=(5, 6))
    )
    restored = type(result).from_json(result.to_json())
    assert restored.request == result.request
    assert restored.seeds == (5, 6)
    assert restored.images[1].infotext == result.images[1].infotext
    assert np.array_equal(as_array(restored.images[1].image), as_array(result.images[1].image))
    assert restored.images[0].infotext.prompt == "  two\r\nlines\nNegative prompt: not one "
    with pytest.raises(ValueError, match="no field"):
        GenerationRequest.from_json('{"prompt": "x", "refiner": "sdxl"}')


def test_progress_counts_the_users_steps_for_second_order_samplers(engine: Engine) -> None:
    for sampler in ("Heun", "DPM2 a", "PLMS"):
        events: list[ProgressEvent] = []
        engine.generate(request(sampler=sampler, steps=4), on_progress=events.append)
        assert [(event.step, event.total) for event in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_sampler_that_cannot_run_that_many_steps_is_refused_up_front(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="LCM cannot run 60 steps"):
        engine.prepare(request(sampler="LCM", steps=60))


def test_missing_seeds_are_random(engine: Engine) -> None:
    result = engine.generate(request(seeds=(None, 5)))
    assert result.seeds[1] == 5
    assert 0 <= result.seeds[0] <= MAX_SEED


def test_jobs_from_two_threads_give_the_same_images_as_one_by_one(engine: Engine) -> None:
    jobs = (request(sampler="Euler", seeds=(3,)), request(sampler="DDIM", seeds=(4,)))
    expected = [as_array(engine.generate(job).images[0].image) for job in jobs]
    results: dict[int, np.ndarray] = {}

    def run(index: int) -> None:
        results[index] = as_array(engine.generate(jobs[index]).images[0].image)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    for index, alone in enumerate(expected):
        assert np.array_equal(results[index], alone)


def test_clip_skip_uses_a1111_numbering(engine: Engine) -> None:
    from pipeline.prompts.encoding import PromptEncoder

    pipe = engine.pipelines[0]
    ids = pipe.tokenizer(
        ["a castle"], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        final_norm = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm
        penultimate = final_norm(states[-2])
        reference, _ = pipe.encode_prompt("a castle", "cpu", 1, False)
    assert torch.equal(PromptEncoder(pipe, clip_skip=1).encode("a castle"), reference)
    assert torch.equal(PromptEncoder(pipe, clip_skip=2).encode("a castle"), penultimate)
