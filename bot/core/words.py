"""Words a prompt is checked for: operators' banned words and the NSFW words.

Where NSFW words are allowed, a job whose prompt has one is "flagged": front ends show its
images behind a spoiler (Discord) or a blur (Telegram). Flagged is derived from the prompt,
so a restart, a child job (upscale, variation) and a redelivery all agree without a column.
"""

from __future__ import annotations

import re

# Refused where a chat does not allow NSFW; operators add more with banned words.
NSFW_WORDS = (
    "nsfw",
    "nude",
    "nudity",
    "naked",
    "porn",
    "hentai",
    "sex",
    "explicit",
    "누드",
    "야동",
)


def first_match(prompt: str, words: tuple[str, ...]) -> str | None:
    """The first listed word in the prompt: whole words for Latin text, anywhere for Hangul."""
    lowered = prompt.lower()
    for word in words:
        needle = word.strip().lower()
        if not needle:
            continue
        if needle.isascii():
            if re.search(rf"(?<![\w]){re.escape(needle)}(?![\w])", lowered):
                return word
        elif needle in lowered:
            return word
    return None


def nsfw_word(prompt: str) -> str | None:
    """The first NSFW word in the prompt, or None."""
    return first_match(prompt, NSFW_WORDS)


def nsfw_allowed(adult_ok: bool | None, chat_allows: bool) -> bool:
    """Whether NSFW prompts may run where a request comes from: both the operator and the
    platform must allow them.

    The chat's `nsfw_allowed` rule (off until an Easel admin turns it on) is the operator's
    opt-in; a platform that marks a channel not age-restricted (`adult_ok=False`) refuses them
    there whatever the rule says, as Discord's rules require. Where the platform says nothing
    (`None`: a DM, Telegram, the console), the rule alone decides.
    """
    return chat_allows and adult_ok is not False
