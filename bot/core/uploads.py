"""Images that users send to start from (img2img), checked before they are downloaded.

Chat platforms say an attachment's size and type before its bytes are fetched; a file that is
not an image or is too large is refused then, in the user's language, and nothing is fetched.
What is fetched is checked again from its header by the job service (`JobService.options`).
"""

from __future__ import annotations

from bot.core.events import Refusal
from bot.core.messages import Key, Message

MIB = 1024 * 1024
# Discord lets anyone send 10 MiB; a 4096x4096 PNG (the default pixel limit) fits in 20 MiB.
MAX_INPUT_BYTES = 20 * MIB


def check_input_upload(size: int, content_type: str | None, limit: int = MAX_INPUT_BYTES) -> None:
    """Refuse an upload whose declared type is not an image, or that is over `limit` bytes.
    An upload of unknown type passes: its bytes are checked when read."""
    if content_type is not None and not content_type.lower().startswith("image/"):
        raise Refusal(Message(Key.NOT_AN_IMAGE))
    if size > limit:
        raise Refusal(
            Message(Key.IMAGE_TOO_LARGE, {"size": _megabytes(size), "limit": _megabytes(limit)})
        )


def _megabytes(size: int) -> str:
    return f"{size / MIB:.1f}".removesuffix(".0")
