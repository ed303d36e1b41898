"""Ctrl-C during `easel imagine`: the job is cancelled within a step, the command says so and
exits 130, without a traceback or an abort."""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

import bot.cli.generate as cli
from pipeline.request import ResultStatus

pytestmark = pytest.mark.heavy  # started first: see conftest.py

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class _CancellableEngine:
    """Presses Ctrl-C (in the main thread) once running, then stops when cancelled."""

    saw_cancel: bool = False

    def run(
        self,
        job: object,
        on_progress: object = None,
        cancel: threading.Event | None = None,
    ) -> SimpleNamespace:
        assert cancel is not None
        _thread.interrupt_main()
        self.saw_cancel = cancel.wait(30)
        return SimpleNamespace(status=ResultStatus.CANCELLED)


def test_ctrl_c_cancels_the_running_job_and_waits_for_it() -> None:
    engine = _CancellableEngine()
    job = SimpleNamespace(request=SimpleNamespace(steps=4))
    result = cli._generate_with_progress(engine, job, show=False)  # type: ignore[arg-type]
    assert engine.saw_cancel
    assert result.status is ResultStatus.CANCELLED


def test_a_cancelled_job_says_so_and_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    engine = _CancellableEngine()
    job = SimpleNamespace(request=SimpleNamespace(steps=4), notes=())
    engine.prepare = lambda request: job  # type: ignore[attr-defined]
    with pytest.raises(cli.typer.Exit) as exited:
        cli._generate_and_save(engine, job.request, Path("unused"), as_json=False)  # type: ignore[arg-type]
    assert exited.value.exit_code == 130
    assert "Cancelled: nothing was saved." in capsys.readouterr().err


def test_ctrl_c_in_the_real_command_exits_130_without_a_crash(
    models_dir: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "EASEL_MODELS_DIR": str(models_dir),
        "EASEL_OUTPUTS_DIR": str(tmp_path / "outputs"),
        "EASEL_CACHE_DIR": str(tmp_path / "cache"),
        "EASEL_DEVICE": "cpu",
        "EASEL_MAX_STEPS": "100000",
    }
    command = [sys.executable, "-c", "from bot.cli import main; main()"]
    args = ["imagine", "a lighthouse", "--steps", "100000", "--model", "tiny-sd1"]
    process = subprocess.Popen(
        [*command, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    for line in process.stderr:  # until the model is loaded and sampling starts
        lines.append(line)
        if line.startswith("Model:"):
            break
    else:
        process.kill()
        pytest.fail("the command ended before loading the model: " + "".join(lines))
    threading.Event().wait(1.0)
    process.send_signal(signal.SIGINT)
    try:
        _, rest = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("Ctrl-C did not stop the job")
    stderr = "".join(lines) + rest
    assert process.returncode == 130, stderr
    assert "Cancelled" in stderr or "Interrupted" in stderr
    assert "Traceback" not in stderr
    assert "terminate called" not in stderr
    assert "IndexError" not in stderr
    assert not list((tmp_path / "outputs").rglob("*.png"))
