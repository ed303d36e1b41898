"""What can go wrong under the database, said plainly: full or read-only disks, corrupted or
replaced files, and a second bot on the same database.

Every database failure leaves the store as a `StoreError` whose text is one sentence for the
person running the bot (never SQL, never SQLAlchemy's "Background on this error" link); the
original exception stays chained for the log.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import event, exc, text
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext, make_url

from pipeline.errors import EaselError

log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
# sqlite3's primary result codes (the low byte of an extended code).
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 11, 13, 14, 26


class StoreError(EaselError):
    """The database cannot do what was asked; the message says why and what to do."""


class DatabaseReplacedError(StoreError):
    """The database file was deleted or replaced under the running bot: writes would be lost."""


class DatabaseCorruptError(StoreError):
    """The database file is not a database any more: only the operator can mend it."""


class BotAlreadyRunningError(StoreError):
    """Another bot process holds this database."""


@dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int


def sqlite_file(url: URL) -> Path | None:
    """The file an SQLite URL names; None for other databases and in-memory ones."""
    if url.get_backend_name() != "sqlite":
        return None
    if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
        return None
    if url.query.get("uri"):
        database = url.database or ""
        return Path(database.removeprefix("file:")) if database.startswith("file:") else None
    return Path(url.database or "")


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file a URL names when it does not exist yet (opening it would create it)."""
    path = sqlite_file(make_url(url))
    return None if path is None or path.exists() else path


def check_sqlite_file(path: Path) -> None:
    """Refuse, before SQLite maps it, a database it could not write: a read-only file makes
    SQLite's WAL index a read-only mapping that kills the process with SIGBUS."""
    folder = path.parent
    if not _writable(folder):
        raise StoreError(
            f"the folder {folder} of the database is read-only: SQLite writes its journal "
            "beside the database; make the folder writable or set DATABASE_URL"
        )
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"{path} is not a file: set DATABASE_URL to a database file")
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists() and not _writable(file):
            raise StoreError(
                f"the database file {file} is read-only: make it writable "
                f"(chmod u+w {file}) or set DATABASE_URL"
            )
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise DatabaseCorruptError(corrupted_message(path))


def _writable(path: Path) -> bool:
    # Root may write anything, but a file with no write bit was made read-only on purpose.
    mode = path.stat().st_mode
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def corrupted_message(path: Path | str) -> str:
    name = Path(path).name
    return f"{name} is not a valid database (corrupted?): restore a backup or move it away"


def identity(path: Path) -> FileIdentity | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return FileIdentity(status.st_dev, status.st_ino)


class FileWatch:
    """Notices the database file being deleted or replaced while the store has it open (SQLite
    would go on writing to the unlinked file, and everything after would be lost at exit).
    One stat per transaction: microseconds next to the transaction itself."""

    def __init__(self, path: Path, fatal: FatalListeners) -> None:
        self.path = path
        self.fatal = fatal
        self._known: FileIdentity | None = None

    def check(self) -> None:
        now = identity(self.path)
        if self._known is None:
            self._known = now
            return
        if now != self._known:
            error = DatabaseReplacedError(
                f"{self.path.name} was deleted or replaced while the bot ran; stopping "
                "(what the bot wrote since then was lost; restart it to use the new file)"
            )
            self.fatal.tell(error)
            raise error


class FatalListeners:
    """Who wants to hear that the database cannot go on (the bot stops), wherever the error
    surfaces: in a queue batch or in a chat command."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[StoreError], None]] = []

    def add(self, listener: Callable[[StoreError], None]) -> None:
        self._listeners.append(listener)

    def tell(self, error: StoreError) -> None:
        for listener in self._listeners:
            listener(error)


def translate_errors(
    engine: Engine, path: Path | None, watch: FileWatch | None, fatal: FatalListeners
) -> None:
    """Turn the engine's database errors into `StoreError`s with a plain message."""
    place = path.name if path is not None else engine.url.render_as_string(hide_password=True)

    def on_error(context: ExceptionContext) -> None:
        if context.is_pre_ping:
            return
        original = context.original_exception
        if isinstance(original, sqlite3.DatabaseError) and not isinstance(
            original, sqlite3.IntegrityError | sqlite3.ProgrammingError
        ):
            if watch is not None:
                watch.check()  # an I/O error on a deleted file says "replaced", not "I/O"
            message = _sqlite_message(original, place, path)
            if _is_corrupt(original):
                corrupt = DatabaseCorruptError(message)
                fatal.tell(corrupt)
                raise corrupt from original
            raise StoreError(message) from original
        if context.is_disconnect:
            raise StoreError(f"lost the connection to the database {place}") from original
        wrapped = context.sqlalchemy_exception
        if isinstance(wrapped, exc.OperationalError | exc.InternalError) or (
            type(wrapped) is exc.DatabaseError
        ):
            raise StoreError(f"the database {place} failed: {_first_line(original)}") from original

    event.listen(engine, "handle_error", on_error)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _is_corrupt(error: sqlite3.DatabaseError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (SQLITE_NOTADB, SQLITE_CORRUPT)


def _sqlite_message(error: sqlite3.DatabaseError, place: str, path: Path | None) -> str:
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = _first_line(error)
    if primary == SQLITE_FULL or "database or disk is full" in text:
        return f"the database disk is full ({place}): free some space; queued jobs are kept"
    if primary == SQLITE_READONLY:
        return f"the database file {place} is read-only: make it writable or set DATABASE_URL"
    if primary in (SQLITE_NOTADB, SQLITE_CORRUPT):
        return corrupted_message(path or place)
    if primary in (SQLITE_BUSY, SQLITE_LOCKED):
        return f"the database {place} is busy: another program is holding it"
    if primary == SQLITE_CANTOPEN:
        return f"cannot open the database {place}: check that its folder exists and is writable"
    if primary == SQLITE_IOERR:
        return f"the disk under the database {place} failed to read or write ({text})"
    return f"the database {place} failed: {text}"


# --------------------------------------------------------------------------- one bot per database


class BotLock:
    """Held while a bot runs on a database: a second bot would take over the first one's
    running jobs and run them again.

    SQLite: an OS lock (`flock`) on `<db>.lock` beside the database, released by the OS when
    the process dies, so a crash never leaves a stale lock. PostgreSQL and MySQL: a
    session-level advisory lock on a connection kept open while the lock is held."""

    def __init__(self, engine: Engine, path: Path | None) -> None:
        self._engine = engine
        self._path = path
        self._fd: int | None = None
        self._connection: Connection | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._connection is not None

    def acquire(self) -> BotLock:
        if self.held:
            return self
        if self._path is not None:
            self._fd = _flock(self._path)
        elif self._engine.url.get_backend_name() in ("postgresql", "mysql", "mariadb"):
            self._connection = _advisory_lock(self._engine)
        # In-memory SQLite is private to this process: nothing to guard.
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._connection is not None:
            self._connection.close()  # the advisory lock ends with the session
            self._connection = None

    def __enter__(self) -> BotLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def _flock(database: Path) -> int:
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise StoreError(f"cannot create the lock file {path}: {error.strerror}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = _read_pid(fd)
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(f"cannot lock {path}: {error.strerror}") from error
        raise BotAlreadyRunningError(_running_message(database.name, holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _running_message(name: str, pid: int | None) -> str:
    who = f" (pid {pid})" if pid is not None else ""
    return f"Another Easel bot is already running on {name}{who}; stop it first or set DATABASE_URL"


# A fixed key that says "the Easel bot" (the ASCII of "easelbot" as a 63-bit number).
ADVISORY_KEY = int.from_bytes(b"easelbot", "big") & (2**63 - 1)


def _advisory_lock(engine: Engine) -> Connection:
    import sqlalchemy as sa

    connection = engine.connect()
    # Out of the pool for good: a session-level lock lasts as long as the database session,
    # and a pooled connection's session outlives its close() (the lock would stay held by a
    # connection idling in the pool). Detached, close() ends the session and the lock.
    connection.detach()
    try:
        if engine.url.get_backend_name() == "postgresql":
            got = connection.scalar(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}
            )
            holder = None if got else connection.scalar(POSTGRES_HOLDER, {"key": ADVISORY_KEY})
        else:
            got = connection.scalar(sa.text("SELECT GET_LOCK('easel-bot', 0)")) == 1
            holder = None
        connection.commit()
    except BaseException:
        connection.close()
        raise
    if not got:
        connection.close()
        name = engine.url.database or engine.url.render_as_string(hide_password=True)
        message = _running_message(name, None)
        if holder is not None:
            message += f" (database backend pid {holder})"
        raise BotAlreadyRunningError(message)
    return connection


# Who holds our advisory lock on this database (advisory locks are per database; a bigint
# key shows in pg_locks as its high and low 32 bits, with objsubid 1).
POSTGRES_HOLDER = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = (:key >> 32)::bigint::oid AND objid = (:key & 4294967295)::bigint::oid "
    "AND pid <> pg_backend_pid() LIMIT 1"
)
