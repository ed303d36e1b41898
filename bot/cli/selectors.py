"""How the operator's commands name users and times: `--user 12` or `--user discord:1234`,
`--since 30m|12h|7d|2w` or an ISO date."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.texts import bilingual

if TYPE_CHECKING:
    from bot.store import Store, UserRecord


UserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        metavar="USER",
        help=bilingual(
            "Only this user: the store's user id (12) or PLATFORM:ID (discord:1234).",
            "이 사용자만: 저장소의 사용자 번호(12) 또는 플랫폼:ID(discord:1234).",
        ),
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="WHEN",
        help=bilingual(
            "Only jobs made since then: 30m, 12h, 7d, 2w ago, or an ISO date (2026-11-30).",
            "그때 이후의 작업만: 30m, 12h, 7d, 2w 전, 또는 ISO 날짜(2026-11-30).",
        ),
    ),
]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `12h`, `7d`, `2w` before `now`, or an ISO date or time (UTC unless it says
    otherwise); `typer.BadParameter` for anything else."""
    from bot.core.durations import DurationError, is_duration, parse_length

    if is_duration(text):
        try:
            return (now or datetime.now(UTC)) - parse_length(text)
        except DurationError:
            raise _bad_since(text) from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _bad_since(text) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _bad_since(text: str) -> typer.BadParameter:
    return typer.BadParameter(
        bilingual(
            f"{text!r} is not a time: give 30m, 12h, 7d, 2w or an ISO date such as 2026-11-30.",
            f"{text!r}은(는) 시간이 아닙니다: 30m, 12h, 7d, 2w 또는 2026-11-30 같은 ISO 날짜를 "
            "주세요.",
        ),
        param_hint="--since",
    )


def since_option(text: str | None) -> datetime | None:
    return None if text is None else parse_since(text)


def resolve_user(store: Store, text: str) -> UserRecord:
    """The user a `--user` value names; `typer.BadParameter` when it names nobody."""
    from bot.store.listing import find_user

    value = text.strip()
    platform, colon, platform_id = value.partition(":")
    if colon:
        if not platform or not platform_id:
            raise _bad_user(text)
        user = find_user(store, platform.strip().lower(), platform_id.strip())
    elif value.isdigit():
        user = store.user_by_id(int(value)) if int(value) < 2**63 else None
    else:
        raise _bad_user(text)
    if user is None:
        raise typer.BadParameter(
            bilingual(
                f"no user {value} in the database.",
                f"데이터베이스에 사용자 {value}이(가) 없습니다.",
            ),
            param_hint="--user",
        )
    return user


def _bad_user(text: str) -> typer.BadParameter:
    return typer.BadParameter(
        bilingual(
            f"{text!r} is not a user: give the store's user id (12) or PLATFORM:ID (discord:1234).",
            f"{text!r}은(는) 사용자가 아닙니다: 저장소의 사용자 번호(12) 또는 플랫폼:ID"
            "(discord:1234)를 주세요.",
        ),
        param_hint="--user",
    )


def user_label(user: UserRecord | None) -> str:
    """`platform:id (name)`, as an operator recognises a user."""
    if user is None:
        return "?"
    label = f"{user.platform}:{user.platform_user_id}"
    return f"{label} ({user.display_name})" if user.display_name else label
