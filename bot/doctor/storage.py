"""The database: reachable, and at the revision this Easel needs. Only read: never created,
never migrated (a bot may be running on it). The password is never printed."""

from __future__ import annotations

from bot.doctor.checks import Check
from bot.settings import Settings
from pipeline.errors import first_line

UPGRADE = (
    "run `easel db upgrade` (starting the bot does it too); back the database up first if it "
    "holds data you need"
)


def check_database(settings: Settings) -> Check:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from bot.store import missing_sqlite_file

    url = settings.database_url
    try:
        parsed = make_url(url)
    except ArgumentError:
        return Check.fail(
            "database",
            "DATABASE_URL is not a database URL",
            "write it as sqlite:///easel.db or postgresql+psycopg://USER:PASSWORD@HOST/NAME",
        )
    shown = parsed.render_as_string(hide_password=True)
    missing = missing_sqlite_file(url)
    if missing is not None:
        return Check.warn(
            "database",
            f"no database yet: {missing.absolute()} does not exist",
            "run `easel db upgrade`",
        )
    try:
        current, head, known = _revisions(url)
    except Exception as error:  # a driver missing, a server down, a file that is no database
        message = first_line(error)
        if parsed.password:
            message = message.replace(parsed.password, "***")
        fix = (
            "check DATABASE_URL (driver, host, user, password, database name) and that the "
            "database server runs"
        )
        if isinstance(error, ModuleNotFoundError):
            fix = f"install the database driver {error.name} into Easel's virtual environment"
        return Check.fail(
            "database", f"cannot open {shown}: {type(error).__name__}: {message}", fix
        )
    if current == head:
        return Check.ok("database", f"{shown}, at revision {head} (up to date)")
    if current is None:
        return Check.fail("database", f"{shown} has no Easel tables yet", UPGRADE)
    if current in known:
        return Check.fail(
            "database", f"{shown} is at revision {current}; this Easel needs {head}", UPGRADE
        )
    return Check.fail(
        "database",
        f"{shown} is at revision {current}, which this Easel does not know (a newer Easel "
        "migrated it)",
        "run the newer Easel, or go back to a backup from before it",
    )


def _revisions(url: str) -> tuple[str | None, str, frozenset[str]]:
    """The database's revision, the newest one, and every revision this Easel has."""
    from alembic.script import ScriptDirectory

    from bot.store import Store
    from bot.store.database import MIGRATIONS_DIR

    store = Store(url)
    try:
        current, head = store.current(), store.head()
    finally:
        store.close()
    scripts = ScriptDirectory(str(MIGRATIONS_DIR))
    return current, head, frozenset(script.revision for script in scripts.walk_revisions())
