"""Settings refused when they load, one line per bad setting naming its variable, never a
secret's value; `.env` for the log level and the hub's offline switch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main
from bot.settings import Settings

DISCORD = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GmAdeU.p-not-a-real-secret-at-all-0123456789abcd"
TELEGRAM = "123456789:AAFakeTelegramTokenForEaselTests000"


@pytest.fixture
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No .env and none of the variables these tests set, from the outside."""
    monkeypatch.chdir(tmp_path)
    for name in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "EASEL_LOG_LEVEL", "EASEL_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def errors_of(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """`easel db current` with the environment as set: its stderr lines, and it failed."""
    monkeypatch.setattr(sys, "argv", ["easel", "db", "current"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "EASEL_MAX_STEPS",
            "abc",
            "error: EASEL_MAX_STEPS: Input should be a valid integer, unable to parse string "
            "as an integer (got 'abc')",
        ),
        ("EASEL_ADMINS", "discord:abc", "error: EASEL_ADMINS: 'discord:abc': a Discord user id"),
        ("EASEL_ADMINS", "telegram:bob", "error: EASEL_ADMINS: 'telegram:bob': a Telegram user"),
        ("EASEL_ADMINS", "slack:1", "error: EASEL_ADMINS: 'slack:1': unknown platform 'slack'"),
        ("EASEL_TELEGRAM_WEBHOOK_URL", "not a url", "error: EASEL_TELEGRAM_WEBHOOK_URL: "),
        ("EASEL_TELEGRAM_WEBHOOK_URL", "ftp://host/x", "error: EASEL_TELEGRAM_WEBHOOK_URL: "),
        ("EASEL_TELEGRAM_WEBHOOK_URL", "https://", "error: EASEL_TELEGRAM_WEBHOOK_URL: "),
        ("EASEL_LOG_LEVEL", "LOUD", "error: EASEL_LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_variable(
    clean: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    line: str,
) -> None:
    monkeypatch.setenv(variable, value)
    lines = errors_of(monkeypatch, capsys)
    assert len(lines) == 1 and lines[0].startswith(line), lines
    assert "errors.pydantic.dev" not in lines[0]


def test_each_bad_setting_has_its_own_line(
    clean: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EASEL_MAX_STEPS", "abc")
    monkeypatch.setenv("EASEL_MAX_IMAGES", "0")
    lines = errors_of(monkeypatch, capsys)
    assert [line.split(":")[1].strip() for line in lines] == [
        "EASEL_MAX_STEPS",
        "EASEL_MAX_IMAGES",
    ], lines


@pytest.mark.parametrize(
    ("variable", "token"),
    [
        ("DISCORD_TOKEN", "not-a-token-secret"),
        ("DISCORD_TOKEN", "MTIz.only-two-secret"),
        ("DISCORD_TOKEN", "MTIz.a b.c-secret"),
        ("TELEGRAM_TOKEN", "123:short-secret"),
        ("TELEGRAM_TOKEN", "bot:AAFakeTelegramTokenForEaselTests000-secret"),
        ("TELEGRAM_TOKEN", DISCORD),
    ],
)
def test_a_malformed_token_is_refused_at_load_without_printing_it(
    clean: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    token: str,
) -> None:
    monkeypatch.setenv(variable, token)
    lines = errors_of(monkeypatch, capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: {variable}: does not look like")
    assert "secret" not in lines[0] and token not in lines[0]


def test_well_formed_tokens_and_settings_load(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        _env_file=None,
        discord_token=DISCORD,
        telegram_token=TELEGRAM,
        admins="discord:1234, telegram:5678, console:local",
        telegram_webhook_url="https://bot.example.com/easel",
        log_level="info",
    )
    assert settings.admin_list()[2] == ("console", "local")
    assert settings.log_level == "INFO"


def test_log_level_in_dotenv_is_used(
    clean: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (clean / ".env").write_text("EASEL_LOG_LEVEL=INFO\n")
    seen: dict[str, object] = {}
    monkeypatch.setattr("logging.basicConfig", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(sys, "argv", ["easel", "db", "current"])
    with pytest.raises(SystemExit):
        main()
        raise SystemExit(0)
    assert seen["level"] == 20  # logging.INFO


def test_hf_hub_offline_in_dotenv_reaches_huggingface_hub(clean: Path) -> None:
    (clean / ".env").write_text("HF_HUB_OFFLINE=1\n")
    root = Path(__file__).parent.parent
    script = (
        "import os, sys; from bot.cli import early_settings, export_hub_offline; "
        "export_hub_offline(early_settings()); "
        "import huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    env["PYTHONPATH"] = str(root)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=clean,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "True", done.stderr


def test_empty_switches_are_off(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    monkeypatch.setenv("EASEL_DEBUG", "")
    settings = Settings(_env_file=None)
    assert not settings.hf_hub_offline and not settings.debug
