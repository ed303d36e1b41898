"""How the operator's commands print: Rich tables for people (colour only on a terminal),
`--json` for scripts (one document on stdout, nothing else there)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from bot.cli.texts import bilingual

JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help=bilingual(
            "Print JSON for scripts instead of a table.", "표 대신 JSON으로 출력합니다."
        ),
    ),
]


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help=bilingual("Model name, path or repo id.", "모델 이름, 경로 또는 저장소 id."),
    ),
]
OutOption = Annotated[
    Path | None, typer.Option("--out", help=bilingual("Output folder.", "출력 폴더."))
]
ReportOption = Annotated[
    bool,
    typer.Option(
        "--json", help=bilingual("Print one JSON object.", "JSON 객체 하나로 출력합니다.")
    ),
]


def to_plain(value: Any) -> Any:
    """Dataclasses, enums, dates, times and paths as JSON's own types (ISO 8601, UTC)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {name: to_plain(item) for name, item in asdict(value).items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, date):  # datetimes too
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_plain(item) for item in value]
    return value


def human_bytes(size: int) -> str:
    """12 B, 340.0 KiB, 1.2 MiB: sizes as every command prints them."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_plain(value), ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()
