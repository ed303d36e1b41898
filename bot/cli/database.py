"""`easel db upgrade|current`: the database's migrations."""

from __future__ import annotations

from pathlib import Path

import typer

from bot.cli.common import HELP_STYLE, out
from bot.cli.texts import bilingual
from bot.settings import Settings

db_app = typer.Typer(
    help=bilingual("The database: migrations.", "데이터베이스: 마이그레이션."),
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
)


@db_app.command(
    "upgrade",
    help=bilingual(
        "Apply every migration (the bot also does this at start).",
        "모든 마이그레이션을 적용합니다 (봇도 시작할 때 합니다).",
    ),
)
def db_upgrade() -> None:
    """Apply every migration (the bot also does this at start)."""
    from bot.runtime import open_store

    store = open_store(Settings())
    out.print(f"{store.url}: at revision {store.current()}")


@db_app.command(
    "current",
    help=bilingual(
        "Show the database's revision and the newest one.",
        "데이터베이스의 리비전과 최신 리비전을 보여 줍니다.",
    ),
)
def db_current() -> None:
    """Show the database's revision and the newest one."""
    from bot.store import Store

    url = Settings().database_url
    missing = missing_sqlite_file(url)
    if missing is not None:
        out.print(
            f"No database yet ({missing} does not exist); `easel db upgrade` or starting the "
            "bot creates it."
        )
        return
    store = Store(url)
    current, head = store.current(), store.head()
    state = "up to date" if current == head else f"newest is {head}; run `easel db upgrade`"
    out.print(f"{store.url}: revision {current or 'none'} ({state})")


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file a URL names when it does not exist yet (opening it would create it)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path
