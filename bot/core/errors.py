"""The one error path of every front end.

A `Refusal` is an answer: the user is told why, in their language, and nothing changed. Any
other exception is a bug or a fault: it is logged once with its traceback, the user and the
job, under a short reference id, and the user sees only that reference, never a path or a
traceback. Front ends call `run_guarded`; the dispatcher stores the same reference with a
job that failed this way.
"""

from __future__ import annotations

import logging
import secrets
import traceback
from collections.abc import Awaitable
from typing import TypeVar

from bot.core.events import Refusal, Reply, UserRef
from bot.core.messages import Key, Message

log = logging.getLogger("easel.errors")
T = TypeVar("T")


def new_reference() -> str:
    """A short id a user can quote and an operator can grep for: `E-4F2A9C1B`."""
    return "E-" + secrets.token_hex(4).upper()


def who(user: UserRef | None) -> str:
    return "-" if user is None else f"{user.platform}:{user.platform_user_id}"


def log_unexpected(
    what: str,
    user: UserRef | None = None,
    job_id: int | None = None,
    *,
    error: BaseException | None = None,
    trace: str | None = None,
) -> str:
    """Log an unexpected error with its traceback (`error`'s, or `trace` when it was taken
    elsewhere, on the GPU thread); the reference to show the user."""
    reference = new_reference()
    detail = trace if trace is not None else trace_of(error) if error is not None else ""
    job = "-" if job_id is None else str(job_id)
    log.error("%s failed [%s] user=%s job=%s\n%s", what, reference, who(user), job, detail.rstrip())
    return reference


def trace_of(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def unexpected_reply(reference: str) -> Reply:
    return Reply(Message(Key.INTERNAL_ERROR, {"reference": reference}))


async def run_guarded(
    call: Awaitable[T], what: str, user: UserRef | None = None, job_id: int | None = None
) -> T | Reply:
    """The call's result; a refusal's reply; or, for anything unexpected, the short
    message with a reference (and the traceback in the log)."""
    try:
        return await call
    except Refusal as refusal:
        return refusal.reply
    except Exception as error:
        return unexpected_reply(log_unexpected(what, user, job_id, error=error))
