"""The operator's log: text or JSON lines from one root handler, a lifecycle line per job step,
the libraries kept quiet, and no token or database password in any line, whoever logs it."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main
from bot.logs import (
    LIBRARY_LOGGERS,
    SecretMask,
    configured_secrets,
    easel_handler,
    library_levels,
    restore_levels,
    secret_list,
    secrets_of,
)
from bot.settings import EarlySettings, Settings
from pipeline.engine import Engine
from tests.running_bot import bot_env
from tests.test_console import chat, console_settings

pytestmark = pytest.mark.heavy  # started first: see conftest.py

DISCORD = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GmAdeU.p-not-a-real-secret-at-all-0123456789abcd"
TELEGRAM = "123456789:AAFakeTelegramTokenForEaselTests000"
WEBHOOK = "hook-Secret_0123456789"
PASSWORD = "SECRETPASS"
POSTGRES = f"postgresql+psycopg://easel:{PASSWORD}@db.example.org:5432/easel"
# What must not appear anywhere: each secret, and the secret part of each token alone.
NEVER = (
    DISCORD,
    DISCORD.split(".", 1)[1],
    TELEGRAM,
    TELEGRAM.split(":", 1)[1],
    WEBHOOK,
    PASSWORD,
)
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
Captured = tuple[logging.Logger, list[logging.Handler]]


@pytest.fixture
def captured() -> Iterator[Captured]:
    """The root logger at DEBUG for the test, its handlers and the libraries' levels put back
    after."""
    root = logging.getLogger()
    level = root.level
    added: list[logging.Handler] = []
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    try:
        yield root, added
    finally:
        for handler in added:
            root.removeHandler(handler)
        root.setLevel(level)
        restore_levels(levels)


def log_secrets_every_way() -> None:
    """Records that carry the secrets in their message, arguments, extra fields and
    tracebacks, from Easel's loggers and the libraries'."""
    logging.getLogger("bot.store.database").info("Opening the database at %s", POSTGRES)
    logging.getLogger("httpx").debug(
        "HTTP Request: POST https://api.telegram.org/bot%s/getUpdates", TELEGRAM
    )
    logging.getLogger("discord.http").debug(f"Authorization: Bot {DISCORD}")
    logging.getLogger("telegram.ext.Updater").debug(
        "Setting webhook with secret %s",
        WEBHOOK,
        extra={"url": POSTGRES, "request": {"token": TELEGRAM, "retries": 2}},
    )
    try:
        raise ConnectionError(f"cannot reach https://api.telegram.org/bot{TELEGRAM}/getMe")
    except ConnectionError:
        logging.getLogger("easel.errors").exception("Telegram failed (token %s)", TELEGRAM)
    logging.getLogger("sqlalchemy.engine").warning("Engine for %r", POSTGRES)


def run_logged_chat(
    tmp_path: Path, models_dir: Path, engine: Engine, log_format: str, captured: Captured
) -> list[str]:
    """A console chat with tokens configured, one tiny job, and every log line at DEBUG."""
    root, added = captured
    settings = console_settings(
        tmp_path,
        models_dir,
        discord_token=DISCORD,
        telegram_token=TELEGRAM,
        telegram_webhook_secret=WEBHOOK,
        log_format=log_format,
    )
    assert settings.log_format == log_format
    stream = io.StringIO()
    secrets = [*secrets_of(settings), *secret_list("", "", "", POSTGRES)]
    handler = easel_handler(settings.log_format, secrets, stream)
    root.addHandler(handler)
    added.append(handler)
    root.setLevel(logging.DEBUG)
    library_levels(logging.DEBUG)
    log_secrets_every_way()
    output = chat(settings, engine, ["/imagine a red fox --steps 2 --n 1", "/wait"])
    assert "Job #1 is done in" in output
    return stream.getvalue().splitlines()


def assert_no_secret(lines: list[str]) -> None:
    assert lines
    for line in lines:
        for secret in NEVER:
            assert secret not in line, line


def test_text_lines_carry_the_job_lifecycle_and_no_secret(
    tmp_path: Path, models_dir: Path, engine: Engine, captured: Captured
) -> None:
    lines = run_logged_chat(tmp_path, models_dir, engine, "text", captured)
    assert_no_secret(lines)
    text = "\n".join(lines)
    # The masked forms are there: the records were written, not dropped.
    assert "postgresql+psycopg://easel:***@db.example.org:5432/easel" in text
    assert "/bot<TELEGRAM_TOKEN>/getUpdates" in text
    assert "Authorization: Bot <DISCORD_TOKEN>" in text
    assert "Setting webhook with secret <EASEL_TELEGRAM_WEBHOOK_SECRET>" in text
    assert (
        "ConnectionError: cannot reach https://api.telegram.org/bot<TELEGRAM_TOKEN>/getMe" in text
    )
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    job = rf"^{stamp} INFO easel\.jobs: Job 1"
    who = "user=console:local kind=imagine"
    assert re.search(rf"{job} queued: {who} position=1$", text, re.M), text
    assert re.search(rf"{job} started: {who} wait=\d+\.\d\ds$", text, re.M), text
    finished = rf"{job} finished: {who} images=1 wait=\d+\.\d\ds run=\d+\.\d\ds gpu=\d+\.\d\ds$"
    assert re.search(finished, text, re.M), text
    # In order: queued, then started, then finished.
    stages = [m.group(1) for m in re.finditer(r"easel\.jobs: Job 1 (\w+):", text)]
    assert stages == ["queued", "started", "finished"]


def test_json_lines_parse_carry_the_job_fields_and_no_secret(
    tmp_path: Path, models_dir: Path, engine: Engine, captured: Captured
) -> None:
    lines = run_logged_chat(tmp_path, models_dir, engine, "json", captured)
    assert_no_secret(lines)
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert ISO_UTC.match(entry["time"]), entry
    failed = next(entry for entry in entries if entry["logger"] == "easel.errors")
    assert failed["level"] == "ERROR"
    assert failed["message"] == "Telegram failed (token <TELEGRAM_TOKEN>)"
    assert "ConnectionError: cannot reach" in failed["traceback"]
    assert "bot<TELEGRAM_TOKEN>/getMe" in failed["traceback"]
    webhook = next(entry for entry in entries if entry["logger"] == "telegram.ext.Updater")
    assert webhook["url"] == "postgresql+psycopg://easel:***@db.example.org:5432/easel"
    assert webhook["request"] == {"token": "<TELEGRAM_TOKEN>", "retries": 2}

    steps = {entry["event"]: entry for entry in entries if entry.get("logger") == "easel.jobs"}
    assert list(steps) == ["queued", "started", "finished"]
    for entry in steps.values():
        assert entry["level"] == "INFO"
        assert (entry["job"], entry["user"], entry["kind"]) == (1, "console:local", "imagine")
    assert steps["queued"]["position"] == 1 and "wait_s" not in steps["queued"]
    assert steps["started"]["wait_s"] >= 0 and "run_s" not in steps["started"]
    finished = steps["finished"]
    assert finished["message"].startswith("Job 1 finished: user=console:local kind=imagine")
    assert finished["images"] == 1
    assert finished["wait_s"] == steps["started"]["wait_s"]
    assert finished["run_s"] > 0 and finished["gpu_s"] > 0


def test_a_cancelled_queued_job_logs_how_long_it_waited(
    tmp_path: Path, models_dir: Path, engine: Engine, captured: Captured
) -> None:
    root, added = captured
    settings = console_settings(tmp_path, models_dir)
    stream = io.StringIO()
    handler = easel_handler("json", secrets_of(settings), stream)
    root.addHandler(handler)
    added.append(handler)
    root.setLevel(logging.INFO)
    lines = ["/admin pause", "/imagine a red fox --steps 2 --n 1", "/cancel 1", "/admin resume"]
    chat(settings, engine, lines)
    steps = [json.loads(line) for line in stream.getvalue().splitlines()]
    steps = [entry for entry in steps if entry["logger"] == "easel.jobs"]
    assert [entry["event"] for entry in steps] == ["queued", "cancelled"], steps
    cancelled = steps[1]
    assert cancelled["job"] == 1 and cancelled["wait_s"] >= 0 and "run_s" not in cancelled


def test_the_mask_covers_shapes_it_was_not_told_of() -> None:
    mask = SecretMask()
    assert (
        mask.mask("GET https://api.telegram.org/bot987654:ABCDEFGHIJKLMNOPQRSTUVWXYZ_-12/getMe")
        == "GET https://api.telegram.org/bot987654:<token>/getMe"
    )
    assert mask.mask("redis://:hunter22@cache:6379/0 and mysql://me:pw%40x@db/a") == (
        "redis://:***@cache:6379/0 and mysql://me:***@db/a"
    )
    # Ordinary text keeps its words; a too short secret is not masked.
    mask = SecretMask(secret_list("", "", "ab", "sqlite:///easel.db"))
    assert mask.mask("robot1:abc about a bot and 3 abbeys") == "robot1:abc about a bot and 3 abbeys"


def test_a_percent_encoded_database_password_is_masked_both_ways() -> None:
    mask = SecretMask(secret_list("", "", "", "postgresql://me:p%40ss%2Fword@db/easel"))
    assert mask.mask("password p@ss/word, or p%40ss%2Fword") == "password ***, or ***"


def test_secrets_are_read_even_when_the_settings_refuse_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_TOKEN", "not-a-token-shape-but-secret")
    monkeypatch.setenv("DATABASE_URL", POSTGRES)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    (tmp_path / ".env").write_text(f"EASEL_TELEGRAM_WEBHOOK_SECRET={WEBHOOK}\n")
    values = {secret.value for secret in configured_secrets()}
    assert {"not-a-token-shape-but-secret", WEBHOOK, PASSWORD} <= values


def test_libraries_log_warnings_only_unless_debug(captured: Captured) -> None:
    library_levels(logging.INFO)
    for name in ("httpx", "discord", "telegram", "diffusers", "PIL", "asyncio", "alembic"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
    assert logging.getLogger("discord.gateway").isEnabledFor(logging.INFO) is False
    library_levels(logging.ERROR)
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.ERROR
    root, _ = captured
    root.setLevel(logging.DEBUG)
    library_levels(logging.DEBUG)
    assert logging.getLogger("discord.gateway").isEnabledFor(logging.DEBUG)


@pytest.mark.parametrize("value", ["xml", "JSONL"])
def test_a_bad_log_format_is_one_line(
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EASEL_LOG_FORMAT", value)
    monkeypatch.setattr(sys, "argv", ["easel", "db", "current"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"error: EASEL_LOG_FORMAT: text or json, not {value.lower()!r}"]


def test_log_format_reads_any_case() -> None:
    assert EarlySettings(_env_file=None, log_format=" JSON ").log_format == "json"  # type: ignore[call-arg]
    assert Settings(_env_file=None, log_format="").log_format == "text"  # type: ignore[call-arg]


def test_easel_chat_writes_json_lines_without_secrets(tmp_path: Path, models_dir: Path) -> None:
    """The real `easel chat` process: main() sets the logging up from the environment."""
    env = bot_env(
        tmp_path,
        models_dir,
        EASEL_LOG_LEVEL="DEBUG",
        EASEL_LOG_FORMAT="json",
        EASEL_TELEGRAM_WEBHOOK_SECRET=WEBHOOK,
        DISCORD_TOKEN=DISCORD,
        TELEGRAM_TOKEN=TELEGRAM,
        DATABASE_URL_SHOWN=POSTGRES,
    )
    # Lines that put the secrets through a library's logger and a traceback, written once
    # main() has set the logging up (as a request line or a failed connection would be).
    script = (
        "import gc, logging, os, bot.cli, bot.logs\n"
        "def configure(early):\n"
        "    handler = bot.logs.configure_logging(early)\n"
        "    token = os.environ['TELEGRAM_TOKEN']\n"
        "    logging.getLogger('httpx').warning('POST https://api.telegram.org/bot%s/x', token)\n"
        "    try:\n"
        "        raise OSError('refused: ' + os.environ['DATABASE_URL_SHOWN'])\n"
        "    except OSError:\n"
        "        discord = os.environ['DISCORD_TOKEN']\n"
        "        logging.getLogger('discord.http').exception('Bot %s', discord)\n"
        "    return handler\n"
        "bot.cli.configure_logging = configure\n"
        "try:\n"
        "    bot.cli.main()\n"
        "finally:\n"
        "    gc.freeze()  # as tests.running_bot.EASEL_MAIN: no last collection at exit\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "chat", "--lang", "en"],
        input="/imagine a red fox --steps 2 --n 1\n",
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Job #1 is done in" in done.stdout
    lines = done.stderr.splitlines()
    assert_no_secret(lines)
    # Log records are JSON, one a line, and no loading bar comes between them; the only other
    # lines are the command's own start-up lines for the person at the terminal.
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    others = [line for line in lines if not line.startswith("{") and line.strip()]
    assert all(line.startswith(("Running on the CPU", "Model: ")) for line in others), others
    assert any(e["level"] == "DEBUG" and e["logger"].startswith("diffusers") for e in entries)
    masked = [entry for entry in entries if entry["logger"] in ("httpx", "discord.http")]
    assert [entry["message"] for entry in masked] == [
        "POST https://api.telegram.org/bot<TELEGRAM_TOKEN>/x",
        "Bot <DISCORD_TOKEN>",
    ]
    assert masked[1]["traceback"].endswith(
        "OSError: refused: postgresql+psycopg://easel:***@db.example.org:5432/easel"
    )
    steps = [entry for entry in entries if entry["logger"] == "easel.jobs"]
    assert [entry["event"] for entry in steps] == ["queued", "started", "finished"], lines
    assert steps[-1]["run_s"] > 0 and steps[-1]["user"] == "console:local"


def test_a_secret_made_while_running_is_masked_from_then_on(captured: Captured) -> None:
    from bot.logs import keep_secret

    root, added = captured
    stream = io.StringIO()
    handler = easel_handler("text", (), stream)
    root.addHandler(handler)
    added.append(handler)
    root.setLevel(logging.INFO)
    generated = "Gen3rated-webhook_secret-0123456789"
    keep_secret(generated, "<EASEL_TELEGRAM_WEBHOOK_SECRET>")
    logging.getLogger("telegram.ext.Updater").warning("Webhook secret: %s", generated)
    assert stream.getvalue().endswith("Webhook secret: <EASEL_TELEGRAM_WEBHOOK_SECRET>\n")


def test_a_failed_job_logs_its_end_and_its_trace_without_the_token(
    tmp_path: Path,
    models_dir: Path,
    engine: Engine,
    captured: Captured,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, added = captured
    settings = console_settings(tmp_path, models_dir, telegram_token=TELEGRAM)
    stream = io.StringIO()
    handler = easel_handler("json", secrets_of(settings), stream)
    root.addHandler(handler)
    added.append(handler)
    root.setLevel(logging.INFO)

    def broken(*_: object, **__: object) -> object:
        raise RuntimeError(f"cannot post to https://api.telegram.org/bot{TELEGRAM}/sendPhoto")

    monkeypatch.setattr(engine, "run_batch", broken)
    output = chat(settings, engine, ["/imagine a doomed fox --steps 2 --n 1", "/wait"])
    assert "Job #1 failed with an internal error" in output
    lines = stream.getvalue().splitlines()
    assert_no_secret(lines)
    entries = [json.loads(line) for line in lines]
    trace = next(entry for entry in entries if entry["logger"] == "easel.errors")
    assert (
        "RuntimeError: cannot post to https://api.telegram.org/bot<TELEGRAM_TOKEN>/sendPhoto"
        in (trace["message"])
    )
    steps = [entry for entry in entries if entry["logger"] == "easel.jobs"]
    assert [entry["event"] for entry in steps] == ["queued", "started", "failed"]
    assert steps[-1]["reason"] == "error" and steps[-1]["run_s"] >= 0
    assert steps[-1]["message"].startswith("Job 1 failed: user=console:local kind=imagine wait=")
