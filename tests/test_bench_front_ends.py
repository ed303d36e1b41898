"""`python -m bench.discord` and `python -m bench.telegram` run end to end on tiny numbers and
print their figures (the figures themselves are not checked: they measure the machine).

Each bench's `main()` runs in this process, with its command line in `sys.argv`: what the module
does under `-m` is that call, and a process of its own would spend most of its time importing
torch and diffusers again."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator

import pytest
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

import bench.discord
import bench.telegram

FIGURES = r"\s+(\d+)" + r"\s+(\d+\.\d)" * 4  # count, p50, p90, p99, max


@pytest.fixture
def libraries_logging() -> Iterator[None]:
    """The benches quiet diffusers and transformers for their process; put that back."""
    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    yield
    diffusers_logging.set_verbosity(levels[0])
    transformers_logging.set_verbosity(levels[1])


def bench_output(
    main: Callable[[], None],
    module: str,
    arguments: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    monkeypatch.setattr(sys, "argv", [module, *arguments])
    main()
    return capsys.readouterr().out


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


@pytest.mark.usefixtures("libraries_logging")
def test_the_discord_bench_prints_acknowledgement_figures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ("--jobs", "3", "--interactions", "5", "--presses", "2", "--rate", "20")
    output = bench_output(bench.discord.main, "bench.discord", arguments, monkeypatch, capsys)
    assert "3 jobs queued, 1 running; 7 interactions" in output
    labels = ("/imagine", "button press", "all", "first message (all)")
    assert counted(output, labels) == dict(zip(labels, (5, 2, 7, 7), strict=True))
    assert "refused REST calls: 0" in output
    assert re.search(r"CPU time: \d+\.\d ms per interaction", output), output


@pytest.mark.usefixtures("libraries_logging")
def test_the_telegram_bench_prints_first_reply_figures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ("--jobs", "3", "--updates", "5", "--presses", "2", "--rate", "20")
    output = bench_output(bench.telegram.main, "bench.telegram", arguments, monkeypatch, capsys)
    assert "3 jobs queued, 1 running; 7 updates at 20/s" in output
    labels = ("/imagine", "button press", "all")
    assert counted(output, labels) == dict(zip(labels, (5, 2, 7), strict=True))
    assert "refused calls: 0" in output
    assert re.search(r"CPU time: \d+\.\d ms per update", output), output
    assert re.search(r"load average \d+\.\d", output), output
