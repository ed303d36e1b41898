"""`easel run` asks Discord and Telegram about their tokens before the model loads: a refused
token is one line, and nothing slow happened."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.cli import running as cli
from tests.fakes.telegram import FakeTelegram
from tests.fakes.threaded import FakeThread

WRONG_DISCORD = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GmAdeU.p-wrong-token-the-fake-refuses"
WRONG_TELEGRAM = "987654321:AAWrongTokenThatTelegramRefuses0000000"


def easel_run(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> tuple[object, list[str]]:
    """`easel run` with `env`; what it raised, and whether it went on to open the bot."""
    opened: list[str] = []
    monkeypatch.setattr(cli, "_open_bot", lambda *args, **kwargs: opened.append("model") or 1 / 0)
    for name in ("DISCORD_TOKEN", "TELEGRAM_TOKEN"):
        env.setdefault(name, "")
    result = CliRunner().invoke(app, ["run"], env=env)
    return result.exception, opened


def test_a_refused_discord_token_stops_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeThread() as fakes:
        env = {
            "DISCORD_TOKEN": WRONG_DISCORD,
            "EASEL_DISCORD_API_URL": fakes.fake.api_base,
            "EASEL_DISCORD_GATEWAY_URL": fakes.fake.gateway_url,
        }
        error, opened = easel_run(monkeypatch, env)
        assert fakes.fake.calls_to("GET /users/@me")
        assert not fakes.fake.calls_to("GET /gateway/bot")
    assert opened == []
    assert str(error).startswith("Discord refused DISCORD_TOKEN"), error
    assert "wrong-token" not in str(error)


def test_a_good_discord_token_goes_on_to_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeThread() as fakes:
        env = {
            "DISCORD_TOKEN": fakes.fake.settings.token,
            "EASEL_DISCORD_API_URL": fakes.fake.api_base,
            "EASEL_DISCORD_GATEWAY_URL": fakes.fake.gateway_url,
        }
        error, opened = easel_run(monkeypatch, env)
    assert opened == ["model"] and isinstance(error, ZeroDivisionError)


def test_a_refused_telegram_token_stops_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeThread(fake=FakeTelegram()) as fakes:
        env = {"TELEGRAM_TOKEN": WRONG_TELEGRAM, "EASEL_TELEGRAM_API_URL": fakes.fake.url}
        error, opened = easel_run(monkeypatch, env)
        assert fakes.fake.calls_to("getMe")
    assert opened == []
    assert str(error).startswith("Telegram refused TELEGRAM_TOKEN"), error
    assert "AAWrong" not in str(error)


def test_a_good_telegram_token_goes_on_to_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeThread(fake=FakeTelegram()) as fakes:
        env = {"TELEGRAM_TOKEN": fakes.fake.token, "EASEL_TELEGRAM_API_URL": fakes.fake.url}
        error, opened = easel_run(monkeypatch, env)
    assert opened == ["model"] and isinstance(error, ZeroDivisionError)
