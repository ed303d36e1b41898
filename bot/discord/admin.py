"""Discord's `/admin` group: ban, unban, role, pause, resume, reload and rules.

Shown by default only to members who may manage the server (`default_permissions`), in servers
only; each subcommand maps its options to one call of the core's `AdminService`, which checks the
caller against Easel's own roles (a server manager who is not an Easel admin is refused there).
Answers go to the caller alone, in the interaction's language.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands

from bot.core.admin import NO_PRESET, AdminService
from bot.core.errors import run_guarded
from bot.core.events import Reply, UserRef
from bot.core.frontend import BotContext
from bot.core.messages import Key
from bot.discord.commands import MAX_CHOICE_NAME, MAX_CHOICES
from bot.discord.interactions import PLATFORM, locale_of, origin_of, user_ref
from bot.discord.render import content
from bot.discord.translator import cut, described, named

MAX_REASON = 500
ROLE_NAMES = {
    "user": Key.CHOICE_ROLE_USER,
    "vip": Key.CHOICE_ROLE_VIP,
    "admin": Key.CHOICE_ROLE_ADMIN,
}
USER_NAMES = {"user": named(Key.NAME_USER)}
CLEAR_PRESET = "none"

Interaction = discord.Interaction[Any]


def add_admin_commands(tree: app_commands.CommandTree[Any], context: BotContext) -> None:
    tree.add_command(admin_group(context.admin))


async def _answer(
    interaction: Interaction, name: str, call: Callable[[UserRef], Awaitable[Reply]]
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    user = user_ref(interaction)
    reply = await run_guarded(call(user), f"discord /admin {name}", user)
    await interaction.followup.send(content(reply, locale_of(interaction)), ephemeral=True)


def _target(user: discord.User | discord.Member) -> UserRef:
    return UserRef(PLATFORM, str(user.id), user.display_name)


def admin_group(admin: AdminService) -> app_commands.Group:
    group = app_commands.Group(
        name=named(Key.NAME_ADMIN),
        description=described(Key.CMD_ADMIN),
        default_permissions=discord.Permissions(manage_guild=True),
        guild_only=True,  # dm_permission: false, for clients that read only that
        # explicit falses: the tree's defaults (DMs, group DMs, user installs) fill any unset
        allowed_contexts=app_commands.AppCommandContext(
            guild=True, dm_channel=False, private_channel=False
        ),
        allowed_installs=app_commands.AppInstallationType(guild=True, user=False),
    )

    @group.command(name=named(Key.NAME_BAN), description=described(Key.CMD_ADMIN_BAN))
    @app_commands.rename(**USER_NAMES, reason=named(Key.NAME_REASON))
    @app_commands.describe(user=described(Key.ARG_USER), reason=described(Key.ARG_REASON))
    async def ban(
        interaction: Interaction,
        user: discord.User,
        reason: app_commands.Range[str, 1, MAX_REASON] | None = None,
    ) -> None:
        await _answer(interaction, "ban", lambda actor: admin.ban(actor, _target(user), reason))

    @group.command(name=named(Key.NAME_UNBAN), description=described(Key.CMD_ADMIN_UNBAN))
    @app_commands.rename(**USER_NAMES)
    @app_commands.describe(user=described(Key.ARG_USER))
    async def unban(interaction: Interaction, user: discord.User) -> None:
        await _answer(interaction, "unban", lambda actor: admin.unban(actor, _target(user)))

    @group.command(name=named(Key.NAME_ROLE), description=described(Key.CMD_ADMIN_ROLE))
    @app_commands.rename(**USER_NAMES, role=named(Key.NAME_ROLE))
    @app_commands.describe(user=described(Key.ARG_USER), role=described(Key.ARG_ROLE))
    @app_commands.choices(
        role=[app_commands.Choice(name=named(key), value=role) for role, key in ROLE_NAMES.items()]
    )
    async def role(interaction: Interaction, user: discord.User, role: str) -> None:
        await _answer(interaction, "role", lambda actor: admin.set_role(actor, _target(user), role))

    @group.command(name=named(Key.NAME_PAUSE), description=described(Key.CMD_ADMIN_PAUSE))
    async def pause(interaction: Interaction) -> None:
        await _answer(interaction, "pause", admin.pause)

    @group.command(name=named(Key.NAME_RESUME), description=described(Key.CMD_ADMIN_RESUME))
    async def resume(interaction: Interaction) -> None:
        await _answer(interaction, "resume", admin.resume)

    @group.command(name=named(Key.NAME_RELOAD), description=described(Key.CMD_ADMIN_RELOAD))
    async def reload(interaction: Interaction) -> None:
        await _answer(interaction, "reload", admin.reload)

    @group.command(name=named(Key.NAME_RULES), description=described(Key.CMD_ADMIN_RULES))
    @app_commands.rename(nsfw=named(Key.NAME_NSFW), preset=named(Key.NAME_PRESET))
    @app_commands.describe(nsfw=described(Key.ARG_NSFW), preset=described(Key.ARG_CHAT_PRESET))
    async def rules(
        interaction: Interaction, nsfw: bool | None = None, preset: str | None = None
    ) -> None:
        origin = origin_of(interaction)
        await _answer(interaction, "rules", lambda actor: admin.rules(actor, origin, nsfw, preset))

    @rules.autocomplete("preset")
    async def preset_choices(
        interaction: Interaction, typed: str
    ) -> list[app_commands.Choice[str]]:
        """The presets whose id holds what was typed, and "none" to clear the default;
        offered to Easel's admins only (the list names what the server has)."""
        if not await admin.is_admin(user_ref(interaction)):
            return []
        wanted = typed.strip().lower()
        names = [*admin.service.presets().ids(), CLEAR_PRESET]
        return [
            app_commands.Choice(name=cut(name, MAX_CHOICE_NAME), value=name)
            for name in names
            if wanted in name.lower() or (name == CLEAR_PRESET and wanted in NO_PRESET)
        ][:MAX_CHOICES]

    return group
