"""Which checkpoint the command line loads, and what it says when it cannot: offline without a
local model, or several local models and none chosen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main
from tests.running_bot import EASEL

pytestmark = pytest.mark.heavy  # started first: see conftest.py

ROOT = Path(__file__).resolve().parent.parent


# The script pip installed, as users start it (its entry point is bot.cli:main).
INSTALLED = [str(Path(sys.executable).with_name("easel"))]


def _easel(
    command: list[str], args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("offline", "command"), [("1", INSTALLED), ("", EASEL)], ids=["offline-installed", "no-hub"]
)
def test_offline_without_a_local_model_is_one_clear_error(
    tmp_path: Path, offline: str, command: list[str]
) -> None:
    models = tmp_path / "models"
    (models / "stable-diffusion").mkdir(parents=True)
    env = {
        "EASEL_MODELS_DIR": str(models),
        "EASEL_CACHE_DIR": str(tmp_path / "cache"),
        "EASEL_DEVICE": "cpu",
        "EASEL_MODEL": "",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": offline,
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there: as good as offline
    }
    finished = _easel(command, ["imagine", "a lighthouse", "--steps", "2"], env, tmp_path)
    assert finished.returncode == 1
    lines = finished.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors == lines[-1:]
    assert str(models / "stable-diffusion") in errors[0]
    assert "EASEL_MODEL" in errors[0]
    assert "Traceback" not in finished.stderr
    assert finished.stdout == ""
    assert len(lines) == len(set(lines)), "no line is printed twice"
    assert not (tmp_path / "hf" / "hub").exists() or not any((tmp_path / "hf" / "hub").iterdir())


def test_several_local_models_and_none_chosen_lists_them_and_stops(
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EASEL_DEVICE", "cpu")
    monkeypatch.delenv("EASEL_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing is downloaded when local checkpoints exist")

    monkeypatch.setattr("pipeline.loading.download_from_hub", no_download)
    monkeypatch.setattr(sys, "argv", ["easel", "imagine", "a lighthouse", "--steps", "2"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    message = capsys.readouterr().err
    assert "2 checkpoints in" in message
    assert "tiny-sd1, tiny-sd1-single" in message
    assert "--model" in message and "EASEL_MODEL" in message
