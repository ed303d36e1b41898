"""Settings from the environment and .env, and the choice of device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bot.settings import Settings
from pipeline.device import choose_device
from pipeline.errors import EaselError


def test_settings_come_from_env_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "EASEL_MODELS_DIR=/srv/a1111/models\nEASEL_MAX_STEPS=50\nTELEGRAM_TOKEN=123:AAFakeTelegramTokenForEaselTests000\n"
        "DISCORD_TOKEN=\nEASEL_MODEL=\n"
    )
    monkeypatch.setenv("EASEL_MAX_IMAGES", "2")
    monkeypatch.setenv("EASEL_CACHE_DIR", "~/easel-cache")
    settings = Settings()
    assert settings.models_dir == Path("/srv/a1111/models")
    assert settings.limits().max_steps == 50
    assert settings.limits().max_images == 2
    assert settings.cache_dir == Path.home() / "easel-cache"
    assert settings.model is None
    assert settings.discord_token is None
    assert settings.telegram_token is not None
    token = "123:AAFakeTelegramTokenForEaselTests000"
    assert settings.telegram_token.get_secret_value() == token
    assert token not in repr(settings) and token not in str(settings.model_dump())


def test_env_example_lists_every_setting() -> None:
    example = (Path(__file__).parent.parent / ".env.example").read_text()
    for name, field in Settings.model_fields.items():
        key = field.validation_alias if isinstance(field.validation_alias, str) else None
        assert (key or f"EASEL_{name.upper()}") + "=" in example, name


def test_cpu_is_chosen_without_a_gpu_and_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    choice = choose_device()
    assert choice.device.type == "cpu" and choice.dtype == torch.float32
    assert choice.describe() == "Running on cpu, float32 - no GPU found, so generation is slow."


def test_gpu_defaults_to_fp16_and_dtype_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert choose_device().device.type == "mps"
    assert choose_device().dtype == torch.float16
    assert choose_device("cpu", "bf16").dtype == torch.bfloat16


def test_bad_device_settings_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EaselError, match="PyTorch sees no CUDA GPU"):
        choose_device("cuda")
    with pytest.raises(EaselError, match="Unknown dtype 'half-ish'"):
        choose_device("cpu", "half-ish")
    with pytest.raises(EaselError, match="Unknown device 'gpu0'"):
        choose_device("gpu0")


def test_batch_mode_and_its_older_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EASEL_BATCH_ROWS", raising=False)  # the tests' own setting
    assert (Settings().batch_mode, Settings().batch_rows) == ("fixed", 8)
    monkeypatch.setenv("EASEL_EXACT_BATCHES", "false")
    assert Settings().batch_mode == "whole"
    monkeypatch.setenv("EASEL_BATCH_MODE", " Fixed ")
    assert Settings().batch_mode == "fixed"  # the new name wins
    monkeypatch.setenv("EASEL_BATCH_MODE", "exact")
    with pytest.raises(ValueError, match="fixed or whole, not 'exact'"):
        Settings()
    monkeypatch.setenv("EASEL_BATCH_MODE", "whole")
    monkeypatch.setenv("EASEL_BATCH_ROWS", "0")
    with pytest.raises(ValueError, match="batch_rows"):
        Settings()


def test_the_celery_executor_needs_a_broker_and_the_logs_never_show_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.logs import SecretMask, secrets_of
    from bot.settings import settings_problems

    assert Settings(_env_file=None).executor == "local"
    monkeypatch.setenv("EASEL_EXECUTOR", "Celery")
    with pytest.raises(ValueError) as missing:
        Settings(_env_file=None)
    (problem,) = settings_problems(missing.value)  # type: ignore[arg-type]
    assert "EASEL_BROKER_URL" in problem and "redis://" in problem
    monkeypatch.setenv("EASEL_EXECUTOR", "ray")
    with pytest.raises(ValueError, match="local, celery"):
        Settings(_env_file=None)
    monkeypatch.setenv("EASEL_EXECUTOR", "celery")
    monkeypatch.setenv("EASEL_BROKER_URL", "redis://:b-r0ker-pw@10.0.0.5:6379/0")
    monkeypatch.setenv("EASEL_RESULT_URL", "redis://:r3sult-pw@10.0.0.6:6379/1")
    settings = Settings(_env_file=None)
    mask = SecretMask(secrets_of(settings)).mask
    line = mask(f"broker {settings.broker_url} results {settings.result_url}")
    assert "b-r0ker-pw" not in line and "r3sult-pw" not in line and "10.0.0.5:6379" in line
