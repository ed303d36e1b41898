"""The grid's Remix button as a modal: the job's prompt and flags in a text box to edit.

A modal is answered by its custom_id alone (`easel:remix:<job>`), and discord.py only
dispatches submissions of modals it sent in this process; so the modal is sent unregistered
and every submission, before or after a restart, is matched here from the raw interaction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import discord

from bot.core.messages import Key, Message
from bot.discord.translator import cut

MODAL_ID = re.compile(r"^easel:remix:(?P<job>[0-9]{1,20})$")
LINE_ID = "line"
MAX_TITLE = 45  # Discord's limits on a modal's title and a text input's value
MAX_VALUE = 4000


def remix_modal(job_id: int, line: str, locale: str) -> discord.ui.Modal:
    """The modal with the job's line prefilled. It is stopped before it is sent, so that
    discord.py does not keep it: `submitted` handles the answer."""
    modal = discord.ui.Modal(
        title=cut(Message(Key.REMIX_MODAL_TITLE, {"job": job_id}).render(locale), MAX_TITLE),
        custom_id=f"easel:remix:{job_id}",
        timeout=None,
    )
    text = discord.ui.TextInput(
        style=discord.TextStyle.paragraph,
        custom_id=LINE_ID,
        default=line,
        max_length=MAX_VALUE,
    )
    label = cut(Message(Key.REMIX_MODAL_LABEL).render(locale), MAX_TITLE)
    modal.add_item(discord.ui.Label(text=label, component=text))
    modal.stop()
    return modal


def fits(line: str) -> bool:
    return 0 < len(line) <= MAX_VALUE


def submitted(interaction: discord.Interaction[Any]) -> tuple[int, str] | None:
    """The job and the edited line of a remix modal's submission; None for anything else."""
    if interaction.type is not discord.InteractionType.modal_submit:
        return None
    data: Mapping[str, Any] = interaction.data or {}
    match = MODAL_ID.match(str(data.get("custom_id", "")))
    if match is None:
        return None
    value = _value_of(data.get("components") or [], LINE_ID)
    return (int(match["job"]), value) if value is not None else None


def _value_of(components: Sequence[Mapping[str, Any]], custom_id: str) -> str | None:
    """A submitted text input's value, in rows (type 1) or labels (type 18) alike."""
    for component in components:
        if component.get("custom_id") == custom_id and "value" in component:
            return str(component["value"])
        nested = list(component.get("components") or [])
        if isinstance(component.get("component"), Mapping):
            nested.append(component["component"])
        found = _value_of(nested, custom_id)
        if found is not None:
            return found
    return None
