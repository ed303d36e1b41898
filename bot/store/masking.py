"""Secrets kept out of what the store writes for the operator to read later: a failed job's
traceback and error document may quote a token or a database URL with its password.

The masking itself is the caller's (the same as the log lines': bot/logs.py); the store applies
it where such text is written. Without one, the store masks its own database password."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

from sqlalchemy.engine import URL

TextMask = Callable[[str], str]
PASSWORD = "***"  # what SQLAlchemy writes for a URL's password
MIN_SECRET_LENGTH = 4  # as the logs: shorter values would star ordinary words


def own_password_mask(url: URL) -> TextMask:
    """A mask for a store given none: its database password, as read and as written in a
    URL (percent-encoded)."""
    password = url.password
    values = {str(password), quote(str(password), safe="")} if password else set()
    ordered = sorted((value for value in values if len(value) >= MIN_SECRET_LENGTH), key=len)

    def mask(text: str) -> str:
        for value in reversed(ordered):  # the longer form first
            text = text.replace(value, PASSWORD)
        return text

    return mask


def masked_document(text: str, mask: TextMask) -> str:
    """A JSON document with every string in it masked and its shape kept (masking the JSON
    text itself could cut through a quote); text that is not JSON is masked as text."""
    try:
        document = json.loads(text)
    except ValueError:
        return mask(text)
    masked = _masked(document, mask)
    return text if masked == document else json.dumps(masked, ensure_ascii=False)


def _masked(value: object, mask: TextMask) -> object:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list):
        return [_masked(item, mask) for item in value]
    if isinstance(value, dict):
        return {key: _masked(item, mask) for key, item in value.items()}
    return value
