"""Zoom out and pan under an upscaled image: the button ids, the jobs a press queues (canvas,
mask, size, prompt), the refusals, and the grid they end with, whose buttons act on the
outpainted request (subtle variation and remix keep the canvas and mask)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.core.buttons import (
    MAX_ID_BYTES,
    Action,
    button_id,
    grid_buttons,
    outpaint_action,
    parse_action,
    parse_button_id,
    upscale_buttons,
)
from bot.core.events import EventKind, JobEvent, Origin, Refusal, UserRef
from bot.core.messages import Key
from bot.core.work import work_of
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import JobKind, JobStatus, NewJob, Store
from bot.store.retention import paths_named
from pipeline.engine import Engine
from pipeline.outpaint import Move
from pipeline.request import GenerationRequest

ORIGIN = Origin("test", "chat-1")
ALICE = UserRef("test", "alice", "Alice", "en")
BORA = UserRef("test", "bora", "Bo-ra", "ko")
WAIT_S = 120


# ------------------------------------------------------------------------------- button ids


def test_outpaint_ids_parse_round_trip_and_fit_the_platforms() -> None:
    for move in Move:
        action = outpaint_action(move)
        assert action.kind is (JobKind.ZOOM if move.zoom else JobKind.PAN)
        assert action.name == move.value and action.index is None
        assert parse_button_id(button_id(17, action)) == (17, action)
        assert parse_action(move.value.lower()) == action
    assert parse_action("Z3") is None and parse_action("P") is None
    assert parse_button_id("easel:5:PX") is None

    biggest = 2**63 - 1  # a BIGINT job id
    rows = upscale_buttons(biggest)
    assert [[parse_button_id(b.custom_id)[1].name for b in row] for row in rows] == [  # type: ignore[index]
        ["Z2", "Z15"],
        ["PL", "PR", "PU", "PD"],
    ]
    assert all(len(b.custom_id.encode()) <= MAX_ID_BYTES for row in rows for b in row)
    assert [b.text("en") for b in rows[0]] == ["Zoom Out 2x", "Zoom Out 1.5x"]
    assert [b.text("ko") for b in rows[0]] == ["2배 줌 아웃", "1.5배 줌 아웃"]
    assert [b.text("en") for b in rows[1]] == ["⬅️", "➡️", "⬆️", "⬇️"]
    # Discord: at most 5 rows of 5; the grid's own buttons are unchanged.
    assert len(rows) <= 5 and all(len(row) <= 5 for row in rows)
    assert parse_button_id(grid_buttons(3, 4)[0][1].custom_id) == (3, Action(JobKind.UPSCALE, 1))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_new_kinds_are_stored_by_the_migrated_schema_as_it_is(
    request: pytest.FixtureRequest, tmp_path: Path, database: str
) -> None:
    """The kind column is a VARCHAR(32) with no CHECK (migration 0001): new kinds need no
    migration, on SQLite and on PostgreSQL (skipped without one, see tests/services.py)."""
    if database == "sqlite":
        url = f"sqlite:///{tmp_path}/easel.db"
    else:
        url = request.getfixturevalue("postgres_store_url")
    with Store(url) as store:
        store.upgrade(through_migrations=True)
        user = store.user("test", "alice")
        for kind in (JobKind.ZOOM, JobKind.PAN):
            new = NewJob(user.id, kind, "{}", None, 4, "test", "chat-1")
            added = store.add_job(new)
            assert store.job(added.id).kind is kind  # type: ignore[union-attr]


# --------------------------------------------------------------------------------- presses


class Recorder:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    async def __call__(self, event: JobEvent) -> None:
        self.events.append(event)

    def finished(self, job_id: int) -> JobEvent:
        (event,) = [e for e in self.events if e.kind is EventKind.FINISHED and e.job_id == job_id]
        return event


def bot_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        outputs_dir=tmp_path / "out",
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path}/easel.db",
        progress_interval=0,
        max_batch_images=4,
        **{"max_images": 2, **overrides},  # a press makes min(4, max_images) pictures
    )


@pytest.fixture
def bot(engine: Engine, tmp_path: Path) -> Iterator[Bot]:
    settings = bot_settings(tmp_path)
    made = build_bot(settings, engine, open_store(settings))
    yield made
    made.store.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, WAIT_S))


async def refused(call: Callable[[], Any]) -> Refusal:
    with pytest.raises(Refusal) as caught:
        await call()
    return caught.value


def request_of(bot: Bot, job_id: int) -> GenerationRequest:
    job = bot.store.job(job_id)
    assert job is not None
    work = work_of(job)
    assert isinstance(work, GenerationRequest)
    return work


def test_zoom_and_pan_on_an_upscaled_image_queue_outpaint_grids(bot: Bot) -> None:
    service = bot.service
    recorder = Recorder()
    service.subscribe("test", recorder)

    async def idle() -> None:
        await service.wait_until_idle("test")

    async def scenario() -> dict[str, Any]:
        options = await service.options(ALICE, "a castle on a hill --steps 2 --n 2", ORIGIN)
        grid = (await service.imagine(ALICE, options, ORIGIN)).job_id
        await service.start()
        await idle()
        await service.dispatcher.set_paused(True)
        upscale = (await service.act(ALICE, grid, "U1", ORIGIN)).job_id  # queued, not run
        found: dict[str, Any] = {"grid": grid, "upscale": upscale}
        found["not ready"] = await refused(lambda: service.act(BORA, upscale, "Z2", ORIGIN))
        found["on a grid"] = await refused(lambda: service.act(ALICE, grid, "PL", ORIGIN))
        found["no job"] = await refused(lambda: service.act(ALICE, 999, "Z15", ORIGIN))
        await service.dispatcher.set_paused(False)
        await idle()
        found["zoom"] = (await service.act(BORA, upscale, "Z2", ORIGIN)).job_id
        found["pan"] = (await service.act(ALICE, upscale, "PL", ORIGIN)).job_id
        await idle()
        zoom = found["zoom"]
        found["upscale again"] = (await service.act(ALICE, zoom, "U2", ORIGIN)).job_id
        found["subtle"] = (await service.act(ALICE, zoom, "S2", ORIGIN)).job_id
        found["strong"] = (await service.act(ALICE, zoom, "V1", ORIGIN)).job_id
        line = await service.remix_line(ALICE, zoom, ORIGIN)
        found["line"] = line
        edited = line.replace("a castle on a hill", "a castle by the sea", 1)
        found["remix"] = (await service.remix(ALICE, zoom, edited, ORIGIN)).job_id
        other_size = line.replace("--size 64x64", "--size 128x64")
        found["resized"] = await refused(lambda: service.remix(ALICE, zoom, other_size, ORIGIN))
        await idle()
        found["again"] = (await service.act(ALICE, found["upscale again"], "Z15", ORIGIN)).job_id
        await idle()
        await service.stop()
        return found

    found = run(scenario())
    grid, upscale, zoom, pan = found["grid"], found["upscale"], found["zoom"], found["pan"]

    # Refusals: in the presser's language, nothing written.
    assert found["not ready"].reply.message.key is Key.JOB_NOT_READY
    assert found["not ready"].reply.text("ko") == f"작업 #{upscale}에는 아직 이미지가 없습니다."
    assert found["on a grid"].reply.message.key is Key.OUTPAINT_NEEDS_UPSCALE
    assert found["no job"].reply.message.key is Key.JOB_NOT_FOUND
    assert found["resized"].reply.message.key is Key.REMIX_CANVAS_SIZE
    assert "--size 64x64" in found["resized"].reply.text("en")

    # The upscaled image is delivered with the zoom and pan rows.
    assert found["line"].startswith("a castle on a hill")
    assert recorder.finished(upscale).reply.buttons == upscale_buttons(upscale)

    parent = request_of(bot, grid)
    bora = run(service.user(BORA))
    for job_id, kind, size in ((zoom, JobKind.ZOOM, (64, 64)), (pan, JobKind.PAN, (96, 64))):
        job = bot.store.job(job_id, with_images=True)
        assert job is not None and job.status is JobStatus.DONE
        assert (job.kind, job.parent_id, job.image_index) == (kind, upscale, None)
        request = request_of(bot, job_id)
        assert (request.width, request.height) == size
        assert request.prompt == parent.prompt and request.steps == parent.steps
        assert request.denoising_strength == 1.0 and request.image_count == 2
        assert request.init_image is not None and request.mask_image is not None
        for ref in (request.init_image, request.mask_image):
            assert ref.path is not None and Path(ref.path).is_file()
            with Image.open(ref.path) as stored:
                assert stored.size == size
        assert {request.init_image.path, request.mask_image.path} <= paths_named([job.request])
        assert [(image.width, image.height) for image in job.images] == [size, size]
        # A normal grid: U/V/S for each image, reroll and remix, and says what it came from.
        event = recorder.finished(job_id)
        assert event.reply.buttons == grid_buttons(job_id, 2)
        what = "zoom out" if kind is JobKind.ZOOM else "pan"
        assert f"{what} of #{upscale}: a castle" in event.reply.text("en")
    assert bot.store.job(zoom).user_id == bora.id  # type: ignore[union-attr]  # the presser's
    with Image.open(request_of(bot, pan).mask_image.path) as mask:  # type: ignore[union-attr, arg-type]
        assert mask.getpixel((0, 32)) == 255 and mask.getpixel((95, 32)) == 0  # new on the left

    # The grid's buttons act on the outpainted request: S keeps the chosen picture's seed
    # and canvas and blends in variation seeds (an outpainting starts from noise, as
    # text-to-image does); V varies the chosen image whole; remix paints the same canvas with
    # the edited prompt.
    zoomed = request_of(bot, zoom)
    images = bot.store.job(zoom, with_images=True).images  # type: ignore[union-attr]
    subtle = request_of(bot, found["subtle"])
    assert (subtle.init_image, subtle.mask_image) == (zoomed.init_image, zoomed.mask_image)
    assert set(subtle.seeds) == {images[1].seed} and len(subtle.variation_seeds) == 2
    assert subtle.denoising_strength == 1.0
    strong = request_of(bot, found["strong"])
    assert strong.mask_image is None
    assert strong.init_image is not None and strong.init_image.path == images[0].path
    remix = request_of(bot, found["remix"])
    assert remix.prompt.startswith("a castle by the sea")
    assert (remix.init_image, remix.mask_image) == (zoomed.init_image, zoomed.mask_image)
    assert (remix.width, remix.height, remix.denoising_strength) == (64, 64, 1.0)
    for job_id in (found["subtle"], found["strong"], found["remix"]):
        assert bot.store.job(job_id).status is JobStatus.DONE  # type: ignore[union-attr]

    # An outpainted grid's upscale has the buttons too: zooming out again works.
    upscaled_again = found["upscale again"]
    assert recorder.finished(upscaled_again).reply.buttons == upscale_buttons(upscaled_again)
    again = bot.store.job(found["again"], with_images=True)
    assert again is not None and again.status is JobStatus.DONE
    assert (again.kind, again.parent_id, len(again.images)) == (JobKind.ZOOM, upscaled_again, 2)
    assert request_of(bot, found["again"]).init_image != zoomed.init_image


def test_a_configured_inpainting_checkpoint_paints_zoom_and_pan(
    engine: Engine, tmp_path: Path
) -> None:
    settings = bot_settings(tmp_path, max_images=1, inpaint_model="sd-inpainting")
    made = build_bot(settings, engine, open_store(settings))
    service = made.service

    async def scenario() -> int:
        options = await service.options(ALICE, "a castle --steps 2 --n 1", ORIGIN)
        grid = (await service.imagine(ALICE, options, ORIGIN)).job_id
        await service.start()
        await service.wait_until_idle("test")
        upscale = (await service.act(ALICE, grid, "U1", ORIGIN)).job_id
        await service.wait_until_idle("test")
        await service.dispatcher.set_paused(True)  # queued, not run: no such checkpoint here
        zoom = (await service.act(ALICE, upscale, "Z15", ORIGIN)).job_id
        await service.stop()
        return zoom

    try:
        zoom = run(scenario())
        request = request_of(made, zoom)
        assert request.model == "sd-inpainting" and request.is_inpaint
    finally:
        made.store.close()
