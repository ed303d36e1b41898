"""What the fakes record of an upload: shared by the fake Discord and the fake Telegram."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecordedFile:
    field: str
    filename: str
    content_type: str
    data: bytes
