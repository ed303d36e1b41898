"""`easel doctor`: a healthy setup exits 0; each broken piece fails with what to do; warnings
alone exit 0; secrets never appear in what it prints."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from alembic import command
from typer.testing import CliRunner

from bot.cli import app
from bot.doctor import Status, config, files
from bot.doctor.system import check_gpu, check_tcmalloc, check_torch, loaded_tcmalloc
from bot.settings import Settings
from bot.store import Store
from bot.store.database import _alembic_config

DISCORD = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"
TELEGRAM = "123456789:AAEabcdefghijklmnopqrstuvwxyz012345"
LEAKED = "sEcReT-tOkEn-VaLuE-42"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment in a folder without a .env: outputs, cache and a migrated SQLite
    database under tmp_path, valid-looking tokens, the CPU, the hub cache never consulted."""
    for name in list(os.environ):
        if name.startswith("EASEL_") or name in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "DATABASE_URL"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "easel.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EASEL_DEVICE", "cpu")
    monkeypatch.setenv("DISCORD_TOKEN", DISCORD)
    monkeypatch.setenv("TELEGRAM_TOKEN", TELEGRAM)
    monkeypatch.setattr(files, "hub_model_cached", lambda repo_id: False)
    with Store(f"sqlite:///{database}") as store:
        store.upgrade()
    return tmp_path


def _models(root: Path, presets: str | None = None) -> Path:
    """A models folder with one stand-in checkpoint (never loaded here) and one LoRA."""
    (root / "stable-diffusion").mkdir(parents=True)
    (root / "stable-diffusion" / "stand-in.safetensors").write_bytes(b"not loaded")
    (root / "lora").mkdir()
    (root / "lora" / "watercolor.safetensors").write_bytes(b"not loaded")
    if presets is not None:
        (root / "presets.toml").write_text(presets, encoding="utf-8")
    return root


def _doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["doctor", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout


def _report() -> tuple[int, dict[str, Any]]:
    code, stdout = _doctor("--json")
    return code, json.loads(stdout)


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [check for check in report["checks"] if check["name"] == name]
    assert len(matches) == 1, [check["name"] for check in report["checks"]]
    return matches[0]


def _failed(report: dict[str, Any]) -> list[str]:
    return [check["name"] for check in report["checks"] if check["status"] == "fail"]


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_healthy_setup_exits_0(
    setup: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("EASEL_MODEL", "tiny-sd1")
    code, stdout = _doctor()
    assert code == 0, stdout
    assert "✗" not in stdout
    assert "\x1b[" not in stdout, "no colour outside a terminal"
    assert all(line == line.rstrip() for line in stdout.splitlines())
    text = _flat(stdout)
    assert "the bot loads tiny-sd1" in text
    assert f"at revision {Store(os.environ['DATABASE_URL']).head()} (up to date)" in text
    assert "DISCORD_TOKEN set and well-formed; TELEGRAM_TOKEN set and well-formed" in text
    assert DISCORD not in stdout and TELEGRAM not in stdout
    assert not (setup / "outputs").exists(), "doctor creates nothing"


def test_the_json_report(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    code, report = _report()
    assert set(report) == {"ok", "counts", "checks"}
    assert report["ok"] is (code == 0)
    assert set(report["counts"]) == {"ok", "warn", "fail"}
    assert sum(report["counts"].values()) == len(report["checks"])
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] in ("ok", "warn", "fail")
        assert check["detail"]
        assert (check["fix"] is None) is (check["status"] == "ok"), check
    names = [check["name"] for check in report["checks"]]
    for expected in ("Python", "torch", "GPU", "TCMalloc", "tokens", "checkpoints", "database"):
        assert expected in names
    assert _check(report, "writable: outputs")["status"] == "ok"


def test_a_models_folder_without_checkpoints_fails_with_what_to_do(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = setup / "models"
    (models / "stable-diffusion").mkdir(parents=True)
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, report = _report()
    assert code == 1
    assert _failed(report) == ["checkpoints"]
    check = _check(report, "checkpoints")
    assert "not downloaded" in check["detail"]
    assert str(models / "stable-diffusion") in check["fix"]
    code, stdout = _doctor()
    assert code == 1
    assert "✗  checkpoints" in stdout
    assert f"→ put a .safetensors checkpoint in {models / 'stable-diffusion'}" in _flat(stdout)


def test_a_missing_models_folder_fails(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(setup / "nowhere"))
    code, report = _report()
    assert code == 1
    check = _check(report, "models folder")
    assert check["status"] == "fail"
    assert "does not exist" in check["detail"]
    assert f"mkdir -p {setup / 'nowhere' / 'stable-diffusion'}" in check["fix"]


def test_a_preset_naming_a_missing_lora_fails_with_where_to_put_it(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    presets = """
[presets.pixel-art]
description_en = "Pixel art"
description_ko = "픽셀 아트"
loras = [{ name = "pixel-art-v1", source = "https://example.com/pixel-art-v1" }]
trigger = "pixel art"

[presets.watercolor]
description_en = "Watercolor"
description_ko = "수채화"
loras = [{ name = "watercolor" }]
"""
    models = _models(setup / "models", presets)
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    code, report = _report()
    assert code == 1
    assert _failed(report) == ["preset pixel-art"]
    check = _check(report, "preset pixel-art")
    assert "pixel-art-v1 (from https://example.com/pixel-art-v1)" in check["detail"]
    assert str(models / "lora" / "pixel-art-v1.safetensors") in check["fix"]
    assert str(models / "presets.toml") in check["fix"]


def test_a_presets_file_that_cannot_be_read_fails(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = _models(setup / "models", "[presets.broken\n")
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    code, report = _report()
    assert code == 1
    check = _check(report, "presets")
    assert check["status"] == "fail"
    assert str(models / "presets.toml") in check["detail"]


def test_an_upscaler_setting_naming_a_missing_file_fails(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    monkeypatch.setenv("EASEL_UPSCALER", "4x-UltraSharp")
    code, report = _report()
    assert code == 1
    check = _check(report, "upscalers")
    assert check["status"] == "fail" and "EASEL_UPSCALER=4x-UltraSharp" in check["detail"]


def test_several_checkpoints_and_no_model_chosen_fails(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = _models(setup / "models")
    (models / "stable-diffusion" / "second.safetensors").write_bytes(b"not loaded")
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    code, report = _report()
    assert code == 1
    check = _check(report, "checkpoints")
    assert check["status"] == "fail"
    assert "EASEL_MODEL=second" in check["fix"]


def test_a_database_one_migration_behind_fails_saying_easel_db_upgrade(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    url = f"sqlite:///{setup / 'old.db'}"
    with Store(url) as store:
        head = store.head()
        with store._migration_connection() as connection:
            command.upgrade(_alembic_config(connection), "head")
            command.downgrade(_alembic_config(connection), "-1")
        behind = store.current()
    assert behind is not None and behind != head
    monkeypatch.setenv("DATABASE_URL", url)
    code, report = _report()
    assert code == 1
    assert _failed(report) == ["database"]
    check = _check(report, "database")
    assert f"at revision {behind}; this Easel needs {head}" in check["detail"]
    assert "`easel db upgrade`" in check["fix"]
    with Store(url) as store:
        assert store.current() == behind, "doctor never migrates"


def test_no_database_yet_is_a_warning(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{setup / 'new.db'}")
    code, report = _report()
    assert code == 0
    check = _check(report, "database")
    assert check["status"] == "warn" and "easel db upgrade" in check["fix"]
    assert not (setup / "new.db").exists()


def test_malformed_tokens_fail_by_name_and_are_never_printed(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    monkeypatch.setenv("DISCORD_TOKEN", LEAKED)
    monkeypatch.setenv("TELEGRAM_TOKEN", f"12345:{LEAKED}")
    monkeypatch.setenv("EASEL_TELEGRAM_WEBHOOK_SECRET", f"{LEAKED} with spaces")
    code, report = _report()
    assert code == 1
    assert set(_failed(report)) == {
        "DISCORD_TOKEN",
        "TELEGRAM_TOKEN",
        "EASEL_TELEGRAM_WEBHOOK_SECRET",
        "tokens",
    }
    assert "Discord bot token" in _check(report, "DISCORD_TOKEN")["detail"]
    assert "copy the token again into DISCORD_TOKEN" in _check(report, "DISCORD_TOKEN")["fix"]
    code, stdout = _doctor()
    assert code == 1
    for output in (stdout, json.dumps(report)):
        assert "sEcReT" not in output
        assert "tOkEn" not in output


def test_the_database_password_is_never_printed(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    # Nothing listens on port 9: refused at once (or the driver is not installed).
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://easel:{LEAKED}@127.0.0.1:9/easel")
    code, stdout = _doctor()
    assert code == 1
    assert LEAKED not in stdout
    assert "postgresql+psycopg://easel:***@127.0.0.1:9/easel" in _flat(stdout)


def test_a_bad_setting_fails_by_name_and_the_other_checks_still_run(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    monkeypatch.setenv("EASEL_MAX_STEPS", "many")
    monkeypatch.setenv("EASEL_MODEL_DIR", "typo")
    code, report = _report()
    assert code == 1
    assert _failed(report) == ["EASEL_MAX_STEPS"]
    assert "'many'" in _check(report, "EASEL_MAX_STEPS")["detail"]
    typo = _check(report, "EASEL_MODEL_DIR")
    assert typo["status"] == "warn" and "EASEL_MODELS_DIR" in typo["fix"]
    assert _check(report, "checkpoints")["status"] == "ok", "good settings are still used"


def test_outputs_that_are_a_file_fail(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    (setup / "outputs").write_text("a file", encoding="utf-8")
    code, report = _report()
    assert code == 1
    check = _check(report, "writable: outputs")
    assert check["status"] == "fail" and "EASEL_OUTPUTS_DIR" in check["fix"]


# The GPU: a CPU-only machine is a warning with what to do, never a refusal.


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.delenv("EASEL_DEVICE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_a_cpu_only_machine_is_a_warning_with_what_to_do(
    setup: Path, no_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    code, report = _report()
    assert code == 0
    check = _check(report, "GPU")
    assert check["status"] == "warn"
    assert "runs on the CPU" in check["detail"]
    assert "no --skip-torch-cuda-test needed" in check["detail"]
    assert check["fix"]


def test_a_cpu_only_torch_build_says_how_to_install_a_cuda_one(
    no_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    check = check_gpu(Settings())
    assert check.status is Status.WARN
    assert "CPU-only build" in check.detail
    assert "download.pytorch.org/whl/cu" in (check.fix or "")


def test_hidden_gpus_are_named(no_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    check = check_gpu(Settings())
    assert check.status is Status.WARN
    assert "CUDA_VISIBLE_DEVICES" in check.detail and "CUDA_VISIBLE_DEVICES" in (check.fix or "")


def test_a_gpu_asked_for_but_absent_fails(no_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_DEVICE", "cuda")
    check = check_gpu(Settings())
    assert check.status is Status.FAIL
    assert "EASEL_DEVICE=auto" in (check.fix or "")


@pytest.mark.parametrize(("free_gib", "status"), [(60, Status.OK), (2, Status.WARN)])
def test_a_cuda_gpu_reports_its_free_memory(
    monkeypatch: pytest.MonkeyPatch, free_gib: int, status: Status
) -> None:
    monkeypatch.delenv("EASEL_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda device=None: (free_gib * 1024**3, 140 * 1024**3)
    )
    check = check_gpu(Settings())
    assert check.status is status
    assert f"cuda (NVIDIA H200), float16: {free_gib:.1f} GiB free of 140.0 GiB" == check.detail
    if status is Status.WARN:
        assert "EASEL_MAX_BATCH_IMAGES" in (check.fix or "")


def test_a_cuda_gpu_torch_cannot_start_fails_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(device: object = None) -> str:
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040).")

    monkeypatch.delenv("EASEL_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", refuse)
    check = check_gpu(Settings())
    assert check.status is Status.FAIL
    assert "driver on your system is too old" in check.detail
    assert "update the NVIDIA driver" in (check.fix or "")


def test_torch_that_cannot_be_imported_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    check = check_torch()
    assert check.status is Status.FAIL
    assert "cannot import torch" in check.detail and "make clean install" in (check.fix or "")
    assert check_gpu(Settings.model_construct()).status is Status.WARN


# TCMalloc: loaded, installed for `make run`, or missing (a warning with the package to install).


def test_tcmalloc_loaded_in_the_process_is_found(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4\n"
        "7f02-7f03 r-xp 00000000 08:01 124 /usr/lib/x86_64-linux-gnu/libc.so.6\n",
        encoding="utf-8",
    )
    assert loaded_tcmalloc(maps) == "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    check = check_tcmalloc(maps)
    assert check.status is Status.OK and "loaded" in check.detail


def test_tcmalloc_missing_is_a_warning_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f02-7f03 r-xp 00000000 08:01 124 /usr/lib/libc.so.6\n", encoding="utf-8")
    monkeypatch.setattr("bot.doctor.system.installed_tcmalloc", lambda: None)
    check = check_tcmalloc(maps)
    assert check.status is Status.WARN
    assert "apt install libtcmalloc-minimal4" in (check.fix or "")
    assert "make run" in (check.fix or "")


# The Telegram webhook: where it listens and whether Telegram can reach it.


def _webhook(monkeypatch: pytest.MonkeyPatch, url: str | None, listen: str) -> Any:
    monkeypatch.setenv("TELEGRAM_TOKEN", TELEGRAM)
    monkeypatch.setenv("EASEL_TELEGRAM_WEBHOOK_LISTEN", listen)
    if url is None:
        monkeypatch.delenv("EASEL_TELEGRAM_WEBHOOK_URL", raising=False)
    else:
        monkeypatch.setenv("EASEL_TELEGRAM_WEBHOOK_URL", url)
    monkeypatch.delenv("EASEL_TELEGRAM_API_URL", raising=False)
    return config.check_telegram_webhook(Settings(), frozenset())


def test_a_webhook_on_localhost_needs_a_reverse_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    check = _webhook(monkeypatch, "https://bot.example.com/telegram", "127.0.0.1")
    assert check.status is Status.WARN
    assert "127.0.0.1:8443" in check.detail
    assert "reverse proxy" in check.fix
    assert "http://127.0.0.1:8443/telegram" in check.fix


def test_a_webhook_on_a_port_telegram_does_not_post_to_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check = _webhook(monkeypatch, "https://bot.example.com:8080/telegram", "0.0.0.0")
    assert check.status is Status.FAIL
    assert "443, 80, 88, 8443" in check.detail


def test_a_webhook_on_every_interface_says_to_open_the_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check = _webhook(monkeypatch, "https://bot.example.com/telegram", "0.0.0.0")
    assert check.status is Status.OK
    assert "port 8443" in check.detail


def test_long_polling_listens_on_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    check = _webhook(monkeypatch, None, "0.0.0.0")
    assert check.status is Status.OK and "long polling" in check.detail


def test_a_malformed_webhook_url_is_not_taken_for_long_polling(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    monkeypatch.setenv("EASEL_TELEGRAM_WEBHOOK_URL", "bot.example.com/telegram")
    code, report = _report()
    assert code == 1
    assert _failed(report) == ["EASEL_TELEGRAM_WEBHOOK_URL"]
    check = _check(report, "Telegram webhook")
    assert check["status"] == "warn" and "EASEL_TELEGRAM_WEBHOOK_URL" in check["detail"]


def test_a_secret_that_turns_up_elsewhere_is_blanked(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(_models(setup / "models")))
    monkeypatch.setenv("EASEL_TELEGRAM_WEBHOOK_URL", f"https://bot.example.com/{TELEGRAM}")
    (setup / ".env").write_text(f"DISCORD_TOKEN='{LEAKED}'\n", encoding="utf-8")
    monkeypatch.delenv("DISCORD_TOKEN")
    code, stdout = _doctor()
    assert code == 1, "the malformed DISCORD_TOKEN fails"
    assert TELEGRAM not in stdout and "AAEabcdefghij" not in stdout
    assert "https://bot.example.com/***" in stdout
    assert LEAKED not in stdout and "DISCORD_TOKEN" in stdout
    code, stdout = _doctor("--json")
    assert code == 1
    assert TELEGRAM not in stdout and LEAKED not in stdout


def test_the_toolbox_line_names_controlnets_face_restorers_and_a_fixed_vae(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = _models(setup / "models")
    (models / "ControlNet" / "control_v11p_sd15_canny").mkdir(parents=True)
    (models / "ControlNet" / "control_v11p_sd15_canny" / "config.json").write_text("{}")
    (models / "GFPGAN").mkdir()
    (models / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"weights")
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    _, report = _report()
    check = _check(report, "toolbox")
    assert check["status"] == "ok"
    assert "ControlNet: control_v11p_sd15_canny" in check["detail"]
    assert "face restorers: GFPGANv1.4" in check["detail"]
    assert "no fp16-fixed SDXL VAE" in check["detail"]
