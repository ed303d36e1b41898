"""The buttons under a grid (U1-U4, V1-V4, S1-S4, reroll, remix) and under an image upscaled
from one (zoom out 2x and 1.5x, the four pan arrows), the same for every platform.

A button's id is `easel:<job id>:<action>`: at most 64 bytes, so it fits Telegram's
callback_data (64 bytes) and Discord's custom_id (100 characters), and everything a press
needs is in the database, so buttons keep working after a restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.core.messages import Key, Message
from bot.store import JobKind
from pipeline.outpaint import Move

PREFIX = "easel"
MAX_ID_BYTES = 64
REROLL = "reroll"
REMIX = "remix"
_MOVES = "|".join(move.value for move in Move)  # Z2, Z15, PL, PR, PU, PD
_ACTION = re.compile(
    rf"^(?:(?P<letter>[UVS])(?P<index>[1-9]))$|^(?P<whole>reroll|remix)$|^(?P<move>{_MOVES})$",
    re.I,
)
_KINDS = {"U": JobKind.UPSCALE, "V": JobKind.VARY_STRONG, "S": JobKind.VARY_SUBTLE}
_LETTERS = {kind: letter for letter, kind in _KINDS.items()}
# Under an upscaled image, as Midjourney has them: the zooms, then the pan arrows.
OUTPAINT_ROWS = ((Move.ZOOM_2, Move.ZOOM_1_5), (Move.LEFT, Move.RIGHT, Move.UP, Move.DOWN))
_MOVE_LABELS: dict[Move, str | Message] = {
    Move.ZOOM_2: Message(Key.BUTTON_ZOOM_2),
    Move.ZOOM_1_5: Message(Key.BUTTON_ZOOM_1_5),
    Move.LEFT: "\u2b05\ufe0f",  # ⬅️
    Move.RIGHT: "\u27a1\ufe0f",  # ➡️
    Move.UP: "\u2b06\ufe0f",  # ⬆️
    Move.DOWN: "\u2b07\ufe0f",  # ⬇️
}


@dataclass(frozen=True)
class Action:
    """What a button does: a child job of `kind`, from image `index` (0-based) or none; a
    zoom out or pan (`move`) acts on the upscaled image whose button it is."""

    kind: JobKind
    index: int | None = None
    move: Move | None = None

    @property
    def name(self) -> str:
        if self.move is not None:
            return self.move.value
        if self.index is None:
            return REMIX if self.kind is JobKind.REMIX else REROLL
        return f"{_LETTERS[self.kind]}{self.index + 1}"


def outpaint_action(move: Move) -> Action:
    return Action(JobKind.ZOOM if move.zoom is not None else JobKind.PAN, move=move)


@dataclass(frozen=True)
class ButtonSpec:
    label: str | Message
    custom_id: str

    def text(self, locale: str) -> str:
        return self.label if isinstance(self.label, str) else self.label.render(locale)


ButtonRows = tuple[tuple[ButtonSpec, ...], ...]


def parse_action(text: str) -> Action | None:
    match = _ACTION.match(text.strip())
    if match is None:
        return None
    move = match.group("move")
    if move:
        return outpaint_action(Move(move.upper()))
    whole = match.group("whole")
    if whole:
        return Action(JobKind.REMIX if whole.lower() == REMIX else JobKind.REROLL)
    return Action(_KINDS[match.group("letter").upper()], int(match.group("index")) - 1)


def button_id(job_id: int, action: Action) -> str:
    custom_id = f"{PREFIX}:{job_id}:{action.name}"
    if len(custom_id.encode()) > MAX_ID_BYTES:
        raise ValueError(f"button id {custom_id!r} is over {MAX_ID_BYTES} bytes")
    return custom_id


def parse_button_id(custom_id: str) -> tuple[int, Action] | None:
    """The job and action of a button id, or None for anything that is not ours."""
    parts = custom_id.split(":")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if len(parts) != 3 or parts[0] != PREFIX or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    action = parse_action(parts[2])
    return (int(parts[1]), action) if action is not None else None


def grid_buttons(job_id: int, image_count: int) -> ButtonRows:
    """U, V and S for each image (one row each, at most 4), then reroll and remix: at most
    5 buttons a row and 5 rows, as Discord allows. Remix asks the presser for an edited line
    (the front end's part), and queues nothing by itself."""
    shown = range(min(image_count, 4))
    rows = [
        tuple(
            ButtonSpec(f"{letter}{index + 1}", button_id(job_id, Action(kind, index)))
            for index in shown
        )
        for letter, kind in _KINDS.items()
    ]
    reroll = ButtonSpec(Message(Key.BUTTON_REROLL), button_id(job_id, Action(JobKind.REROLL)))
    remix = ButtonSpec(Message(Key.BUTTON_REMIX), button_id(job_id, Action(JobKind.REMIX)))
    rows.append((reroll, remix))
    return tuple(rows)


def upscale_buttons(job_id: int) -> ButtonRows:
    """Under an image upscaled from a grid: Zoom Out 2x and 1.5x, then the four pan arrows."""
    return tuple(
        tuple(
            ButtonSpec(_MOVE_LABELS[move], button_id(job_id, outpaint_action(move))) for move in row
        )
        for row in OUTPAINT_ROWS
    )
