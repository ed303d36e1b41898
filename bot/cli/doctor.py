"""`easel doctor`: what is ready and what is not, each with what to do."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bot.cli.common import out
from bot.cli.output import JsonOption, print_json

if TYPE_CHECKING:  # the checks import the model folders' and presets' code: only when run
    from bot.doctor import Check

SYMBOLS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red")}
# Piped or redirected, lines are not wrapped at 80 columns (easier to grep).
PLAIN_WIDTH = 240


@dataclass(frozen=True)
class DoctorReport:
    ok: bool  # no check failed (warnings allowed): the exit status is 0
    counts: dict[str, int]
    checks: list[Check]


DOCTOR_HELP_KO = (
    "이 컴퓨터를 점검합니다: Python, torch와 GPU, TCMalloc, 설정과 토큰(값은 표시하지 않음), "
    "모델 폴더와 프리셋, 데이터베이스, 디스크 공간과 쓰기 권한. 문제마다 해결 방법을 알려 줍니다. "
    "실패한 항목이 있으면 종료 코드 1, 경고만 있으면 0입니다."
)


def doctor(json_output: JsonOption = False) -> None:
    """Check this machine: Python, torch and the GPU, TCMalloc, the settings and tokens (never
    shown), the models folder and presets, the database, disk space and write access. Each
    problem comes with what to do. Exit status 1 when a check fails; warnings alone exit 0."""
    from bot.doctor import exit_code, run_checks

    checks = run_checks()
    if json_output:
        counts = {status: sum(check.status == status for check in checks) for status in SYMBOLS}
        print_json(DoctorReport(ok=exit_code(checks) == 0, counts=counts, checks=checks))
    else:
        print_table(checks)
    raise typer.Exit(exit_code(checks))


def print_table(checks: list[Check]) -> None:
    """The table on a terminal, fitted to its width and in colour; elsewhere (a pipe, a file)
    wide, plain and without trailing blanks."""
    if out.is_terminal:
        out.print(checks_table(checks))
        out.print(summary_line(checks))
        return
    buffer = io.StringIO()
    plain = Console(file=buffer, width=PLAIN_WIDTH, markup=False, highlight=False)
    plain.print(checks_table(checks, ruled=False))
    plain.print(summary_line(checks))
    lines = buffer.getvalue().splitlines()
    sys.stdout.write("".join(line.rstrip() + "\n" for line in lines))
    sys.stdout.flush()


def checks_table(checks: list[Check], ruled: bool = True) -> Table:
    """✓ / ! / ✗, the check, what was found and (→) what to do. Unruled for pipes, where the
    header's rule would run the whole width."""
    table = Table(box=box.SIMPLE_HEAD if ruled else None, show_edge=False, pad_edge=False)
    table.add_column("", no_wrap=True)
    table.add_column("Check", no_wrap=True)
    table.add_column("Result")
    for check in checks:
        symbol, colour = SYMBOLS[check.status]
        result = Text(check.detail)
        if check.fix:
            result.append("\n→ ")
            result.append(check.fix, style=colour)
        table.add_row(Text(symbol, style=f"bold {colour}"), check.name, result)
    return table


def summary_line(checks: list[Check]) -> Text:
    failed = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    if failed:
        return Text(f"{failed} failed, {warned} warning(s): fix the ✗ lines.", style="red")
    if warned:
        return Text(f"Ready, with {warned} warning(s).", style="yellow")
    return Text("Ready.", style="green")
