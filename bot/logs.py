"""The process's logging, set up in one place by `easel` (`bot.cli.main`).

One handler on the root logger writes every record to stderr: as a line for people
(`EASEL_LOG_FORMAT=text`) or as one JSON object a line for log shippers (`json`). A filter on
that handler masks the configured secrets (the bot tokens, the webhook secret, the database
password) and anything shaped like a Telegram Bot API URL or a URL's password, whichever
logger wrote them: in the message, its arguments, extra fields and tracebacks. The libraries'
loggers stay at WARNING unless `EASEL_LOG_LEVEL=DEBUG` asks for everything.

Front ends keep their own platform filters (bot/telegram/logs.py, bot/discord/__init__.py);
the pipeline routes diffusers' and transformers' own handlers here (pipeline/quiet.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO
from urllib.parse import unquote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from bot.settings import EarlySettings, Settings

# Libraries whose INFO and DEBUG lines are noise to an operator (request lines, gateway
# heartbeats, loading chatter); they log warnings and errors only, unless the level is DEBUG.
LIBRARY_LOGGERS = (
    "diffusers",
    "transformers",
    "peft",
    "huggingface_hub",
    "httpx",
    "httpcore",
    "urllib3",
    "PIL",
    "asyncio",
    "discord",
    "telegram",
    "apscheduler",
    "tornado",
    "websockets",
    "aiohttp",
    "filelock",
    "sqlalchemy",
    "alembic",  # bot.store says which migrations ran
    "multipart",
    "matplotlib",
    "torch",
)
# Secrets shorter than this are not masked: they would turn ordinary words into stars (and
# are guessable anyway).
MIN_SECRET_LENGTH = 4
PASSWORD = "***"  # what SQLAlchemy writes for a URL's password
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A Bot API URL carries the token: https://api.telegram.org/bot123456:AA.../getMe
_TELEGRAM_BOT_URL = re.compile(r"\bbot([0-9]{1,20}):[A-Za-z0-9_-]{20,}")
# scheme://user:password@host: the password, whatever URL it is in.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)([^@/\s]+)(@)")
# What every record has; anything else on a record came in through `extra`.
_STANDARD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}
_TRACEBACKS = logging.Formatter()


@dataclass(frozen=True)
class Secret:
    """A value never to be logged, and what is written in its place."""

    value: str
    label: str


class SecretMask(logging.Filter):
    """On a handler: writes each secret as its label in the record's message (arguments
    merged in), its extra fields, its traceback and stack, before any formatter reads them."""

    def __init__(self, secrets: Iterable[Secret] = ()) -> None:
        super().__init__()
        self._secrets: dict[str, str] = {}
        for secret in secrets:
            self.add(secret)

    def add(self, secret: Secret) -> None:
        if len(secret.value) >= MIN_SECRET_LENGTH:
            self._secrets[secret.value] = secret.label

    def mask(self, text: str) -> str:
        for value in sorted(self._secrets, key=len, reverse=True):  # a token before its parts
            if value in text:
                text = text.replace(value, self._secrets[value])
        text = _TELEGRAM_BOT_URL.sub(r"bot\1:<token>", text)
        return _URL_PASSWORD.sub(rf"\g<1>{PASSWORD}\g<3>", text)

    def filter(self, record: logging.LogRecord) -> bool:
        _mask_record(record, self.mask)
        return True


def _mask_record(record: logging.LogRecord, mask: Callable[[str], str]) -> None:
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not fit: the format string alone, masked
        message = f"{record.msg} (arguments did not fit the message)"
    record.msg = mask(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = _TRACEBACKS.formatException(record.exc_info)
    if record.exc_text:  # formatters use this text instead of formatting exc_info again
        record.exc_text = mask(record.exc_text)
    if record.stack_info:
        record.stack_info = mask(record.stack_info)
    for name, value in list(vars(record).items()):
        if name not in _STANDARD_FIELDS:
            setattr(record, name, _masked_field(value, mask))


def _masked_field(value: object, mask: Callable[[str], str]) -> object:
    """An extra field with the secrets masked: numbers as they are, containers through their
    JSON text (the JSON format writes them so), anything else as its masked text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict | list | tuple):
        return json.loads(mask(json.dumps(value, default=str)))
    return mask(str(value))


class UTCFormatter(logging.Formatter):
    """Times as ISO 8601 in UTC with milliseconds: 2026-12-02T05:48:03.123Z."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the record's extra fields (job,
    user, kind, wait_s, run_s, ...), and a traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": iso_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_FIELDS and name not in entry:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def iso_time(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes (as logging's last resort does),
    so that a redirected stderr gets the lines too."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr


def easel_handler(
    log_format: str, secrets: Iterable[Secret] = (), stream: TextIO | None = None
) -> logging.Handler:
    """The handler `easel` puts on the root logger: the format, and the secrets' mask."""
    handler: logging.Handler = StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else UTCFormatter(TEXT_FORMAT))
    handler.addFilter(SecretMask(secrets))
    return handler


def library_levels(level: int) -> dict[str, int]:
    """The libraries' loggers at WARNING (or the level, when higher); at DEBUG they follow the
    root. Their levels before, for `restore_levels`."""
    before = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if level <= logging.DEBUG else max(level, logging.WARNING)
        )
    return before


def restore_levels(levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def configure_logging(
    early: EarlySettings, secrets: Iterable[Secret] | None = None
) -> logging.Handler | None:
    """The process's logging from EASEL_LOG_LEVEL (EASEL_DEBUG: DEBUG) and EASEL_LOG_FORMAT,
    with the configured secrets masked. Like `logging.basicConfig`, it leaves a root logger
    that already has handlers (a test runner's) alone: the handler it installed, or None."""
    level = early.logging_level()
    handler = easel_handler(early.log_format, configured_secrets() if secrets is None else secrets)
    logging.basicConfig(level=level, handlers=[handler])
    if handler not in logging.getLogger().handlers:
        return None
    library_levels(level)
    logging.captureWarnings(True)  # Python warnings become records: formatted and masked too
    return handler


def keep_secret(value: str, label: str = "<secret>") -> None:
    """A secret made while running (a generated webhook secret): masked from now on by the
    handlers `configure_logging` installed."""
    for handler in logging.getLogger().handlers:
        for item in handler.filters:
            if isinstance(item, SecretMask):
                item.add(Secret(value, label))


# ---------------------------------------------------------------------- the secrets


class _SecretValues(BaseSettings):
    """The secret settings as plain text, read the way Settings reads them but never refused:
    logging is set up before the settings are checked, and a malformed token must be masked
    all the same."""

    model_config = SettingsConfigDict(
        env_prefix="EASEL_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    discord_token: str = Field(default="", validation_alias="DISCORD_TOKEN")
    telegram_token: str = Field(default="", validation_alias="TELEGRAM_TOKEN")
    telegram_webhook_secret: str = ""
    database_url: str = Field(default="", validation_alias="DATABASE_URL")
    broker_url: str = ""
    result_url: str = ""


def configured_secrets() -> list[Secret]:
    """The secrets in the environment and `.env`."""
    try:
        values = _SecretValues()
    except Exception:  # a file that cannot be read is the settings' error to report
        return []
    return secret_list(
        values.discord_token,
        values.telegram_token,
        values.telegram_webhook_secret,
        values.database_url,
        values.broker_url,
        values.result_url,
    )


def secrets_of(settings: Settings) -> list[Secret]:
    """The secrets of checked settings."""
    return secret_list(
        _plain(settings.discord_token),
        _plain(settings.telegram_token),
        _plain(settings.telegram_webhook_secret),
        settings.database_url,
        settings.broker_url or "",
        settings.result_url or "",
    )


def secret_list(
    discord_token: str,
    telegram_token: str,
    webhook_secret: str,
    database_url: str,
    *other_urls: str,
) -> list[Secret]:
    """The secrets to mask; `other_urls`: the broker's and the result backend's URLs, whose
    passwords are masked as the database's is."""
    secrets: list[Secret] = []
    for value, label in (
        (discord_token, "<DISCORD_TOKEN>"),
        (telegram_token, "<TELEGRAM_TOKEN>"),
        (webhook_secret, "<EASEL_TELEGRAM_WEBHOOK_SECRET>"),
    ):
        value = value.strip()
        if value:
            secrets.append(Secret(value, label))
            # The part after the bot's id (Telegram) or after the first dot (Discord) is
            # the secret part: masked even where it shows on its own.
            for separator in (":", "."):
                _, found, rest = value.partition(separator)
                if found and rest:
                    secrets.append(Secret(rest, label))
    for url in (database_url, *other_urls):
        password = database_password(url)
        if password:
            secrets.append(Secret(password, PASSWORD))
            secrets.append(Secret(unquote(password), PASSWORD))
    return secrets


def masked_url(url: str) -> str:
    """A service URL fit for a log line: its password replaced by ***."""
    password = database_password(url)
    return url.replace(f":{password}@", ":***@", 1) if password else url


def database_password(url: str) -> str | None:
    """The password of a database URL as it is written (percent-encoded), if it has one."""
    try:
        return urlsplit(url.strip()).password
    except ValueError:
        return None


def _plain(value: object) -> str:
    if value is None:
        return ""
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if getter is not None else value)
