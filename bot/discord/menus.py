"""Message context menus (right-click a message, Apps): PNG info, Upscale and Vary on the
first image of any message, attached or embedded. PNG info answers the asker alone; Upscale
and Vary queue a job on the image, whose message shows its progress and result the way
/imagine's does. A message without an image gets a private refusal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord import app_commands

from bot.core.errors import run_guarded
from bot.core.events import Refusal, Reply, Ticket
from bot.core.messages import Key, Message
from bot.discord.interactions import locale_of, origin_of, user_ref
from bot.discord.render import content
from bot.discord.translator import KEY

if TYPE_CHECKING:
    from bot.discord.client import DiscordFrontEnd

MAX_IMAGE_BYTES = 50 * 1024 * 1024  # a 4096x4096 PNG (the input limit) fits
FETCH_SECONDS = 30.0
CHUNK_BYTES = 64 * 1024
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


@dataclass(frozen=True)
class ImageSource:
    """Where a message's image is: an attachment, or an embed's image URL."""

    attachment: discord.Attachment | None = None
    url: str | None = None
    size: int | None = None  # bytes, where Discord says


def first_image(message: discord.Message) -> ImageSource | None:
    for attachment in message.attachments:
        kind = (attachment.content_type or "").lower()
        if kind.startswith("image/") or attachment.filename.lower().endswith(_IMAGE_SUFFIXES):
            return ImageSource(attachment=attachment, size=attachment.size)
    for embed in message.embeds:
        for picture in (embed.image, embed.thumbnail):
            url = picture.proxy_url or picture.url
            if url:
                return ImageSource(url=url)
    return None


async def read_image(source: ImageSource) -> bytes:
    """The image's bytes; a refusal when it is too large or Discord does not give it."""
    if source.size is not None and source.size > MAX_IMAGE_BYTES:
        raise _too_large(source.size)
    try:
        if source.attachment is not None:
            data = await source.attachment.read()
        else:
            assert source.url is not None
            data = await _fetch_bounded(source.url, MAX_IMAGE_BYTES)
    except discord.HTTPException as error:
        raise _unreadable(f"HTTP {error.status}") from None
    except (aiohttp.ClientError, TimeoutError) as error:
        raise _unreadable(type(error).__name__) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_large(len(data))
    return data


async def _fetch_bounded(url: str, limit: int) -> bytes:
    """An embedded image, read no further than `limit` bytes: an embed says nothing of its
    size, and it may point anywhere."""
    timeout = aiohttp.ClientTimeout(total=FETCH_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        if response.status != 200:
            raise _unreadable(f"HTTP {response.status}")
        if response.content_length is not None and response.content_length > limit:
            raise _too_large(response.content_length)
        data = bytearray()
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            data += chunk
            if len(data) > limit:
                raise _too_large(len(data))
    return bytes(data)


def _unreadable(detail: str) -> Refusal:
    return Refusal(Message(Key.MENU_IMAGE_UNREADABLE, {"detail": detail}))


def _too_large(size: int) -> Refusal:
    megabytes = {"size": f"{size / 1024 / 1024:.1f}", "limit": MAX_IMAGE_BYTES // 1024 // 1024}
    return Refusal(Message(Key.MENU_IMAGE_TOO_LARGE, megabytes))


def _name(key: Key) -> app_commands.locale_str:
    """A context menu's name in English, with its catalog key for the translator."""
    return app_commands.locale_str(Message(key).render("en"), **{KEY: key})


def add_context_menus(tree: app_commands.CommandTree[Any], front_end: DiscordFrontEnd) -> None:
    async def pnginfo(interaction: discord.Interaction, message: discord.Message) -> None:
        await image_menu(front_end, interaction, message, "pnginfo")

    async def upscale(interaction: discord.Interaction, message: discord.Message) -> None:
        await image_menu(front_end, interaction, message, "upscale")

    async def vary(interaction: discord.Interaction, message: discord.Message) -> None:
        await image_menu(front_end, interaction, message, "vary")

    for key, callback in (
        (Key.MENU_PNGINFO, pnginfo),
        (Key.MENU_UPSCALE, upscale),
        (Key.MENU_VARY, vary),
    ):
        tree.add_command(app_commands.ContextMenu(name=_name(key), callback=callback))


async def image_menu(
    front_end: DiscordFrontEnd,
    interaction: discord.Interaction[Any],
    message: discord.Message,
    what: str,
) -> None:
    locale = locale_of(interaction)
    source = first_image(message)
    if source is None:
        text = Message(Key.MENU_NO_IMAGE).render(locale)
        await interaction.response.send_message(text, ephemeral=True)
        return
    user, origin = user_ref(interaction), origin_of(interaction)
    service = front_end.service
    if what == "pnginfo":
        await interaction.response.defer(ephemeral=True, thinking=True)

        async def parameters() -> Reply:
            return await service.pnginfo(await read_image(source))

        reply = await run_guarded(parameters(), "discord PNG info", user)
        await interaction.followup.send(content(reply, locale), ephemeral=True)
        return
    await interaction.response.defer(thinking=True)

    async def queue() -> Ticket:
        image = await read_image(source)
        if what == "upscale":
            return await service.upscale_image(user, image, origin)
        return await service.vary_image(user, image, origin)

    await front_end.queue(interaction, queue(), f"discord {what} menu", user, edit_original=True)
