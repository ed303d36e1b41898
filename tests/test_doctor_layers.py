"""`easel doctor` depends on the store, never on the command line's modules, and what it
prints goes through the same secret masking as the logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bot.doctor
from bot.doctor import Check, redact
from bot.settings import Settings
from bot.store import missing_sqlite_file
from tests.test_cli_doctor import TELEGRAM, _doctor, _models, setup

__all__ = ["setup"]  # the fixture, shared with the doctor tests
SECRET_HALF = TELEGRAM.partition(":")[2]
HOOK_PASSWORD = "Hook-pa55-word"

ROOT = Path(__file__).resolve().parent.parent


def test_a_missing_sqlite_file_is_named_and_other_databases_are_not(tmp_path: Path) -> None:
    there = tmp_path / "easel.db"
    there.write_bytes(b"")
    assert missing_sqlite_file(f"sqlite:///{tmp_path}/new.db") == tmp_path / "new.db"
    assert missing_sqlite_file(f"sqlite:///{there}") is None
    assert missing_sqlite_file("sqlite://") is None
    assert missing_sqlite_file("sqlite:///:memory:") is None
    assert missing_sqlite_file("postgresql+psycopg://easel:pw@db/easel") is None


def test_the_database_check_loads_no_command_line_module(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from bot.doctor.storage import check_database\n"
        "from bot.settings import Settings\n"
        f"check = check_database(Settings(_env_file=None, database_url='sqlite:///{tmp_path}/"
        "new.db'))\n"
        "print(json.dumps([check.detail, sorted(m for m in sys.modules if m.startswith("
        "'bot.cli'))]))"
    )
    finished = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    detail, cli_modules = json.loads(finished.stdout.splitlines()[-1])
    assert detail == f"no database yet: {tmp_path}/new.db does not exist"
    assert cli_modules == []


def test_doctor_masks_token_halves_bot_urls_and_url_passwords_in_a_setting(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    url = f"https://hook:{HOOK_PASSWORD}@bot.example.com/telegram/{SECRET_HALF}"
    monkeypatch.setenv("EASEL_TELEGRAM_WEBHOOK_URL", url)
    for args in ((), ("--json",)):
        _, stdout = _doctor(*args)
        assert "bot.example.com" in stdout  # the check printed the URL ...
        assert SECRET_HALF not in stdout and HOOK_PASSWORD not in stdout  # ... masked
    _, stdout = _doctor()
    assert "https://hook:***@bot.example.com/telegram/***" in stdout


def test_doctor_still_masks_when_reading_the_secrets_fails(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    monkeypatch.setenv(
        "EASEL_TELEGRAM_WEBHOOK_URL", f"https://bot.example.com/api.telegram.org/bot{TELEGRAM}"
    )

    def unreadable(*_: object) -> frozenset[str]:
        raise OSError("the .env could not be read")

    monkeypatch.setattr(bot.doctor, "secret_values", unreadable)
    _, stdout = _doctor()
    assert "bot.example.com" in stdout
    assert TELEGRAM not in stdout and SECRET_HALF not in stdout


def test_redact_masks_what_no_secret_value_names() -> None:
    other_token = "987654321:AAFzyxwvutsrqponmlkjihgfedcba98765"
    check = Check.warn(
        "Telegram webhook",
        f"listens for https://api.telegram.org/bot{other_token}/setWebhook and "
        "postgresql+psycopg://easel:Db-pa55@db/easel",
        fix=f"the configured token {TELEGRAM} is not to be shown",
    )
    (masked,) = redact([check], [TELEGRAM])
    assert other_token not in masked.detail and "Db-pa55" not in masked.detail
    assert "bot987654321:<token>/setWebhook" in masked.detail
    assert "postgresql+psycopg://easel:***@db/easel" in masked.detail
    assert masked.fix == "the configured token *** is not to be shown"


def test_doctor_shows_the_gpu_workers_the_broker_knows(fresh_redis: str) -> None:
    import redis

    from bot.doctor.checks import Status
    from bot.doctor.workers import check_workers
    from pipeline.executors.remote.channels import WORKERS_SET, WorkerInfo, worker_key

    def checks(broker: str) -> list[Any]:
        settings = Settings(_env_file=None, executor="celery", broker_url=broker)
        return check_workers(settings)

    assert check_workers(Settings(_env_file=None)) == []  # the local executor: no such check
    (none,) = checks(fresh_redis)
    assert none.status is Status.WARN and "easel worker" in none.fix
    client = redis.Redis.from_url(fresh_redis)
    info = WorkerInfo("gpu-a", "easel.worker.gpu-a", "cuda:0", 2, busy=1, loaded=("sd15",))
    client.set(worker_key("gpu-a"), info.to_json())
    client.sadd(WORKERS_SET, "gpu-a", "gone-b")  # gone-b's announcement expired
    client.close()
    (found,) = checks(fresh_redis)
    assert found.status is Status.OK
    assert "1 through" in found.detail and "gpu-a (cuda:0, 1/2 busy, sd15)" in found.detail
    (unreachable,) = checks("redis://:s3cret-pw@127.0.0.1:1/0")
    assert unreachable.status is Status.FAIL and "EASEL_BROKER_URL" in unreachable.fix
    assert "s3cret-pw" not in unreachable.detail and "***" in unreachable.detail
