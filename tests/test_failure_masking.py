"""A failed job's row (its traceback and its error) never holds a secret: the store masks them
the way the log lines are masked, before they are written."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from bot.core.errors import trace_of
from bot.core.events import message_to_json
from bot.core.frontend import BotContext
from bot.core.messages import Key, Message
from bot.core.router import TextRequest
from bot.runtime import Bot
from bot.store import JobKind, NewJob
from bot.store.masking import own_password_mask
from pipeline.engine import Engine
from tests.test_core_seam import make_bot
from tests.test_service import ALICE, ORIGIN, finish, run

__all__ = ["make_bot"]
TOKEN = "123456789:AAHk3xQz9vLr7TtWmPq2sDf5gHj8kLz0XcV"
SECRET_HALF = TOKEN.partition(":")[2]
PG_PASSWORD = "Pg-s3cret-9Zq"
PG_URL = f"postgresql+psycopg://easel:{PG_PASSWORD}@db.internal:5432/easel"


def leaky_error() -> RuntimeError:
    return RuntimeError(
        f"getMe failed: https://api.telegram.org/bot{TOKEN}/getMe; the token {TOKEN} "
        f"(its secret part {SECRET_HALF}) and the database {PG_URL} were in the message"
    )


def assert_no_secrets(text: str) -> None:
    for secret in (TOKEN, SECRET_HALF, PG_PASSWORD):
        assert secret not in text


def test_a_failed_job_keeps_no_token_or_database_password_in_its_row(
    make_bot: Callable[..., Bot], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = make_bot(telegram_token=TOKEN)

    def broken(*_: Any, **__: Any) -> Any:
        raise leaky_error()

    monkeypatch.setattr(engine, "run_batch", broken)

    async def scenario() -> None:
        await bot.service.start()
        router = BotContext(bot.service).router(ORIGIN.platform)
        await router.route(TextRequest(ALICE, ORIGIN, "/imagine a leaky fox --n 1 --steps 2"))
        await finish(bot)
        await bot.service.stop()

    run(scenario())
    row = bot.store.job(1)
    assert row is not None and row.failure_trace is not None
    assert "Traceback" in row.failure_trace and "getMe failed" in row.failure_trace
    assert_no_secrets(row.failure_trace)
    assert_no_secrets(row.error or "")
    assert "api.telegram.org/bot<TELEGRAM_TOKEN>/getMe" in row.failure_trace
    assert "the token <TELEGRAM_TOKEN>" in row.failure_trace
    assert "postgresql+psycopg://easel:***@db.internal:5432/easel" in row.failure_trace


def test_the_error_document_is_masked_and_stays_json(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot(telegram_token=TOKEN)
    user = bot.store.user("test", "alice", "Alice")
    job = bot.store.add_job(NewJob(user.id, JobKind.IMAGINE, "{}", None, 1, "test", "chat-1"))
    detail = Message(Key.FAILED_INVALID, {"detail": f'"quoted" {PG_URL} and {TOKEN}'})
    bot.store.mark_failed(job.id, message_to_json(detail), trace_of(leaky_error()))
    row = bot.store.job(job.id)
    assert row is not None and row.error is not None and row.failure_trace is not None
    stored = json.loads(row.error)
    assert stored["args"]["detail"] == (
        '"quoted" postgresql+psycopg://easel:***@db.internal:5432/easel and <TELEGRAM_TOKEN>'
    )
    assert_no_secrets(row.failure_trace)


def test_a_store_given_no_mask_still_hides_its_own_password() -> None:
    mask = own_password_mask(make_url(PG_URL.replace(PG_PASSWORD, "p%40ss-w0rd")))
    assert mask("password p@ss-w0rd in postgresql://easel:p%40ss-w0rd@db/x") == (
        "password *** in postgresql://easel:***@db/x"
    )
    assert own_password_mask(make_url("sqlite:///easel.db"))("easel.db failed") == (
        "easel.db failed"
    )
