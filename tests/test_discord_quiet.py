"""discord.py's warnings about voice libraries Easel does not use are not shown; its other
warnings are."""

from __future__ import annotations

import logging

import pytest
from discord.voice_client import VoiceClient
from typer.testing import CliRunner

from bot.cli import app
from bot.discord.sync import listing_client
from pipeline.validation import Limits


def test_a_client_made_without_voice_libraries_warns_nothing_about_voice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(VoiceClient, "warn_nacl", True)  # as in a fresh process
    monkeypatch.setattr(VoiceClient, "warn_dave", True)
    with caplog.at_level(logging.WARNING):
        listing_client(Limits())
        logging.getLogger("discord.client").warning("Some other discord.py warning")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["Some other discord.py warning"]


def test_discord_commands_prints_no_voice_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(VoiceClient, "warn_nacl", True)
    monkeypatch.setattr(VoiceClient, "warn_dave", True)
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(app, ["discord", "commands"])
    assert result.exit_code == 0, result.exception
    assert '"name": "imagine"' in result.output
    assert not [r for r in caplog.records if "voice" in r.getMessage()], caplog.records
