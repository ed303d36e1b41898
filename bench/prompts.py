"""Prompt parser benchmark: seconds to read pathological prompts (deep nesting, runs of
brackets, backslashes, unfinished LoRA tags). Each should take well under a second; a parser
that backtracks shows here as seconds. Prints a table; asserts nothing.

    python -m bench.prompts
    python -m bench.prompts --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import time

from pipeline.prompts.composable import split_and
from pipeline.prompts.emphasis import parse_emphasis
from pipeline.prompts.extra_networks import extract_loras
from pipeline.prompts.schedule import prompt_schedule
from pipeline.prompts.syntax import PromptSyntaxError

# The inputs of tests/test_prompt_syntax.py's pathological-input test.
PATHOLOGICAL = {
    "[ x20000": "[" * 20_000,
    "( x20000": "(" * 20_000,
    "] x20000 ) x20000": "]" * 20_000 + ")" * 20_000,
    "[a: x5000": "[a:" * 5_000,
    "[a| x5000 ] x5000": "[a|" * 5_000 + "]" * 5_000,
    "(a: x5000": "(a:" * 5_000,
    "(a x5000 :1) x5000": "(a" * 5_000 + ":1)" * 5_000,
    "\\ x20000": "\\" * 20_000,
    "<lora: x5000": "<lora:" * 5_000,
    "< a x20000": "<" + "a" * 20_000,
    "ANDAND x5000": "ANDAND" * 5_000,
    "BREAK x5000": "BREAK " * 5_000,
    ": x20000 )": ":" * 20_000 + ")",
}


def read_all(text: str) -> None:
    parse_emphasis(text)
    prompt_schedule(text, 150)
    split_and(text)
    with contextlib.suppress(PromptSyntaxError):
        extract_loras(text)


def best_seconds(text: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        read_all(text)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'input':<22} {'characters':>10} {'best s':>8}")
    worst = 0.0
    for name, text in PATHOLOGICAL.items():
        seconds = best_seconds(text, args.repeats)
        worst = max(worst, seconds)
        print(f"{name:<22} {len(text):>10} {seconds:>8.3f}")
    print(f"slowest: {worst:.3f} s")


if __name__ == "__main__":
    main()
