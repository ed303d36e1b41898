"""The operator's commands speak the terminal's language: Korean under a Korean LANG (or
EASEL_LANG=ko), English otherwise. Help texts are chosen when the command line is built."""

from __future__ import annotations

import os

from bot.core.messages import normalise_locale


def terminal_locale() -> str:
    """EASEL_LANG, else LANG (ko_KR.UTF-8 is Korean), else English."""
    return normalise_locale(os.environ.get("EASEL_LANG") or os.environ.get("LANG") or "en")


def bilingual(en: str, ko: str) -> str:
    """`en` or `ko`, whichever the terminal speaks."""
    return ko if terminal_locale() == "ko" else en
