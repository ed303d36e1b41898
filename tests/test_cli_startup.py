"""What a user sees before any model loads: imports without torch, the help text, the
vocabulary table, `easel db current` in an empty folder, and quiet library loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main

pytestmark = pytest.mark.heavy  # started first: see conftest.py

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "peft")


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "modules",
    [
        "bot.core.service, bot.cli",
        "bot.core.dispatcher, bot.core.options, bot.core.work",
        "bot.serve, bot.console.chat, bot.runtime",
    ],
)
def test_the_chat_core_and_the_command_line_import_no_torch(modules: str, tmp_path: Path) -> None:
    code = f"import {modules}; import json, sys; print(json.dumps(sorted(sys.modules)))"
    finished = _python(code, tmp_path)
    assert finished.returncode == 0, finished.stderr
    loaded = set(json.loads(finished.stdout))
    assert not {name for name in HEAVY if name in loaded}


# What `easel --help` must not load: the store (SQLAlchemy, Alembic) nor the GPU side.
NOT_FOR_HELP = ("sqlalchemy", "alembic", "torch", "diffusers")


@pytest.mark.parametrize("argv", [None, ["easel", "--help"], ["easel", "models", "--help"]])
def test_the_command_line_and_its_help_load_neither_the_store_nor_torch(
    argv: list[str] | None, tmp_path: Path
) -> None:
    run_help = (
        f"sys.argv = {argv!r}\ntry:\n    bot.cli.main()\nexcept SystemExit:\n    pass\n"
        if argv
        else ""
    )
    code = (
        "import json, sys\nimport bot.cli\n"
        + run_help
        + f"print('LOADED', json.dumps([m for m in {NOT_FOR_HELP!r} if m in sys.modules]))"
    )
    finished = _python(code, tmp_path, COLUMNS="100")
    assert finished.returncode == 0, finished.stderr
    loaded = [line for line in finished.stdout.splitlines() if line.startswith("LOADED ")]
    assert loaded == ["LOADED []"]


def test_help_loads_no_torch_and_shows_plain_flags(tmp_path: Path) -> None:
    code = (
        "import sys; sys.argv = ['easel', 'imagine', '--help']\n"
        "from bot.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', [m for m in ('torch', 'diffusers', 'transformers', 'peft') "
        "if m in sys.modules])"
    )
    finished = _python(code, tmp_path, COLUMNS="100")
    assert finished.returncode == 0, finished.stderr
    assert "HEAVY []" in finished.stdout
    lines = {line.split()[0]: line for line in finished.stdout.splitlines() if line.strip()}
    assert lines["--tile"].split()[1] == "Seamless"  # a flag: no value to type
    assert lines["--json"].split()[1] == "Print"
    assert "--lora NAME[:WEIGHT]" in finished.stdout
    assert "--hires [F]" in finished.stdout
    assert "<bool>" not in finished.stdout and "list[str]" not in finished.stdout


def test_upscale_help_names_the_upscaler_and_the_checkpoint(tmp_path: Path) -> None:
    finished = _python(
        "import sys; sys.argv = ['easel', 'upscale', '--help']\nfrom bot.cli import main\nmain()",
        tmp_path,
        COLUMNS="100",
    )
    assert "--upscaler" in finished.stdout
    assert "--model, --checkpoint" in finished.stdout
    assert "--json" in finished.stdout


def test_vocabulary_never_cuts_an_id_at_80_columns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from pipeline.prompts.vocabulary import CATEGORIES, VocabularyStore

    monkeypatch.setenv("EASEL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "argv", ["easel", "vocabulary"])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    assert exited.value.code in (0, None)
    listing = capsys.readouterr().out
    words = VocabularyStore(tmp_path / "models").current()
    ids = [entry.id for name in CATEGORIES for entry in words.entries(name)]
    longest = max(ids, key=len)
    assert len(longest) > 20
    assert all(f" {entry_id} " in listing for entry_id in ids)
    assert "…" not in "".join(line.split("│")[1] for line in listing.splitlines() if "│" in line)


def test_db_current_in_an_empty_folder_creates_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(sys, "argv", ["easel", "db", "current"])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    assert exited.value.code in (0, None)
    assert "No database yet" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_loading_prints_no_library_bars(
    models_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from pipeline.quiet import quiet_libraries

    folder = models_dir / "stable-diffusion" / "tiny-sd1"
    diffusers_logging.enable_progress_bar()
    DiffusionPipeline.from_pretrained(folder)
    assert "Loading pipeline components" in capfd.readouterr().err  # what users used to see
    quiet_libraries()
    DiffusionPipeline.from_pretrained(folder)
    assert capfd.readouterr().err == ""


def test_start_up_lines_speak_the_chosen_language() -> None:
    import torch

    from bot.cli import _device_line
    from pipeline.device import DeviceChoice

    cpu = DeviceChoice(torch.device("cpu"), torch.float32, chosen_by_user=False)
    assert (
        _device_line(cpu, "en")
        == "Running on the CPU, float32 (no GPU found), so generation is slow."
    )
    assert _device_line(cpu, "ko") == "CPU, float32로 실행합니다(GPU를 찾지 못함). 생성이 느립니다."
