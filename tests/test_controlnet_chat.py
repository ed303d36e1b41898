"""ControlNet from the chats: `--cn` with a photo on Telegram, Discord's `control` and
`control_image` options, and the control map sent back with `--cn-show`."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bot.core.work import work_of
from bot.store import JobStatus
from pipeline.engine import Engine
from pipeline.loading import LoadedModel
from tests.conftest import TEST_BATCHING
from tests.fakes.discord import fake_discord
from tests.fakes.telegram import fake_telegram
from tests.telegram_serving import result_of, sent_to
from tests.telegram_serving import run as run_telegram
from tests.telegram_serving import serving as serving_telegram
from tests.test_controlnet import control_models  # noqa: F401  (a fixture)
from tests.test_discord import JOB_WAIT_S, is_result
from tests.test_discord import run as run_discord
from tests.test_discord import serving as serving_discord


@pytest.fixture(scope="module")
def engine(tiny_model: LoadedModel, control_models: Path) -> Iterator[Engine]:  # noqa: F811
    yield Engine(tiny_model, batching=TEST_BATCHING, models_dir=control_models)


def outline() -> bytes:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), outline="black", width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def is_edge_map(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        values = set(np.unique(np.asarray(image.convert("L"))))
    return values == {0, 255}


def test_telegram_a_photo_with_cn_is_the_control_and_the_map_comes_back(
    tmp_path: Path,
    engine: Engine,
    control_models: Path,  # noqa: F811
) -> None:
    async def scenario() -> None:
        async with (
            fake_telegram() as fake,
            serving_telegram(tmp_path, fake, engine, models_dir=control_models) as bot,
        ):
            chat = fake.private_chat(fake.user)
            caption = "/imagine a house --cn canny:0.8 --cn-show --steps 2 --n 1"
            fake.send_photo(chat, fake.user, outline(), caption=caption)
            grid = await result_of(fake, chat)
            job = bot.store.job(1, with_images=True)
            assert job is not None and job.status is JobStatus.DONE
            request = work_of(job)
            assert request.init_image is None and request.control is not None
            assert request.control.model == "tiny-canny" and request.control.weight == 0.8
            assert Path(request.control.image.path or "").read_bytes() == outline()
            with Image.open(job.images[0].path) as made:
                assert 'ControlNet 0: "Module: canny' in made.info["parameters"]
            shown = await fake.wait_for_call(
                lambda call: (
                    sent_to(chat, "sendPhoto")(call)
                    and call.params.get("reply_parameters", {}).get("message_id") == grid.message_id
                ),
                timeout=JOB_WAIT_S,
            )
            assert shown.ok and is_edge_map(shown.file("photo").data)
            # Without an image, --cn is refused and nothing is queued.
            start = len(fake.calls)
            fake.send_message(chat, fake.user, "/imagine a house --cn canny")
            refused = await fake.wait_for_call(
                sent_to(chat, "sendMessage"), timeout=JOB_WAIT_S, start=start
            )
            assert "needs a control image" in refused.params["text"]
            assert bot.store.job(2) is None

    run_telegram(scenario)


def test_discord_control_options_and_the_map_as_a_second_file(
    tmp_path: Path,
    engine: Engine,
    control_models: Path,  # noqa: F811
) -> None:
    async def scenario() -> None:
        async with (
            fake_discord() as fake,
            serving_discord(tmp_path, fake, engine, models_dir=control_models) as bot,
        ):
            attachment = fake.add_attachment("pose.png", outline())
            options = {
                "prompt": "a house --cn-show",
                "control": "canny",
                "control_image": attachment,
                "steps": 2,
                "count": 1,
            }
            sent = await fake.slash("imagine", options)
            final = await sent.next_call(is_result, timeout=JOB_WAIT_S)
            assert final.status == 200, final.response
            pictures = [f for f in final.files if f.data.startswith(b"\x89PNG")]
            assert len(pictures) == 2 and is_edge_map(pictures[1].data)
            job = bot.store.job(1)
            assert job is not None
            control = work_of(job).control
            assert control is not None and control.preprocessor == "canny"
            assert not fake.refused_calls

    run_discord(scenario)
