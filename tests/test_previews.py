"""Live previews: JPEGs of each job's images from the step latents, when a front end wants them."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny
from PIL import Image
from safetensors.torch import save_file

from pipeline.engine import Engine
from pipeline.executors.local import LocalExecutor
from pipeline.executors.work import OutcomeStatus, Task
from pipeline.loading import LoadedModel
from pipeline.previews import (
    PREVIEW_SIDE,
    LinearDecoder,
    PreviewMaker,
    PreviewSchedule,
    choose_decoder,
    find_taesd,
    load_taesd,
    pooling,
)
from pipeline.request import ProgressEvent
from tests.conftest import TEST_BATCHING
from tests.test_batching import request

CPU = torch.device("cpu")


def open_jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.convert("RGB")


def mean_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).mean(axis=(0, 1))


def flat_latents(channel: int, value: float, count: int = 1, size: int = 8) -> torch.Tensor:
    latents = torch.zeros(count, 4, size, size)
    latents[:, channel] = value
    return latents


def tiny_taesd() -> AutoencoderTiny:
    torch.manual_seed(0)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
    )


# ---------------------------------------------------------------------- the linear approximation


def test_linear_preview_shows_the_latents_colour() -> None:
    maker = PreviewMaker(LinearDecoder())
    # Channel 2 pulls red up and blue down, channel 3 the other way round.
    ((key, red_jpeg),) = maker.previews(flat_latents(2, -2.0), counts=(1,), keys=(5,))
    ((_, blue_jpeg),) = maker.previews(flat_latents(3, -2.0), counts=(1,), keys=(5,))
    assert key == 5
    red, blue = open_jpeg(red_jpeg), open_jpeg(blue_jpeg)
    assert red.size == (64, 64)  # the image's own size: never larger than what is made
    r, g, b = mean_rgb(red)
    assert r > g + 60 and r > b + 60
    r, g, b = mean_rgb(blue)
    assert b > r + 60 and b > g + 60


def test_four_images_are_a_2x2_grid_within_256_px() -> None:
    # A 512x512 job of four: red, blue, red, blue.
    latents = torch.cat([flat_latents(2 if i % 2 == 0 else 3, -2.0, size=64) for i in range(4)])
    ((_, jpeg),) = PreviewMaker(LinearDecoder()).previews(latents, counts=(4,), keys=(0,))
    grid = np.asarray(open_jpeg(jpeg), dtype=np.float64)
    assert grid.shape == (PREVIEW_SIDE, PREVIEW_SIDE, 3)
    half = PREVIEW_SIDE // 2
    top_left, top_right = grid[:half, :half].mean((0, 1)), grid[:half, half:].mean((0, 1))
    bottom_left = grid[half:, :half].mean((0, 1))
    assert top_left[0] > top_left[2] + 60 and bottom_left[0] > bottom_left[2] + 60
    assert top_right[2] > top_right[0] + 60


def test_a_wide_job_keeps_its_shape_within_256_px() -> None:
    latents = torch.zeros(2, 4, 64, 96)  # two 768x512 images
    ((_, jpeg),) = PreviewMaker(LinearDecoder()).previews(latents, counts=(2,), keys=(0,))
    width, height = open_jpeg(jpeg).size
    assert width == PREVIEW_SIDE and height == PREVIEW_SIDE * 512 // (2 * 768)


def test_each_job_gets_its_own_rows() -> None:
    latents = torch.cat([flat_latents(2, -2.0), flat_latents(3, -2.0, count=2)])
    previews = dict(PreviewMaker(LinearDecoder()).previews(latents, (1, 2), keys=(3, 9)))
    assert set(previews) == {3, 9}
    assert open_jpeg(previews[3]).size == (64, 64)
    assert open_jpeg(previews[9]).size == (128, 64)
    r, _, b = mean_rgb(open_jpeg(previews[9]))
    assert b > r + 60


def test_latents_shrink_only_as_far_as_the_preview_needs() -> None:
    # Four 512x512 images in 128 px cells: TAESD (8x) needs 16 latent pixels, linear all 64.
    assert pooling((64, 64), (128, 128), upscale=8) == 4
    assert pooling((64, 64), (128, 128), upscale=1) == 1
    assert pooling((128, 96), (128, 96), upscale=1) == 1
    assert pooling((64, 96), (42, 64), upscale=8) == 8
    assert pooling((8, 8), (64, 64), upscale=8) == 1


# ---------------------------------------------------------------------- when previews are due


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_preview_comes_at_the_first_step_after_each_interval() -> None:
    clock = FakeClock()
    schedule = PreviewSchedule(2.0, clock)
    due = []
    for step, seconds in enumerate([0.5, 1.9, 2.1, 3.0, 4.0, 4.2, 9.0, 20.0], start=1):
        clock.now = 100.0 + seconds
        due.append(schedule.due(step, total=8))
    # 2.1 s: the first step past 2 s; 4.2 s: past 2 s after that; 9 s; never the last step.
    assert due == [False, False, True, False, False, True, True, False]


def test_interval_zero_previews_every_step_but_the_last() -> None:
    schedule = PreviewSchedule(0.0, FakeClock())
    assert [schedule.due(step, total=4) for step in range(1, 5)] == [True, True, True, False]


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more seconds"):
        PreviewSchedule(-1.0)


# ---------------------------------------------------------------------- the engine and executor


def two_jobs(engine: Engine) -> list:
    return [
        engine.prepare(request("a lighthouse", seeds=(1,))),
        engine.prepare(request("a harbour at dusk", seeds=(2, 3))),
    ]


def test_a_batch_of_two_jobs_gets_a_preview_per_job(engine: Engine) -> None:
    events: list[ProgressEvent] = []
    results = engine.run_batch(two_jobs(engine), events.append, preview_every=0.0)
    assert [len(result.images) for result in results] == [1, 2]
    assert [event.step for event in events] == [1, 2, 3, 4]
    for event in events[:-1]:
        assert [key for key, _ in event.previews] == [0, 1]
        first, second = event.preview(0), event.preview(1)
        assert first is not None and second is not None
        assert open_jpeg(first).size == (64, 64)
        assert open_jpeg(second).size == (128, 64)  # the job's two images side by side
    assert events[-1].previews == ()  # the result follows at once


@pytest.mark.parametrize("preview_every", [None, 3600.0])
def test_no_previews_unless_wanted_and_due(engine: Engine, preview_every: float | None) -> None:
    events: list[ProgressEvent] = []
    engine.run_batch(two_jobs(engine), events.append, preview_every=preview_every)
    assert len(events) == 4
    assert all(event.previews == () for event in events)


def test_previews_do_not_change_the_images(engine: Engine) -> None:
    plain = engine.run_batch(two_jobs(engine))
    previewed = engine.run_batch(two_jobs(engine), lambda event: None, preview_every=0.0)
    for left, right in zip(plain, previewed, strict=True):
        for a, b in zip(left.images, right.images, strict=True):
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_the_executor_keys_previews_by_task_id(engine: Engine, models_dir: Path) -> None:
    events: list[ProgressEvent] = []

    async def run() -> list:
        executor = LocalExecutor(engine, models_dir)
        try:
            tasks = [
                Task(41, request("a lighthouse", seeds=(1,), steps=3)),
                Task(42, request("a harbour", seeds=(2,), steps=3)),
            ]
            return await executor.run(tasks, events.append, preview_every=0.0)
        finally:
            await executor.close()

    outcomes = asyncio.run(asyncio.wait_for(run(), timeout=300))
    assert [outcome.status for outcome in outcomes] == [OutcomeStatus.DONE] * 2
    previewed = [event for event in events if event.previews]
    assert [event.step for event in previewed] == [1, 2]
    for event in previewed:
        assert [key for key, _ in event.previews] == [41, 42]
        assert open_jpeg(event.previews[1][1]).size == (64, 64)


# ---------------------------------------------------------------------- TAESD


def test_taesd_folder_is_found_and_decodes(tmp_path: Path) -> None:
    tiny_taesd().save_pretrained(tmp_path / "vae-approx" / "taesd")
    assert find_taesd(tmp_path) == tmp_path / "vae-approx" / "taesd"
    decoder = choose_decoder(tmp_path, CPU, torch.float32)
    assert decoder.name == "taesd"
    images = decoder.decode(torch.randn(2, 4, 8, 8))
    assert images.shape == (2, 3, 16, 16)  # one upsampling level in the tiny model
    assert images.min() >= 0 and images.max() <= 1
    ((_, jpeg),) = PreviewMaker(decoder).previews(torch.randn(2, 4, 8, 8), (2,), keys=(0,))
    assert open_jpeg(jpeg).size == (128, 64)


def test_a1111_taesd_decoder_file_loads_with_its_own_layer_numbers(tmp_path: Path) -> None:
    torch.manual_seed(1)
    original = AutoencoderTiny()  # TAESD's real layout, random weights
    # TAESD's decoder file numbers its layers from 1: layer 0 is the weightless clamp.
    state = {
        f"{int(key.split('.', 1)[0]) + 1}.{key.split('.', 1)[1]}": value.contiguous()
        for key, value in original.decoder.layers.state_dict().items()
    }
    folder = tmp_path / "VAE-approx"
    folder.mkdir()
    save_file(state, str(folder / "taesd_decoder.safetensors"))
    assert find_taesd(tmp_path) == folder / "taesd_decoder.safetensors"
    loaded = load_taesd(folder / "taesd_decoder.safetensors", CPU, torch.float32)
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = (original.decode(latents).sample + 1) / 2
    assert torch.allclose(loaded.decode(latents), expected.clamp(0, 1), atol=1e-6)


def test_a_broken_taesd_file_falls_back_to_the_linear_approximation(tmp_path: Path) -> None:
    folder = tmp_path / "VAE-approx"
    folder.mkdir()
    (folder / "taesd_decoder.pth").write_bytes(b"not a checkpoint")
    assert choose_decoder(tmp_path, CPU, torch.float32).name == "linear"


def test_the_engine_uses_taesd_from_its_models_folder(
    tiny_model: LoadedModel, tmp_path: Path
) -> None:
    tiny_taesd().save_pretrained(tmp_path / "vae-approx" / "taesd")
    engine = Engine(tiny_model, models_dir=tmp_path, batching=TEST_BATCHING)
    events: list[ProgressEvent] = []
    engine.run(engine.prepare(request("a castle", steps=2)), events.append, preview_every=0.0)
    assert engine.preview_maker().decoder.name == "taesd"
    jpeg = events[0].preview(0)
    assert jpeg is not None and open_jpeg(jpeg).size == (64, 64)
    assert events[1].previews == ()
