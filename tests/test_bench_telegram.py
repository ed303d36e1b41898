"""`python -m bench.telegram` runs end to end on tiny numbers and prints its figures (the figures
themselves are not checked: they measure the machine)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGUMENTS = ("--jobs", "3", "--updates", "5", "--presses", "2", "--rate", "20")
FIGURES = r"\s+(\d+)" + r"\s+(\d+\.\d)" * 4  # count, p50, p90, p99, max


def test_the_telegram_bench_prints_first_reply_figures() -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(
        [sys.executable, "-m", "bench.telegram", *ARGUMENTS],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    output = finished.stdout
    assert "3 jobs queued, 1 running; 7 updates at 20/s" in output
    counts = {}
    for label in ("/imagine", "button press", "all"):
        found = re.search(re.escape(label) + FIGURES, output)
        assert found is not None, output
        counts[label] = int(found[1])
        p50, p90, p99, largest = (float(found[i]) for i in range(2, 6))
        assert 0 < p50 <= p90 <= p99 <= largest
    assert counts == {"/imagine": 5, "button press": 2, "all": 7}
    assert "refused calls: 0" in output
    assert re.search(r"CPU time: \d+\.\d ms per update", output), output
    assert re.search(r"load average \d+\.\d", output), output
