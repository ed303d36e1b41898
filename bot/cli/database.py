"""`easel db upgrade|current|backup`: the database's migrations and a copy of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import HELP_STYLE, err, out
from bot.cli.output import JsonOption, print_json
from bot.cli.texts import bilingual
from bot.settings import Settings

db_app = typer.Typer(
    help="The database: migrations and backups.", no_args_is_help=True, rich_markup_mode=HELP_STYLE
)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (the bot also does this at start)."""
    from bot.runtime import open_store

    store = open_store(Settings())
    out.print(f"{store.url}: at revision {store.current()}")


@db_app.command("current")
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


@db_app.command(
    "backup",
    help=bilingual(
        "Copy the SQLite database to PATH while the bot runs (SQLite's online backup: one "
        "consistent snapshot, written under a temporary name and then renamed). An existing "
        "file is refused unless --force. For PostgreSQL, use pg_dump.",
        "봇이 실행 중일 때도 SQLite 데이터베이스를 PATH로 복사합니다(SQLite 온라인 백업: 한 "
        "시점의 일관된 사본을 임시 이름으로 쓴 뒤 이름을 바꿉니다). 이미 있는 파일은 --force가 "
        "없으면 덮어쓰지 않습니다. PostgreSQL은 pg_dump를 쓰세요.",
    ),
)
def db_backup(
    path: Annotated[
        Path, typer.Argument(help=bilingual("The backup file.", "백업 파일."), show_default=False)
    ],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help=bilingual("Replace an existing file at PATH.", "PATH에 있는 파일을 덮어씁니다."),
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    from bot.store import StoreError
    from bot.store.backup import backup_sqlite, unsupported_reason

    url = Settings().database_url
    reason = unsupported_reason(url)
    if reason is not None:
        err.print(reason)
        raise typer.Exit(1)
    missing = missing_sqlite_file(url)
    if missing is not None:
        err.print(f"No database yet ({missing} does not exist): there is nothing to back up.")
        raise typer.Exit(1)
    try:
        result = backup_sqlite(url, path, force=force)
    except StoreError as error:
        err.print(str(error))
        raise typer.Exit(1) from None
    if as_json:
        print_json(result)
        return
    jobs = "no jobs table" if result.jobs is None else f"{result.jobs} jobs"
    out.print(
        f"Backed up to {result.path}: {_size_text(result.bytes)}, {jobs}, "
        f"revision {result.revision or 'none'}."
    )


def _size_text(size: int) -> str:
    from bot.cli.retention import human_bytes

    return f"{human_bytes(size)} ({size} bytes)"


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file a URL names when it does not exist yet (opening it would create it)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path
