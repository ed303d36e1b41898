"""The bot token never reaches the logs. It is part of every Bot API URL
(`https://api.telegram.org/bot<token>/getUpdates`), and httpx logs each request's URL at INFO;
the libraries' loggers get a filter that writes the token as `<token>`, and httpx's request
lines are kept to warnings."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

# The loggers that can print a request URL: httpx's request lines, httpcore's traces, PTB's.
LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "telegram",
    "telegram.ext",
    "telegram.ext.Application",
    "telegram.ext.Updater",
    "telegram.ext.ExtBot",
    "telegram.Bot",
    "telegram._bot",
    "telegram.request",
    "telegram.ext.AIORateLimiter",
    "tornado.access",
    "tornado.application",
    "tornado.general",
)
REDACTED = "<token>"


class TokenFilter(logging.Filter):
    """Writes the token as `<token>` in a record's message and arguments."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg = message.replace(self.token, REDACTED)
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if self.token in text:
                record.exc_text = None
                record.msg = record.getMessage() + " (" + text.replace(self.token, REDACTED) + ")"
                record.exc_info = None
        return True


@contextlib.contextmanager
def token_kept_out(token: str) -> Iterator[None]:
    """While the bot runs: the filter on the libraries' loggers, and httpx's per-request
    INFO lines off (they would be one a second with long polling) unless the log level is
    DEBUG, which asks for everything."""
    token_filter = TokenFilter(token)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    httpx = logging.getLogger("httpx")
    level = httpx.level
    everything = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    if httpx.getEffectiveLevel() < logging.WARNING and not everything:
        httpx.setLevel(logging.WARNING)
    for logger in loggers:
        logger.addFilter(token_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(token_filter)
        httpx.setLevel(level)
