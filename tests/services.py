"""Fixtures for the real services the scale-out tests need: Redis and PostgreSQL.

`.ci/services start` starts both and prints their URLs as `EASEL_TEST_REDIS_URL` and
`EASEL_TEST_DATABASE_URL`. A test that asks for a service that is not configured is skipped
with the reason, on a developer's machine; under CI (CI=true) it fails instead, so a CI run
that lost its services cannot pass by skipping everything that needed them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import URL, make_url

REDIS_ENV = "EASEL_TEST_REDIS_URL"
DATABASE_ENV = "EASEL_TEST_DATABASE_URL"
START_HINT = 'run `eval "$(.ci/services start)"`'
CONNECT_TIMEOUT = 5  # seconds: a configured service that does not answer fails fast


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(what: str, reason: str) -> None:
    """Skip the test, or fail it under CI, where every service must be there."""
    message = f"{what} not available: {reason}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def service_url(variable: str, what: str) -> str:
    url = os.environ.get(variable, "").strip()
    if not url:
        unavailable(what, f"set {variable}, or {START_HINT}")
    return url


def libpq_url(url: URL | str) -> str:
    """The URL psycopg itself takes (SQLAlchemy's `+psycopg` driver name removed)."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


# --------------------------------------------------------------------------------------- Redis


def worker_database(url: str) -> str:
    """The Redis URL with a database of this test process's own when pytest-xdist runs the
    suite in several processes (gw0 uses 1, gw1 2, ...): `fresh_redis` empties only it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{int(worker[2:]) + 1}"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis server's URL, checked to answer once per session."""
    import redis

    url = worker_database(service_url(REDIS_ENV, "Redis"))
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis at {url} ({REDIS_ENV}) does not answer: {error}", pytrace=False)
    finally:
        client.close()
    return url


@pytest.fixture
def fresh_redis(redis_url: str) -> str:
    """The Redis URL, its database emptied first: no keys, queues or results of earlier
    tests."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url


# ---------------------------------------------------------------------------------- PostgreSQL


class PostgresDatabases:
    """Creates and drops throwaway databases on the test server, through one autocommit
    connection (CREATE DATABASE cannot run in a transaction)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = make_url(url)
        self._connection = psycopg.connect(
            libpq_url(self.url), autocommit=True, connect_timeout=CONNECT_TIMEOUT
        )
        self._made: set[str] = set()

    def create(self, prefix: str = "easel_test") -> str:
        """A new empty database; its SQLAlchemy URL."""
        from psycopg import sql

        name = f"{prefix}_{secrets.token_hex(6)}"
        self._connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._made.add(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        """Drop the database, closing whatever connections are still open on it."""
        from psycopg import sql

        name = make_url(url).database or ""
        self._connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        self._made.discard(name)

    def close(self) -> None:
        for name in sorted(self._made):
            self.drop(self.url.set(database=name).render_as_string(hide_password=False))
        self._connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL database's URL (SQLAlchemy's form), checked to answer once."""
    import psycopg

    url = service_url(DATABASE_ENV, "PostgreSQL")
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=CONNECT_TIMEOUT):
            pass
    except psycopg.Error as error:
        shown = make_url(url).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL at {shown} ({DATABASE_ENV}) does not answer: {error}", pytrace=False
        )
    return url


@pytest.fixture(scope="session")
def postgres_databases(postgres_url: str) -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(postgres_url)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def postgres_store_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A fresh empty database for this test alone (about 0.1 to 0.3 s to make: tests that
    can share one truncate tables instead)."""
    url = postgres_databases.create()
    try:
        yield url
    finally:
        postgres_databases.drop(url)
