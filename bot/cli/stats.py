"""`easel stats`: what the bot did over the last days, for the operator."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from bot.cli.common import operator_store, out
from bot.cli.output import JsonOption, print_json
from bot.cli.texts import bilingual

if TYPE_CHECKING:
    from bot.store.reports import DayUsage, Durations, GpuTime, UsageReport, UserUsage

SPARKS = "▁▂▃▄▅▆▇█"  # the first one is a day without any
BAR_WIDTH = 30

HELP = bilingual(
    "Jobs and images per UTC day, per user and per kind; queue wait and run time (median and "
    "95th percentile, nearest rank); failures by reason, cancellations and GPU time.",
    "UTC 날짜별, 사용자별, 종류별 작업과 이미지 수, 대기 시간과 실행 시간(중앙값과 95번째 "
    "백분위수, nearest rank), 실패 이유, 취소 수와 GPU 시간을 보여 줍니다.",
)


def stats(
    days: Annotated[
        int,
        typer.Option(
            "--days",
            min=1,
            max=3660,
            help=bilingual(
                "How many UTC days, today included.", "오늘을 포함한 UTC 기준 일수입니다."
            ),
        ),
    ] = 7,
    top: Annotated[
        int,
        typer.Option(
            "--top",
            min=1,
            help=bilingual(
                "How many users to list, most images first.",
                "이미지를 많이 만든 순서로 보여 줄 사용자 수입니다.",
            ),
        ),
    ] = 10,
    as_json: JsonOption = False,
) -> None:
    from bot.store.reports import usage_report

    with operator_store() as store:
        report = usage_report(store, days)
    if as_json:
        print_json(report_json(report, top))
        return
    _print_report(report, top)


def report_json(report: UsageReport, top: int) -> dict[str, Any]:
    """The report as plain JSON values: days as YYYY-MM-DD, times in ISO 8601 (UTC), seconds."""
    return {
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "totals": {
            "jobs": report.jobs,
            "images": report.images,
            "failed": report.failed,
            "cancelled": report.cancelled,
        },
        "days": [
            {
                "day": day.day.isoformat(),
                "jobs": day.jobs,
                "images": day.images,
                "failed": day.failed,
                "cancelled": day.cancelled,
            }
            for day in report.days
        ],
        "users": [
            {
                "user_id": user.user_id,
                "platform": user.platform,
                "platform_user_id": user.platform_user_id,
                "display_name": user.display_name,
                "jobs": user.jobs,
                "images": user.images,
            }
            for user in report.users[:top]
        ],
        "kinds": [
            {"kind": kind.kind.value, "jobs": kind.jobs, "images": kind.images}
            for kind in report.kinds
        ],
        "queue_wait_seconds": _durations_json(report.queue_wait),
        "run_time_seconds": _durations_json(report.run_time),
        "failures": [{"reason": item.reason, "jobs": item.jobs} for item in report.failures],
        "gpu_seconds": {
            "total": _rounded(report.gpu.total),
            "measured": _rounded(report.gpu.measured),
            "measured_jobs": report.gpu.measured_jobs,
            "estimated_from_run_time": _rounded(report.gpu.estimated),
            "estimated_jobs": report.gpu.estimated_jobs,
        },
    }


def _durations_json(durations: Durations) -> dict[str, Any]:
    return {
        "jobs": durations.count,
        "median": _rounded(durations.median),
        "p95": _rounded(durations.p95),
    }


def _rounded(seconds: float | None) -> float | None:
    """Milliseconds are plenty for a person's or a script's reading."""
    return None if seconds is None else round(seconds, 3)


def _print_report(report: UsageReport, top: int) -> None:
    first, last = report.days[0].day, report.days[-1].day
    count = len(report.days)
    out.print(
        Text(
            bilingual(
                f"Easel usage, {first} to {last} (UTC, {count} days)",
                f"Easel 사용량, {first} ~ {last} (UTC, {count}일)",
            ),
            style="bold",
        )
    )
    out.print(
        bilingual(
            f"{report.jobs} jobs, {report.images} images, {report.failed} failed, "
            f"{report.cancelled} cancelled",
            f"작업 {report.jobs}개, 이미지 {report.images}장, 실패 {report.failed}개, "
            f"취소 {report.cancelled}개",
        )
    )
    out.print()
    out.print(_days_table(report.days))
    out.print(
        Text.assemble(
            bilingual("Images per day ", "날짜별 이미지 "),
            (sparkline([day.images for day in report.days]), "cyan"),
        )
    )
    if report.users:
        out.print()
        out.print(_users_table(report.users[:top], len(report.users)))
    if report.kinds:
        out.print()
        out.print(_kinds_table(report))
    out.print()
    out.print(_durations_line(bilingual("Queue wait", "대기 시간"), report.queue_wait))
    out.print(_durations_line(bilingual("Run time  ", "실행 시간"), report.run_time))
    if report.failures:
        out.print()
        out.print(_failures_table(report))
    out.print()
    out.print(gpu_line(report.gpu))


def _days_table(days: tuple[DayUsage, ...]) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column(bilingual("Day (UTC)", "날짜 (UTC)"))
    for heading in (
        bilingual("Jobs", "작업"),
        bilingual("Images", "이미지"),
        bilingual("Failed", "실패"),
        bilingual("Cancelled", "취소"),
    ):
        table.add_column(heading, justify="right")
    table.add_column("")
    most = max((day.images for day in days), default=0)
    for day in days:
        table.add_row(
            day.day.isoformat(),
            str(day.jobs),
            str(day.images),
            str(day.failed),
            str(day.cancelled),
            Text(bar(day.images, most), style="cyan"),
        )
    return table


def _users_table(users: tuple[UserUsage, ...], everyone: int) -> Table:
    title = bilingual(
        f"Top users by images ({len(users)} of {everyone})",
        f"이미지를 많이 만든 사용자 ({everyone}명 중 {len(users)}명)",
    )
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column(bilingual("User", "사용자"))
    table.add_column(bilingual("Id", "ID"), justify="right")
    table.add_column(bilingual("Jobs", "작업"), justify="right")
    table.add_column(bilingual("Images", "이미지"), justify="right")
    for user in users:
        name = user.display_name or user.platform_user_id
        table.add_row(
            f"{name} ({user.platform}:{user.platform_user_id})",
            str(user.user_id),
            str(user.jobs),
            str(user.images),
        )
    return table


def _kinds_table(report: UsageReport) -> Table:
    table = Table(
        title=bilingual("By kind", "종류별"), title_justify="left", box=None, pad_edge=False
    )
    table.add_column(bilingual("Kind", "종류"))
    table.add_column(bilingual("Jobs", "작업"), justify="right")
    table.add_column(bilingual("Images", "이미지"), justify="right")
    for kind in report.kinds:
        table.add_row(kind.kind.value, str(kind.jobs), str(kind.images))
    return table


def _failures_table(report: UsageReport) -> Table:
    table = Table(
        title=bilingual("Failures by reason", "실패 이유"),
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    table.add_column(bilingual("Reason", "이유"))
    table.add_column(bilingual("Jobs", "작업"), justify="right")
    for failure in report.failures:
        table.add_row(Text(failure.reason, style="red"), str(failure.jobs))
    return table


def _durations_line(label: str, durations: Durations) -> str:
    if durations.median is None or durations.p95 is None:
        return f"{label}  " + bilingual("no jobs", "작업 없음")
    return (
        f"{label}  "
        + bilingual("median", "중앙값")
        + f" {seconds_text(durations.median)}  p95 {seconds_text(durations.p95)}  ("
        + bilingual(f"{durations.count} jobs", f"작업 {durations.count}개")
        + ")"
    )


def gpu_line(gpu: GpuTime) -> str:
    """The GPU time, saying how much of it is estimated from older rows."""
    line = bilingual(
        f"GPU time: {seconds_text(gpu.total)} over {gpu.measured_jobs + gpu.estimated_jobs} "
        "done jobs",
        f"GPU 시간: 완료된 작업 {gpu.measured_jobs + gpu.estimated_jobs}개에 "
        f"{seconds_text(gpu.total)}",
    )
    if gpu.estimated_jobs:
        line += bilingual(
            f"; {gpu.estimated_jobs} of them from before GPU time was recorded count their "
            f"run time instead ({seconds_text(gpu.estimated)}, an upper bound: jobs batched "
            "together share those seconds)",
            f"; 그중 GPU 시간이 기록되기 전의 작업 {gpu.estimated_jobs}개는 실행 시간"
            f"({seconds_text(gpu.estimated)})으로 셉니다(상한값: 함께 배치된 작업은 그 시간을 "
            "나눠 씁니다)",
        )
    return line + "."


def seconds_text(seconds: float) -> str:
    """1.5 s, 2 min 05 s, 3 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def sparkline(values: list[int]) -> str:
    """One character per value, scaled to the largest; a zero is always the lowest."""
    most = max(values, default=0)
    if most <= 0:
        return SPARKS[0] * len(values)
    top = len(SPARKS) - 1
    return "".join(
        SPARKS[0] if value <= 0 else SPARKS[max(1, math.ceil(value / most * top))]
        for value in values
    )


def bar(value: int, most: int, width: int = BAR_WIDTH) -> str:
    """A bar of full blocks, `width` long for `most`; at least one block for any value."""
    if value <= 0 or most <= 0:
        return ""
    return "█" * max(1, round(value / most * width))
