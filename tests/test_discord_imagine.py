"""Discord's /imagine and its options (bot/discord/imagine.py) and the core's choice lists
(bot/core/choices.py): the synced command, autocomplete in English and Korean, options that
reach the stored job, and img2img from an attachment, with the real discord.py client against
the fake Discord and a real bot on the tiny model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.core.choices import (
    MAX_CHOICES,
    preset_choices,
    sampler_choices,
    vocabulary_choices,
)
from bot.core.events import Refusal
from bot.core.options import CATEGORY_FLAGS, options_from_fields
from bot.core.service import JobService
from bot.core.uploads import MAX_INPUT_BYTES, MIB, check_input_upload
from bot.discord.sync import command_payload
from bot.runtime import Bot
from bot.store import JobStatus
from pipeline.engine import Engine
from pipeline.presets import read_presets_file
from pipeline.prompts.vocabulary import Vocabulary
from pipeline.request import GenerationRequest
from pipeline.sampler_names import ALL_NAMES
from pipeline.validation import Limits
from tests.fakes.discord import (
    AUTOCOMPLETE_RESULT,
    DEFERRED_CHANNEL_MESSAGE,
    MESSAGE_FLAG_EPHEMERAL,
    FakeDiscord,
    SentInteraction,
    fake_discord,
    is_chat_input_name,
)
from tests.test_discord import JOB_WAIT_S, WAIT_S, is_result, run, serving

OPTION_ORDER = [
    "prompt",
    "negative",
    "style",
    "shot",
    "lighting",
    "quality",
    "aspect",
    "preset",
    "seed",
    "steps",
    "cfg",
    "sampler",
    "count",
    "tile",
    "hires",
    "image",
    "strength",
    "control",
    "control_image",
]
PRESETS = """
[presets.ink-sketch]
description_en = "Ink sketch"
description_ko = "잉크 스케치"
trigger = "ink sketch"

[presets.neon-city]
description_en = "Neon city nights"
description_ko = "네온 도시의 밤"
trigger = "neon lights"
"""


def hangul(text: str) -> bool:
    return any("\uac00" <= char <= "\ud7a3" for char in text)


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_presets(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / "presets.toml").write_text(PRESETS, encoding="utf-8")
    return models / "presets.toml"


def stored_request(bot: Bot, job_id: int) -> GenerationRequest:
    job = bot.store.job(job_id)
    assert job is not None, f"job #{job_id} was not written"
    return GenerationRequest.from_json(job.request)


async def choices(sent: SentInteraction) -> list[dict[str, Any]]:
    answer = await sent.next_call(timeout=WAIT_S)
    assert answer.json["type"] == AUTOCOMPLETE_RESULT and answer.status < 300, answer.response
    found: list[dict[str, Any]] = answer.json["data"]["choices"]
    assert len(found) <= MAX_CHOICES
    assert all(1 <= len(c["name"]) <= 100 and 1 <= len(c["value"]) <= 100 for c in found)
    return found


async def refused_after_defer(sent: SentInteraction) -> str:
    """The private answer to a refused /imagine: it is acknowledged first (Discord allows
    3 s), then the public "thinking" answer is deleted and the refusal goes to the asker
    alone."""
    ack = await sent.next_call(timeout=WAIT_S)
    assert ack.json["type"] == DEFERRED_CHANNEL_MESSAGE
    answer = await sent.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
    assert answer.status == 200, answer.response
    assert answer.json["flags"] & MESSAGE_FLAG_EPHEMERAL
    deleted = [c for c in sent.fake.calls if sent.concerns(c) and c.method == "DELETE"]
    assert len(deleted) == 1
    return str(answer.json["content"])


# --------------------------------------------------------------------------- the command


def test_the_imagine_payload_has_every_option_in_order_with_korean_names() -> None:
    commands: list[dict[str, Any]] = []

    async def scenario() -> None:
        commands.extend(await command_payload(Limits()))

    run(scenario)
    imagine = next(command for command in commands if command["name"] == "imagine")
    assert imagine["name_localizations"] == {"ko": "그리기"}
    options = {option["name"]: option for option in imagine["options"]}
    assert [option["name"] for option in imagine["options"]] == OPTION_ORDER
    assert [name for name, o in options.items() if o.get("required")] == ["prompt"]
    for option in imagine["options"]:
        korean = option["name_localizations"]["ko"]
        assert is_chat_input_name(option["name"]) and is_chat_input_name(korean), korean
        assert 1 <= len(option["description"]) <= 100
        assert 1 <= len(option["description_localizations"]["ko"]) <= 100
    assert options["style"]["name_localizations"] == {"ko": "화풍"}
    autocompleted = [name for name, o in options.items() if o.get("autocomplete")]
    assert autocompleted == ["style", "shot", "lighting", "quality", "preset", "sampler", "control"]
    assert (options["seed"]["min_value"], options["seed"]["max_value"]) == (-1, 2**32 - 1)
    assert (options["steps"]["min_value"], options["steps"]["max_value"]) == (1, 100)
    assert (options["cfg"]["min_value"], options["cfg"]["max_value"]) == (1, 30)
    assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 4)
    assert (options["strength"]["min_value"], options["strength"]["max_value"]) == (0, 1)
    types = {name: option["type"] for name, option in options.items()}
    assert (types["tile"], types["image"], types["steps"], types["cfg"]) == (5, 11, 4, 10)
    assert (types["control"], types["control_image"]) == (3, 11)  # a string, an attachment
    hires = {c["value"]: c for c in options["hires"]["choices"]}
    assert list(hires) == ["off", "2", "1.5", "3", "4"]
    assert hires["off"]["name_localizations"] == {"ko": "끄기"}
    assert hires["2"]["name"] == "on (2×)"
    assert hires["2"]["name_localizations"] == {"ko": "켜기 (2배)"}
    assert [c["value"] for c in options["aspect"]["choices"]][:2] == ["1:1", "2:3"]


# --------------------------------------------------------------------------- core choices


def test_every_choice_is_a_value_the_parser_accepts_and_fits_the_limits(tmp_path: Path) -> None:
    vocabulary = Vocabulary.load()
    for category, flag in CATEGORY_FLAGS.items():
        for locale in ("en", "ko"):
            offered = vocabulary_choices(vocabulary, category, "", locale, limit=1000)
            assert [choice.value for choice in offered] == vocabulary.ids(category)
            for choice in offered:
                assert 1 <= len(choice.label) <= 100 and len(choice.value) <= 100
                parsed = options_from_fields("a cat", vocabulary, **{flag: choice.value})
                assert getattr(parsed, category) == choice.value
    samplers = sampler_choices("", limit=1000)
    assert [choice.value for choice in samplers] == list(ALL_NAMES)
    for choice in samplers:
        parsed = options_from_fields("a cat", vocabulary, sampler=choice.value)
        assert parsed.sampler == choice.value
    presets = read_presets_file(write_presets(tmp_path))
    assert [c.value for c in preset_choices(presets, "", "en")] == ["ink-sketch", "neon-city"]
    assert preset_choices(presets, "네온", "ko")[0].label == "neon-city: 네온 도시의 밤"


def test_choices_match_ids_and_both_labels_and_start_with_the_best_matches() -> None:
    vocabulary = Vocabulary.load()
    assert len(vocabulary.ids("style")) > MAX_CHOICES  # so the cut to 25 shows
    assert len(vocabulary_choices(vocabulary, "style", "", "en")) == MAX_CHOICES
    water = vocabulary_choices(vocabulary, "style", "water", "en")
    assert [c.value for c in water][:2] == ["watercolor", "watercolor-painting"]
    assert all("water" in c.value for c in water)
    korean = vocabulary_choices(vocabulary, "style", "수채", "ko")
    assert [(c.label, c.value) for c in korean][:2] == [
        ("수채", "watercolor"),
        ("수채화", "watercolor-painting"),
    ]
    by_id = vocabulary_choices(vocabulary, "style", "watercolor_painting", "ko")
    assert [c.value for c in by_id] == ["watercolor-painting"] and hangul(by_id[0].label)
    assert vocabulary_choices(vocabulary, "lighting", "zzz-nothing", "en") == []
    karras = sampler_choices("karras")
    assert karras and all(c.value.endswith(" Karras") for c in karras)
    assert [c.value for c in sampler_choices("dpm++ 2m")][:2] == ["DPM++ 2M", "DPM++ 2M Karras"]
    assert len(sampler_choices("", limit=3)) == 3


# --------------------------------------------------------------------------- against the fake


@pytest.fixture
def stay_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    async def nothing_runs(self: JobService) -> None:  # the queue does not run: jobs wait
        return None

    monkeypatch.setattr(JobService, "start", nothing_runs)


async def queued(fake: FakeDiscord, options: dict[str, Any], **how: Any) -> SentInteraction:
    """/imagine, until its job's message says it is queued."""
    sent = await fake.slash("imagine", options, **how)
    message = await sent.next_call(lambda c: c.method == "PATCH", timeout=WAIT_S)
    assert message.status == 200, message.response
    assert "queued" in message.json["content"], message.json["content"]
    return sent


@pytest.mark.usefixtures("stay_queued")
def test_autocomplete_offers_styles_presets_and_samplers_in_the_askers_language(
    tmp_path: Path, engine: Engine
) -> None:
    write_presets(tmp_path)

    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine):
            everything = await choices(await fake.autocomplete("imagine", {"style": ""}, "style"))
            assert len(everything) == MAX_CHOICES
            english = await choices(
                await fake.autocomplete("imagine", {"prompt": "a cat", "style": "water"}, "style")
            )
            assert english[:2] == [
                {"name": "Watercolor", "value": "watercolor"},
                {"name": "Watercolor painting", "value": "watercolor-painting"},
            ]
            korean = await choices(
                await fake.autocomplete("imagine", {"style": "수채"}, "style", locale="ko")
            )
            assert korean[:2] == [
                {"name": "수채", "value": "watercolor"},
                {"name": "수채화", "value": "watercolor-painting"},
            ]
            typed_in_english = await choices(
                await fake.autocomplete("imagine", {"style": "Watercolor"}, "style", locale="ko")
            )
            assert typed_in_english[0] == {"name": "수채", "value": "watercolor"}
            lights = await choices(
                await fake.autocomplete("imagine", {"lighting": ""}, "lighting", locale="ko")
            )
            assert lights and all(hangul(choice["name"]) for choice in lights)

            presets = await choices(await fake.autocomplete("imagine", {"preset": ""}, "preset"))
            assert [choice["value"] for choice in presets] == ["ink-sketch", "neon-city"]
            assert presets[0]["name"] == "ink-sketch: Ink sketch"
            neon = await choices(
                await fake.autocomplete("imagine", {"preset": "네온"}, "preset", locale="ko")
            )
            assert neon == [{"name": "neon-city: 네온 도시의 밤", "value": "neon-city"}]

            samplers = await choices(
                await fake.autocomplete("imagine", {"sampler": "dpm++ 2m k"}, "sampler")
            )
            assert samplers == [{"name": "DPM++ 2M Karras", "value": "DPM++ 2M Karras"}]
            assert not fake.refused_calls

    run(scenario)


@pytest.mark.usefixtures("stay_queued")
def test_typed_options_reach_the_stored_job_and_win_over_flags_in_the_prompt(
    tmp_path: Path, engine: Engine
) -> None:
    write_presets(tmp_path)
    vocabulary = Vocabulary.load()

    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            await queued(
                fake,
                {
                    "prompt": "a lighthouse",
                    "style": "watercolor",
                    "shot": "wide-shot",
                    "lighting": "soft-lighting",
                    "quality": "masterpiece",
                    "steps": 2,
                    "cfg": 5.5,
                    "sampler": "DPM++ 2M Karras",
                    "count": 1,
                    "seed": 11,
                    "preset": "ink-sketch",
                    "tile": True,
                    "hires": "1.5",
                },
            )
            request = stored_request(bot, 1)
            assert (request.steps, request.cfg_scale) == (2, 5.5)
            assert request.sampler == "DPM++ 2M Karras"
            assert request.prompt.startswith("a lighthouse, ")
            for category, chosen in (
                ("style", "watercolor"),
                ("shot", "wide-shot"),
                ("lighting", "soft-lighting"),
                ("quality", "masterpiece"),
            ):
                assert vocabulary.get(category, chosen).prompt in request.prompt
            assert "ink sketch" in request.prompt  # the preset's trigger words
            assert request.seeds == (11,) and request.tiling
            assert request.hires is not None and request.hires.scale == 1.5

            # The same things written as flags: the options win, and turn switches off too.
            await queued(
                fake,
                {
                    "prompt": "a barn --steps 9 --cfg 12 --style pixel-art --tile --hires",
                    "steps": 2,
                    "cfg": 3,
                    "style": "watercolor",
                    "tile": False,
                    "hires": "off",
                    "count": 1,
                },
            )
            request = stored_request(bot, 2)
            assert (request.steps, request.cfg_scale) == (2, 3.0)
            assert vocabulary.get("style", "watercolor").prompt in request.prompt
            assert vocabulary.get("style", "pixel-art").prompt not in request.prompt
            assert not request.tiling and request.hires is None

            # A Korean label is a value the parser takes as well, and the flags still work.
            await queued(fake, {"prompt": "a pond --style 수채화 --steps 2 --n 1"})
            request = stored_request(bot, 3)
            assert vocabulary.get("style", "watercolor-painting").prompt in request.prompt

            refused = await refused_after_defer(
                await fake.slash("imagine", {"prompt": "a cat", "strength": 0.5}, locale="ko")
            )
            assert "--strength" in refused and hangul(refused)
            unknown = await refused_after_defer(
                await fake.slash("imagine", {"prompt": "a cat", "style": "no-such-style"})
            )
            assert unknown.startswith("Unknown --style 'no-such-style'")
            assert bot.store.job(4) is None
            assert not fake.refused_calls

    run(scenario)


def test_img2img_from_an_attachment_and_bad_attachments_refused_privately(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            picture = png()
            attachment = fake.add_attachment("start.png", picture)
            options = {
                "prompt": "a red square",
                "image": attachment,
                "strength": 0.6,
                "steps": 2,
                "count": 1,
            }
            sent = await fake.slash("imagine", options)
            final = await sent.next_call(is_result, timeout=JOB_WAIT_S)
            assert final.status == 200, final.response
            job = bot.store.job(1, with_images=True)
            assert job is not None and job.status is JobStatus.DONE
            request = GenerationRequest.from_json(job.request)
            assert request.is_img2img and request.init_image is not None
            assert request.init_image.path is not None
            assert Path(request.init_image.path).read_bytes() == picture
            assert request.denoising_strength == 0.6
            with Image.open(job.images[0].path) as made:
                assert made.size == (64, 64)

            text = fake.add_attachment("notes.txt", b"hello", content_type="text/plain")
            answer = await refused_after_defer(
                await fake.slash("imagine", {"prompt": "a cat", "image": text})
            )
            assert answer == "That is not an image Easel can read."

            huge = {**fake.add_attachment("huge.png", picture), "size": MAX_INPUT_BYTES + 5 * MIB}
            answer = await refused_after_defer(
                await fake.slash("imagine", {"prompt": "a cat", "image": huge}, locale="ko")
            )
            assert answer == "이미지가 25MB입니다. 20MB 이하의 이미지만 쓸 수 있습니다."

            gone = {**fake.add_attachment("gone.png", picture), "url": fake.url + "/gone.png"}
            answer = await refused_after_defer(
                await fake.slash("imagine", {"prompt": "a cat", "image": gone})
            )
            assert answer.startswith("The attachment could not be downloaded")

            garbage = fake.add_attachment("broken.png", b"\x89PNG not really")
            answer = await refused_after_defer(
                await fake.slash("imagine", {"prompt": "a cat", "image": garbage})
            )
            assert answer == "That is not an image Easel can read."
            assert bot.store.job(2) is None
            assert not fake.refused_calls

    run(scenario)


def test_turned_off_fields_win_over_the_prompts_flags_and_others_cannot_be() -> None:
    vocabulary = Vocabulary.load()
    line = "a barn --tile --hires 3 --style pixel-art --steps 4"
    written = options_from_fields(line, vocabulary)
    assert written.tile and written.hires == 3.0 and written.style == "pixel-art"
    off = options_from_fields(line, vocabulary, turned_off=("tile", "hires", "style"))
    assert (off.tile, off.hires, off.style, off.steps) == (False, None, None, 4)
    with pytest.raises(TypeError):
        options_from_fields(line, vocabulary, turned_off=("steps",))


def test_an_upload_is_checked_by_its_declared_type_and_size() -> None:
    check_input_upload(MAX_INPUT_BYTES, "image/webp")
    check_input_upload(1024, None)  # an unknown type: its bytes are checked when read
    with pytest.raises(Refusal) as not_image:
        check_input_upload(10, "application/pdf")
    assert not_image.value.reply.text("en") == "That is not an image Easel can read."
    with pytest.raises(Refusal) as too_large:
        check_input_upload(MAX_INPUT_BYTES + MIB // 2, "image/png")
    assert too_large.value.reply.text("en") == (
        "The image is 20.5 MB; images up to 20 MB can be used."
    )
