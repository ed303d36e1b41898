"""`/imagine` and its options: the prompt, then one typed option per flag of the core's parser.

Every option reaches the same parser as the flags written in the prompt (`DiscordFrontEnd.imagine`
-> `JobService.options`), so both may be used at once; an option and a flag for the same thing
take the option's value (`tile: False` turns off a `--tile` in the prompt, `hires: off` a
`--hires`). `control` (`--cn`) takes the image of `control_image`, or else the `image`
attachment, as its control image. Style, shot, lighting, quality, preset, sampler and control
are autocompleted from the core's choice lists (bot/core/choices.py), labelled in the asker's
language. An attached image makes the job img2img; one that is not an image or is too large is
refused privately before it is downloaded. Names, descriptions and choice names carry catalog
keys: Korean clients see them in Korean (bot/discord/translator.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.core.choices import (
    VOCABULARY_OPTIONS,
    Choice,
    control_choices,
    preset_choices,
    sampler_choices,
    vocabulary_choices,
)
from bot.core.events import Refusal, Reply
from bot.core.messages import Key, Message
from bot.core.setting_choices import ASPECTS
from bot.core.uploads import check_input_upload
from bot.discord.interactions import locale_of
from bot.discord.translator import described, named
from pipeline.validation import MAX_SEED, Limits

if TYPE_CHECKING:
    from bot.discord.client import DiscordFrontEnd

Interaction = discord.Interaction[Any]
Autocomplete = Callable[[Interaction, str], Awaitable[list[app_commands.Choice[str]]]]

HIRES_OFF = "off"
# The factors offered; any other (`--hires 2.5`) is written in the prompt.
HIRES_FACTORS = ("1.5", "3", "4")
# An attachment is read after the interaction is acknowledged; a download that hangs gives up.
READ_SECONDS = 30.0

OPTION_NAMES = {
    "prompt": Key.NAME_PROMPT,
    "negative": Key.NAME_NEGATIVE,
    "style": Key.NAME_STYLE,
    "shot": Key.NAME_SHOT,
    "lighting": Key.NAME_LIGHTING,
    "quality": Key.NAME_QUALITY,
    "aspect": Key.NAME_ASPECT,
    "preset": Key.NAME_PRESET,
    "seed": Key.NAME_SEED,
    "steps": Key.NAME_STEPS,
    "cfg": Key.NAME_CFG,
    "sampler": Key.NAME_SAMPLER,
    "count": Key.NAME_COUNT,
    "tile": Key.NAME_TILE,
    "hires": Key.NAME_HIRES,
    "image": Key.NAME_IMAGE,
    "strength": Key.NAME_STRENGTH,
    "control": Key.NAME_CONTROL,
    "control_image": Key.NAME_CONTROL_IMAGE,
}
OPTION_DESCRIPTIONS = {
    "prompt": Key.ARG_PROMPT,
    "negative": Key.ARG_NEGATIVE,
    "style": Key.ARG_STYLE,
    "shot": Key.ARG_SHOT,
    "lighting": Key.ARG_LIGHTING,
    "quality": Key.ARG_QUALITY,
    "aspect": Key.ARG_ASPECT,
    "preset": Key.ARG_PRESET,
    "seed": Key.ARG_SEED,
    "steps": Key.ARG_STEPS,
    "cfg": Key.ARG_CFG,
    "sampler": Key.ARG_SAMPLER,
    "count": Key.ARG_COUNT,
    "tile": Key.ARG_TILE,
    "hires": Key.ARG_HIRES,
    "image": Key.ARG_INIT_IMAGE,
    "strength": Key.ARG_STRENGTH,
    "control": Key.ARG_CONTROL,
    "control_image": Key.ARG_CONTROL_IMAGE,
}


def hires_choices() -> list[app_commands.Choice[str]]:
    return [
        app_commands.Choice(name=named(Key.CHOICE_HIRES_OFF), value=HIRES_OFF),
        app_commands.Choice(name=named(Key.CHOICE_HIRES_ON), value="2"),
        *(app_commands.Choice(name=f"{factor}×", value=factor) for factor in HIRES_FACTORS),
    ]


def discord_choices(choices: list[Choice]) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=choice.label, value=choice.value) for choice in choices]


def switches(tile: bool | None, hires: str | None) -> dict[str, object]:
    """The parser's fields for the two options that can also turn a prompt's flag off."""
    fields: dict[str, object] = {}
    turned_off = []
    if tile:
        fields["tile"] = True
    elif tile is not None:
        turned_off.append("tile")
    if hires == HIRES_OFF:
        turned_off.append("hires")
    elif hires is not None:
        fields["hires"] = hires
    if turned_off:
        fields["turned_off"] = tuple(turned_off)
    return fields


async def read_image(image: discord.Attachment) -> bytes | Reply:
    """The attachment's bytes, or why it cannot be used (checked before it is downloaded)."""
    try:
        check_input_upload(image.size, image.content_type)
        return await asyncio.wait_for(image.read(), READ_SECONDS)
    except Refusal as refusal:
        return refusal.reply
    except (discord.HTTPException, TimeoutError):
        return Reply(Message(Key.ATTACHMENT_UNREADABLE))


def ranged_options(limits: Limits) -> dict[str, object]:
    """The typed options whose bounds are the server's limits (EASEL_MAX_STEPS, EASEL_MIN_CFG,
    EASEL_MAX_CFG, EASEL_MAX_IMAGES): Discord's client then offers only what will be accepted."""
    return {
        "steps": app_commands.Range[int, limits.min_steps, limits.max_steps] | None,
        "cfg": app_commands.Range[float, limits.min_cfg, limits.max_cfg] | None,
        "count": app_commands.Range[int, 1, limits.max_images] | None,
    }


def add_imagine(
    tree: app_commands.CommandTree[Any], front_end: DiscordFrontEnd, limits: Limits
) -> None:
    """Add `/imagine` to `tree`, its steps, cfg and count bounded by `limits`;
    `front_end.imagine` handles it."""
    service = front_end.service

    async def run_imagine(
        interaction: Interaction,
        prompt: str,
        negative: str | None = None,
        style: str | None = None,
        shot: str | None = None,
        lighting: str | None = None,
        quality: str | None = None,
        aspect: str | None = None,
        preset: str | None = None,
        seed: app_commands.Range[int, -1, MAX_SEED] | None = None,
        steps: int | None = None,  # bounded by ranged_options
        cfg: float | None = None,
        sampler: str | None = None,
        count: int | None = None,
        tile: bool | None = None,
        hires: str | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        control: str | None = None,
        control_image: discord.Attachment | None = None,
    ) -> None:
        await front_end.imagine(
            interaction,
            prompt,
            image,
            control_image=control_image,
            cn=control,
            neg=negative,
            style=style,
            shot=shot,
            light=lighting,
            quality=quality,
            ar=aspect,
            preset=preset,
            seed=seed,
            steps=steps,
            cfg=cfg,
            sampler=sampler,
            n=count,
            strength=strength,
            **switches(tile, hires),
        )

    # The bounds come from the settings, so the annotations are set before discord.py reads them.
    run_imagine.__annotations__.update(ranged_options(limits))
    aspects = [app_commands.Choice(name=a, value=a) for a in ASPECTS]
    callback = app_commands.choices(aspect=aspects, hires=hires_choices())(run_imagine)
    callback = app_commands.describe(
        **{name: described(key) for name, key in OPTION_DESCRIPTIONS.items()}
    )(callback)
    callback = app_commands.rename(**{name: named(key) for name, key in OPTION_NAMES.items()})(
        callback
    )
    imagine = tree.command(name=named(Key.NAME_IMAGINE), description=described(Key.CMD_IMAGINE))(
        callback
    )

    def vocabulary_picker(category: str) -> Autocomplete:
        async def pick(interaction: Interaction, typed: str) -> list[app_commands.Choice[str]]:
            vocabulary, locale = service.vocabulary(), locale_of(interaction)
            return discord_choices(vocabulary_choices(vocabulary, category, typed, locale))

        return pick

    for option, category in VOCABULARY_OPTIONS.items():
        imagine.autocomplete(option)(vocabulary_picker(category))

    @imagine.autocomplete("preset")
    async def pick_preset(interaction: Interaction, typed: str) -> list[app_commands.Choice[str]]:
        return discord_choices(preset_choices(service.presets(), typed, locale_of(interaction)))

    @imagine.autocomplete("control")
    async def pick_control(interaction: Interaction, typed: str) -> list[app_commands.Choice[str]]:
        return discord_choices(control_choices(service.config.models_dir, typed))

    @imagine.autocomplete("sampler")
    async def pick_sampler(interaction: Interaction, typed: str) -> list[app_commands.Choice[str]]:
        return discord_choices(sampler_choices(typed))
