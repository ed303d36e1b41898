"""The grid's buttons as persistent Discord components: a press is matched by its id
(`easel:<job>:<action>`) alone, so buttons on old messages keep working after a restart."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.core.buttons import ButtonRows, parse_button_id

if TYPE_CHECKING:
    from bot.discord.client import EaselClient

TEMPLATE = r"easel:(?P<job>[0-9]+):(?P<action>[A-Za-z0-9]+)"


class GridButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=TEMPLATE):
    def __init__(self, job_id: int, action: str, label: str | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=label or action,
                style=discord.ButtonStyle.secondary,
                custom_id=f"easel:{job_id}:{action}",
            )
        )
        self.job_id = job_id
        self.action = action

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> GridButton:
        return cls(int(match["job"]), match["action"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        client: EaselClient = interaction.client
        await client.front_end.press(interaction, self.job_id, self.action)


def grid_view(rows: ButtonRows, locale: str) -> discord.ui.View | None:
    """The core's button rows as a view of persistent buttons (none: no view)."""
    if not rows:
        return None
    view = discord.ui.View(timeout=None)
    for index, row in enumerate(rows):
        for spec in row:
            parsed = parse_button_id(spec.custom_id)
            assert parsed is not None, spec.custom_id  # the core made it
            job, action = parsed
            button = GridButton(job, action.name, spec.text(locale))
            button.row = index
            view.add_item(button)
    return view
