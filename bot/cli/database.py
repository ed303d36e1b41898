"""`easel db upgrade|current|backup`: the database's migrations and a copy of it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.common import HELP_STYLE, err, out
from bot.cli.output import JsonOption, human_bytes, print_json
from bot.cli.texts import bilingual
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.store.backup import BackupTargetError

db_app = typer.Typer(
    help=bilingual("The database: migrations and backups.", "데이터베이스: 마이그레이션과 백업."),
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
    from bot.store import Store, missing_sqlite_file

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
    from bot.store import StoreError, missing_sqlite_file
    from bot.store.backup import BackupTargetError, backup_sqlite

    url = Settings().database_url
    refusal = _not_backed_up_here(url)
    if refusal is not None:
        err.print(refusal)
        raise typer.Exit(1)
    missing = missing_sqlite_file(url)
    if missing is not None:
        err.print(
            bilingual(
                f"No database yet ({missing} does not exist): there is nothing to back up.",
                f"아직 데이터베이스가 없습니다({missing} 없음): 백업할 것이 없습니다.",
            )
        )
        raise typer.Exit(1)
    try:
        result = backup_sqlite(url, path, force=force)
    except BackupTargetError as error:
        err.print(_target_problem(error))
        raise typer.Exit(1) from None
    except StoreError as error:
        err.print(str(error))
        raise typer.Exit(1) from None
    if as_json:
        print_json(result)
        return
    size = f"{human_bytes(result.bytes)} ({result.bytes} bytes)"
    revision = result.revision or "none"
    if result.jobs is None:
        jobs = bilingual("no jobs table", "jobs 테이블 없음")
    else:
        jobs = bilingual(f"{result.jobs} jobs", f"작업 {result.jobs}개")
    out.print(
        bilingual(
            f"Backed up to {result.path}: {size}, {jobs}, revision {revision}.",
            f"{result.path}에 백업했습니다: {size}, {jobs}, 리비전 {revision}.",
        )
    )


def _not_backed_up_here(url: str) -> str | None:
    """What to use instead for a database that is not an SQLite file."""
    from sqlalchemy.engine import make_url

    from bot.store.backup import unsupported_reason

    if unsupported_reason(url) is None:
        return None
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return bilingual(
            "The database is PostgreSQL: back it up with pg_dump (e.g. pg_dump -Fc).",
            "데이터베이스가 PostgreSQL입니다: pg_dump로 백업하세요(예: pg_dump -Fc).",
        )
    if backend == "sqlite":
        return bilingual(
            "The database is in memory: there is no file to back up.",
            "메모리 안의 데이터베이스라 백업할 파일이 없습니다.",
        )
    return bilingual(
        f"The database is {backend}: back it up with that database's own dump tool.",
        f"데이터베이스가 {backend}입니다: 그 데이터베이스의 덤프 도구로 백업하세요.",
    )


def _target_problem(error: BackupTargetError) -> str:
    from bot.store.backup import BackupTarget

    path, folder = error.path, error.path.parent
    texts = {
        BackupTarget.EXISTS: (
            f"{path} already exists: choose another path or add --force.",
            f"{path}이(가) 이미 있습니다: 다른 경로를 고르거나 --force를 붙이세요.",
        ),
        BackupTarget.IS_FOLDER: (
            f"{path} is a folder: give the backup's file name, e.g. {path}/easel.db.",
            f"{path}은(는) 폴더입니다: 백업 파일 이름을 주세요(예: {path}/easel.db).",
        ),
        BackupTarget.NO_FOLDER: (
            f"The folder {folder} does not exist.",
            f"{folder} 폴더가 없습니다.",
        ),
        BackupTarget.IS_DATABASE: (
            f"{path} is the database itself: choose another path.",
            f"{path}은(는) 데이터베이스 자체입니다: 다른 경로를 고르세요.",
        ),
    }
    return bilingual(*texts[error.problem])
