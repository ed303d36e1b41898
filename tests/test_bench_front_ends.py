"""`python -m bench.discord` and `python -m bench.telegram` run end to end on tiny numbers and
print their figures (the figures themselves are not checked: they measure the machine)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = r"\s+(\d+)" + r"\s+(\d+\.\d)" * 4  # count, p50, p90, p99, max


def bench_output(module: str, *arguments: str) -> str:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout


def counted(output: str, labels: tuple[str, ...]) -> dict[str, int]:
    """Each latency line's count, after checking its figures are in order."""
    counts = {}
    for label in labels:
        found = re.search(re.escape(label) + FIGURES, output)
        assert found is not None, output
        counts[label] = int(found[1])
        p50, p90, p99, largest = (float(found[i]) for i in range(2, 6))
        assert 0 < p50 <= p90 <= p99 <= largest
    return counts


def test_the_discord_bench_prints_acknowledgement_figures() -> None:
    output = bench_output(
        "bench.discord", "--jobs", "3", "--interactions", "5", "--presses", "2", "--rate", "20"
    )
    assert "3 jobs queued, 1 running; 7 interactions" in output
    labels = ("/imagine", "button press", "all", "first message (all)")
    assert counted(output, labels) == dict(zip(labels, (5, 2, 7, 7), strict=True))
    assert "refused REST calls: 0" in output
    assert re.search(r"CPU time: \d+\.\d ms per interaction", output), output


def test_the_telegram_bench_prints_first_reply_figures() -> None:
    output = bench_output(
        "bench.telegram", "--jobs", "3", "--updates", "5", "--presses", "2", "--rate", "20"
    )
    assert "3 jobs queued, 1 running; 7 updates at 20/s" in output
    labels = ("/imagine", "button press", "all")
    assert counted(output, labels) == dict(zip(labels, (5, 2, 7), strict=True))
    assert "refused calls: 0" in output
    assert re.search(r"CPU time: \d+\.\d ms per update", output), output
    assert re.search(r"load average \d+\.\d", output), output
