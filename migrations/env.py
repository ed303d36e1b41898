"""Alembic environment: `Store.upgrade()` passes its own connection; the CLI uses DATABASE_URL."""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

from bot.store.models import Base, UTCDateTime

DEFAULT_URL = "sqlite:///easel.db"

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url", DEFAULT_URL)


def render_item(kind: str, item: Any, autogen_context: AutogenContext) -> str | bool:
    """Migrations spell the store's UTC timestamps as plain DateTime, free of bot imports."""
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure_options() -> dict[str, Any]:
    # Batch mode lets ALTERs run on SQLite, which copies the table to change it.
    return {
        "target_metadata": target_metadata,
        "render_as_batch": True,
        "compare_type": True,
        "render_item": render_item,
    }


def run_migrations_offline() -> None:
    """Print the SQL (`alembic upgrade head --sql`) instead of running it."""
    context.configure(
        url=database_url(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, **configure_options())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    engine = create_engine(database_url())
    if engine.dialect.name == "sqlite":
        transactional_sqlite_ddl(engine)
    try:
        # One transaction for the whole upgrade: a migration stopped halfway leaves nothing.
        with engine.connect() as own_connection, own_connection.begin():
            run_on(own_connection)
    finally:
        engine.dispose()


def transactional_sqlite_ddl(engine: Engine) -> None:
    """pysqlite commits before DDL on its own; take its transactions over so DDL is rolled
    back with everything else (SQLAlchemy's recipe for SQLite's transactional DDL)."""

    def no_driver_transactions(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None

    def begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    event.listen(engine, "connect", no_driver_transactions)
    event.listen(engine, "begin", begin)


# Only the alembic command line configures logging; inside the bot the bot owns it.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
