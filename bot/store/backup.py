"""A copy of an SQLite database taken while the bot runs (`easel db backup PATH`).

SQLite's online backup API copies the database as one consistent snapshot: it reads inside
one read transaction, and in WAL mode the bot's writers carry on meanwhile. The copy is
written to a temporary name beside the destination, checked, made a single file (rollback
journal, not WAL), flushed to disk and only then given its name, so a destination path never
holds half a copy. PostgreSQL and other servers have their own tools (pg_dump).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sqlalchemy.engine import make_url

from bot.store.faults import StoreError, sqlite_file

BUSY_TIMEOUT_S = 30.0


class BackupNotSupportedError(StoreError):
    """Not an SQLite file: the database's own tools make its backups."""


class BackupTarget(StrEnum):
    """Why a destination was refused (the command line says it in the terminal's language)."""

    EXISTS = "exists"
    IS_FOLDER = "is_folder"
    NO_FOLDER = "no_folder"
    IS_DATABASE = "is_database"


TARGET_PROBLEMS = {
    BackupTarget.EXISTS: "{path} already exists: choose another path or add --force.",
    BackupTarget.IS_FOLDER: "{path} is a folder: give the backup's file name, e.g. "
    "{path}/easel.db.",
    BackupTarget.NO_FOLDER: "The folder {folder} does not exist.",
    BackupTarget.IS_DATABASE: "{path} is the database itself: choose another path.",
}


class BackupTargetError(StoreError):
    """The destination cannot take the backup; nothing was written."""

    def __init__(self, problem: BackupTarget, path: Path) -> None:
        super().__init__(TARGET_PROBLEMS[problem].format(path=path, folder=path.parent))
        self.problem = problem
        self.path = path


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    jobs: int | None  # None: the copy has no jobs table (not an Easel database)
    revision: str | None  # the copy's migration revision


def backup_sqlite(url: str, destination: Path, force: bool = False) -> BackupResult:
    """Copy the SQLite database `url` names to `destination`; an existing file there is
    refused (`StoreError`) unless `force`."""
    source_path = _source_file(url)
    target = destination.expanduser()
    _check_destination(source_path, target, force)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    try:
        jobs, revision = _copy(source_path, temp)
        _fsync(temp)
        _put_in_place(temp, target, force)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_folder(target.parent)
    return BackupResult(target, target.stat().st_size, jobs, revision)


def unsupported_reason(url: str) -> str | None:
    """Why `url` cannot be backed up here (with what to use instead); None for an SQLite file."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return "The database is PostgreSQL: back it up with pg_dump (e.g. pg_dump -Fc)."
    if backend != "sqlite":
        return f"The database is {backend}: back it up with that database's own dump tool."
    if sqlite_file(parsed) is None:
        return "The database is in memory: there is no file to back up."
    return None


def _source_file(url: str) -> Path:
    reason = unsupported_reason(url)
    if reason is not None:
        raise BackupNotSupportedError(reason)
    path = sqlite_file(make_url(url))
    assert path is not None
    if not path.is_file():
        raise StoreError(f"No database at {path}: there is nothing to back up.")
    return path


def _check_destination(source: Path, target: Path, force: bool) -> None:
    if target.is_dir():
        raise BackupTargetError(BackupTarget.IS_FOLDER, target)
    if not target.parent.is_dir():
        raise BackupTargetError(BackupTarget.NO_FOLDER, target)
    if target.exists() and target.resolve() == source.resolve():
        raise BackupTargetError(BackupTarget.IS_DATABASE, target)
    if target.exists() and not force:
        raise BackupTargetError(BackupTarget.EXISTS, target)


def _copy(source_path: Path, temp: Path) -> tuple[int | None, str | None]:
    """The backup itself, into `temp`; the copy's job count and revision."""
    source = sqlite3.connect(source_path, timeout=BUSY_TIMEOUT_S)
    try:
        copy = sqlite3.connect(temp)
        try:
            source.backup(copy)  # every page in one step: one consistent snapshot
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            problem = _integrity_problem(copy)
            if problem is not None:
                raise StoreError(f"The copy failed its integrity check ({problem}); not kept.")
            return _count_jobs(copy), _revision(copy)
        finally:
            copy.close()
    finally:
        source.close()


def _integrity_problem(connection: sqlite3.Connection) -> str | None:
    rows = connection.execute("PRAGMA integrity_check").fetchall()
    first = rows[0][0] if rows else "no answer"
    return None if first == "ok" else str(first)


def _count_jobs(connection: sqlite3.Connection) -> int | None:
    try:
        return int(connection.execute("SELECT count(*) FROM jobs").fetchone()[0])
    except sqlite3.OperationalError:  # no such table
        return None


def _revision(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else str(row[0])


def _put_in_place(temp: Path, target: Path, force: bool) -> None:
    """Give the finished copy its name: replacing a file only with `force`, and never one
    that appeared meanwhile otherwise (a hard link fails on an existing name)."""
    if force:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)
    except FileExistsError:
        raise BackupTargetError(BackupTarget.EXISTS, target) from None
    except OSError:  # a file system without hard links
        if target.exists():
            raise BackupTargetError(BackupTarget.EXISTS, target) from None
        os.replace(temp, target)


def _fsync(path: Path) -> None:
    with path.open("rb+") as file:
        os.fsync(file.fileno())


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform opens folders
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
