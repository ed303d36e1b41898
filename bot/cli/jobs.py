"""`easel jobs list|show|cancel|retry` and `easel history export`: the jobs in the database,
acted on beside a running bot (which sees a cancel or a retry within a second)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.table import Table

from bot.cli.common import HELP_STYLE, err, operator_name, operator_store, out
from bot.cli.output import JsonOption, print_json, to_plain
from bot.cli.selectors import (
    SinceOption,
    UserOption,
    resolve_user,
    since_option,
    user_label,
)
from bot.cli.texts import bilingual, terminal_locale

if TYPE_CHECKING:
    from bot.store import ImageRecord, JobRecord, JobStatus, Store, UserRecord

jobs_app = typer.Typer(
    help=bilingual(
        "The jobs in the database: list, show, cancel and retry them (a running bot acts on "
        "a change within a second).",
        "데이터베이스의 작업: 목록, 자세히 보기, 취소, 다시 실행(실행 중인 봇은 1초 안에 반영).",
    ),
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
)
history_app = typer.Typer(
    help=bilingual("Export the jobs' history.", "작업 기록을 내보냅니다."),
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
)


class StatusName(StrEnum):
    """The job statuses `--status` takes (the store's, without importing the store: it is
    slow to import, and `easel --help` should not wait for it)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


PROMPT_WIDTH = 60  # characters of a prompt in a table
UNWRAPPED = frozenset({"ID", "Place", "Status", "Created (UTC)", "Wait", "Run"})


# --------------------------------------------------------------------------- what is shown


@dataclass(frozen=True)
class JobSummary:
    """One line of `easel jobs list`."""

    id: int
    user_id: int
    user: str
    kind: str
    status: JobStatus
    prompt: str
    images: int
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    wait_seconds: float | None
    run_seconds: float | None


@dataclass(frozen=True)
class Origin:
    platform: str
    chat: str
    message: str | None


@dataclass(frozen=True)
class JobDetail:
    """Everything `easel jobs show` tells the operator about a job."""

    id: int
    user_id: int
    user: str
    kind: str
    status: JobStatus
    prompt: str
    negative_prompt: str
    request: dict[str, Any] | str  # the stored request (text when it is not JSON)
    parent_id: int | None
    image_index: int | None
    origin: Origin
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    wait_seconds: float | None
    run_seconds: float | None
    gpu_seconds: float | None
    attempts: int
    cancel_requested: bool
    delivery: str
    error: str | None  # what the user was told, in the terminal's language
    failure_trace: str | None  # the operator's side (a traceback)
    grid_path: str | None
    images: tuple[ImageRecord, ...]
    run_id: str | None = None  # a run on a GPU worker (while running)
    worker: str | None = None  # the worker that claimed it
    lease_until: datetime | None = None  # the worker holds the job until then


@dataclass(frozen=True)
class ExportRow:
    """One job of `easel history export`."""

    job_id: int
    user_id: int
    user: str
    kind: str
    status: JobStatus
    prompt: str
    negative_prompt: str
    seeds: tuple[int, ...]
    images: tuple[str, ...]
    grid_path: str | None
    parent_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


def wait_seconds(job: JobRecord, now: datetime) -> float | None:
    """From being made to starting (still waiting: until now; never started: until it
    ended)."""
    end = job.started_at
    if end is None:
        end = now if job.status == "queued" else job.finished_at
    return None if end is None else max(0.0, (end - job.created_at).total_seconds())


def run_seconds(job: JobRecord, now: datetime) -> float | None:
    """From starting to ending (still running: until now)."""
    if job.started_at is None:
        return None
    end = job.finished_at or (now if job.status == "running" else None)
    return None if end is None else max(0.0, (end - job.started_at).total_seconds())


def prompts_of(job: JobRecord) -> tuple[str, str]:
    """The job's prompt and negative prompt ("" for an upscale or a request this version
    cannot read)."""
    from bot.core.work import work_of

    try:
        work = work_of(job)
    except ValueError:
        return "", ""
    return getattr(work, "prompt", "") or "", getattr(work, "negative_prompt", "") or ""


def short_prompt(job: JobRecord) -> str:
    from bot.core.work import prompt_preview

    try:
        return prompt_preview(job, PROMPT_WIDTH)
    except ValueError:
        return "?"


def error_text(job: JobRecord, locale: str) -> str | None:
    """What the user was told of the failure, as the chat said it."""
    if not job.error:
        return None
    from bot.core.events import message_from_json
    from bot.core.messages import Message

    try:
        stored = message_from_json(job.error)
        args = {"detail": "", "reference": "", **stored.args, "job": job.id}
        return Message(stored.key, args).render(locale)
    except (ValueError, KeyError, TypeError):  # not a stored message: shown as it is
        return job.error


def summary(job: JobRecord, owner: UserRecord | None, now: datetime) -> JobSummary:
    return JobSummary(
        id=job.id,
        user_id=job.user_id,
        user=user_label(owner),
        kind=job.kind.value,
        status=job.status,
        prompt=short_prompt(job),
        images=len(job.images) or job.image_count,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        wait_seconds=wait_seconds(job, now),
        run_seconds=run_seconds(job, now),
    )


def detail(job: JobRecord, owner: UserRecord | None, now: datetime, locale: str) -> JobDetail:
    prompt, negative = prompts_of(job)
    try:
        request: dict[str, Any] | str = json.loads(job.request)
    except ValueError:
        request = job.request
    return JobDetail(
        id=job.id,
        user_id=job.user_id,
        user=user_label(owner),
        kind=job.kind.value,
        status=job.status,
        prompt=prompt,
        negative_prompt=negative,
        request=request,
        parent_id=job.parent_id,
        image_index=job.image_index,
        origin=Origin(job.origin_platform, job.origin_chat, job.origin_message),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        wait_seconds=wait_seconds(job, now),
        run_seconds=run_seconds(job, now),
        gpu_seconds=job.gpu_seconds,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        delivery=job.delivery.value,
        error=error_text(job, locale),
        failure_trace=job.failure_trace,
        grid_path=job.grid_path,
        images=job.images,
        run_id=job.run_id,
        worker=job.worker,
        lease_until=job.lease_until,
    )


def export_row(job: JobRecord, owner: UserRecord | None) -> ExportRow:
    prompt, negative = prompts_of(job)
    return ExportRow(
        job_id=job.id,
        user_id=job.user_id,
        user=user_label(owner),
        kind=job.kind.value,
        status=job.status,
        prompt=prompt,
        negative_prompt=negative,
        seeds=tuple(image.seed for image in job.images),
        images=tuple(image.path for image in job.images),
        grid_path=job.grid_path,
        parent_id=job.parent_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=error_text(job, "en"),
    )


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    """A duration as people read it: 4.2 s, 3 min 05 s, 2 h 07 min, 3 d 04 h."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    whole = int(value)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours:02d} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s"


def job_or_exit(store: Store, job_id: int, with_images: bool = False) -> JobRecord:
    job = store.job(job_id, with_images=with_images)
    if job is None:
        raise no_such_job(job_id)
    return job


def no_such_job(job_id: int) -> typer.Exit:
    """Say there is no such job; the exit to raise."""
    err.print(bilingual(f"No job #{job_id}.", f"작업 #{job_id}이(가) 없습니다."))
    return typer.Exit(1)


# --------------------------------------------------------------------------- easel jobs

JobIdArgument = Annotated[
    int, typer.Argument(metavar="ID", help=bilingual("The job's number.", "작업 번호."))
]


@jobs_app.command(
    "list",
    help=bilingual(
        "List jobs, newest first: who, what, status, wait and run time.",
        "작업 목록(최신 순): 누가, 무엇을, 상태, 대기 및 실행 시간.",
    ),
)
def jobs_list(
    user: UserOption = None,
    status: Annotated[
        list[StatusName] | None,
        typer.Option(
            "--status",
            help=bilingual(
                "Only jobs in this status (repeat for several).",
                "이 상태의 작업만(여러 번 줄 수 있음).",
            ),
        ),
    ] = None,
    since: SinceOption = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            min=1,
            help=bilingual("At most this many jobs.", "최대 작업 수."),
        ),
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    from bot.store import JobStatus
    from bot.store.listing import JobQuery, list_jobs, users_by_id

    start = since_option(since)
    with operator_store() as store:
        owner = resolve_user(store, user) if user is not None else None
        query = JobQuery(
            user_id=owner.id if owner else None,
            statuses=tuple(JobStatus(name.value) for name in status or ()),
            since=start,
            limit=limit,
        )
        jobs = list_jobs(store, query)
        owners = users_by_id(store, {job.user_id for job in jobs})
    now = datetime.now(UTC)
    rows = [summary(job, owners.get(job.user_id), now) for job in jobs]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(bilingual("No jobs.", "작업이 없습니다."))
        return
    out.print(jobs_table(rows))


def jobs_table(rows: Iterable[JobSummary]) -> Table:
    table = Table(title=bilingual("Jobs", "작업"))
    for column in ("ID", "User", "Kind", "Status", "Created (UTC)", "Wait", "Run", "Prompt"):
        table.add_column(column, overflow="fold", no_wrap=column in UNWRAPPED)
    for row in rows:
        table.add_row(
            f"#{row.id}",
            row.user,
            row.kind,
            row.status.value,
            when(row.created_at),
            seconds(row.wait_seconds),
            seconds(row.run_seconds),
            row.prompt,
        )
    return table


@jobs_app.command(
    "show",
    help=bilingual(
        "Show one job: request, times, attempts, error and failure trace, images, origin.",
        "작업 하나를 자세히: 요청, 시간, 시도 횟수, 오류와 실패 추적, 이미지, 출처.",
    ),
)
def jobs_show(job_id: JobIdArgument, as_json: JsonOption = False) -> None:
    with operator_store() as store:
        job = job_or_exit(store, job_id, with_images=True)
        owner = store.user_by_id(job.user_id)
    shown = detail(job, owner, datetime.now(UTC), terminal_locale())
    if as_json:
        print_json(shown)
        return
    print_detail(shown)


def worker_text(job: JobDetail, now: datetime) -> str | None:
    """Who runs a job on a GPU worker, and until when its lease holds it; for a job that
    ended, the worker that ran it (None: never on one)."""
    if job.worker is not None and job.lease_until is None:
        return job.worker
    if job.worker is not None:
        lease = when(job.lease_until)
        expired = job.lease_until is not None and job.lease_until < now
        return f"{job.worker}, lease until {lease} UTC" + (" (expired)" if expired else "")
    if job.run_id is not None:
        return f"none yet (run {job.run_id})"
    return None


def print_detail(job: JobDetail) -> None:
    table = Table(title=bilingual(f"Job #{job.id}", f"작업 #{job.id}"), show_header=False)
    table.add_column("", style="bold")
    table.add_column("", overflow="fold")
    origin = f"{job.origin.platform}, chat {job.origin.chat}"
    if job.origin.message:
        origin += f", message {job.origin.message}"
    parent = "-"
    if job.parent_id is not None:
        parent = f"#{job.parent_id}"
        if job.image_index is not None:
            parent += f", image {job.image_index + 1}"
    rows = [
        ("Status", job.status.value + (" (stop asked)" if job.cancel_requested else "")),
        ("User", f"{job.user} [id {job.user_id}]"),
        ("Kind", job.kind),
        ("Prompt", job.prompt or "-"),
        ("Negative prompt", job.negative_prompt or "-"),
        ("Parent", parent),
        ("Origin", origin),
        ("Created (UTC)", when(job.created_at)),
        ("Started (UTC)", when(job.started_at)),
        ("Finished (UTC)", when(job.finished_at)),
        ("Waited", seconds(job.wait_seconds)),
        ("Ran", seconds(job.run_seconds)),
        ("GPU time", seconds(job.gpu_seconds)),
        ("Attempts", str(job.attempts)),
    ]
    worker = worker_text(job, datetime.now(UTC))
    if worker is not None:
        rows.append(("Worker", worker))
    rows += [
        ("Delivery", job.delivery),
        ("Error", job.error or "-"),
        ("Grid", job.grid_path or "-"),
    ]
    for image in job.images:
        rows.append(
            (
                f"Image {image.index + 1}",
                f"{image.path} (seed {image.seed}, {image.width}x{image.height})",
            )
        )
    request = job.request if isinstance(job.request, str) else json.dumps(job.request)
    rows.append(("Request", request))
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    if job.failure_trace:
        out.print(bilingual("Failure trace (for the operator):", "실패 추적(운영자용):"))
        out.print(job.failure_trace.rstrip())


@jobs_app.command(
    "cancel",
    help=bilingual(
        "Cancel a job: a queued one at once; a running one stops within a sampling step in "
        "the running bot (or is cancelled when the bot next starts).",
        "작업 취소: 대기 중이면 즉시, 실행 중이면 실행 중인 봇이 한 단계 안에 멈춥니다(봇이 "
        "꺼져 있으면 다음 시작 때 취소).",
    ),
)
def jobs_cancel(job_id: JobIdArgument) -> None:
    from bot.store import CancelResult, NotFoundError

    with operator_store() as store:
        try:
            result = store.request_cancel(job_id, operator_name())
        except NotFoundError:
            raise no_such_job(job_id) from None
        ended = store.job(job_id) if result is CancelResult.NOT_ACTIVE else None
    if result is CancelResult.CANCELLED:
        out.print(bilingual(f"Job #{job_id} cancelled.", f"작업 #{job_id}을(를) 취소했습니다."))
    elif result is CancelResult.STOPPING:
        out.print(
            bilingual(
                f"Job #{job_id} is running: the bot stops it within a sampling step.",
                f"작업 #{job_id}은(는) 실행 중입니다: 봇이 한 단계 안에 멈춥니다.",
            )
        )
    else:
        state = ended.status.value if ended is not None else "gone"
        err.print(
            bilingual(
                f"Job #{job_id} is already {state}: nothing to cancel.",
                f"작업 #{job_id}은(는) 이미 {state} 상태입니다: 취소할 것이 없습니다.",
            )
        )
        raise typer.Exit(1)


@jobs_app.command(
    "retry",
    help=bilingual(
        "Queue a failed or cancelled job again, as a new job with the same request; a "
        "running bot takes it within a second and tells its chat.",
        "실패하거나 취소된 작업을 같은 요청의 새 작업으로 다시 대기열에 넣습니다; 실행 중인 봇이 "
        "1초 안에 받아 채팅에 알립니다.",
    ),
)
def jobs_retry(job_id: JobIdArgument) -> None:
    from bot.store import NotFoundError
    from bot.store.listing import NotRetryableError, retry_job

    with operator_store() as store:
        try:
            new = retry_job(store, job_id, operator_name())
        except NotFoundError:
            raise no_such_job(job_id) from None
        except NotRetryableError as refused:
            state = refused.status.value
            err.print(
                bilingual(
                    f"Job #{job_id} is {state}: only a failed or cancelled job can be retried.",
                    f"작업 #{job_id}은(는) {state} 상태입니다: 실패하거나 취소된 작업만 다시 "
                    "실행할 수 있습니다.",
                )
            )
            raise typer.Exit(1) from None
    out.print(
        bilingual(
            f"Job #{job_id} queued again as job #{new.id}.",
            f"작업 #{job_id}을(를) 작업 #{new.id}(으)로 다시 대기열에 넣었습니다.",
        )
    )


# --------------------------------------------------------------------------- easel history


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


CSV_COLUMNS = (
    "job_id",
    "user_id",
    "user",
    "kind",
    "status",
    "prompt",
    "negative_prompt",
    "seeds",
    "images",
    "grid_path",
    "parent_id",
    "created_at",
    "started_at",
    "finished_at",
    "error",
)


@history_app.command(
    "export",
    help=bilingual(
        "Export the jobs, oldest first, one JSON line or CSV row each: prompt, kind, status, "
        "times, and the images' paths and seeds (in CSV, separated by ';').",
        "작업을 오래된 순으로 내보냅니다(작업마다 JSON 한 줄 또는 CSV 한 행): 프롬프트, 종류, "
        "상태, 시간, 이미지 경로와 시드(CSV에서는 ';'로 구분).",
    ),
)
def history_export(
    export_format: Annotated[
        ExportFormat,
        typer.Option("--format", help=bilingual("jsonl or csv.", "jsonl 또는 csv.")),
    ],
    user: UserOption = None,
    since: SinceOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help=bilingual(
                "Write to this file instead of standard output.",
                "표준 출력 대신 이 파일에 씁니다.",
            ),
        ),
    ] = None,
) -> None:
    from bot.store.listing import history, users_by_id

    start = since_option(since)
    with operator_store() as store:
        owner = resolve_user(store, user) if user is not None else None
        owners: dict[int, UserRecord] = {}

        def rows() -> Iterator[ExportRow]:
            for job in history(store, owner.id if owner else None, start):
                if job.user_id not in owners:
                    owners.update(users_by_id(store, {job.user_id}))
                yield export_row(job, owners.get(job.user_id))

        if output is None:
            count = write_export(rows(), export_format, sys.stdout)
            sys.stdout.flush()
        else:
            count = export_to_file(rows(), export_format, output)
    if output is not None:
        err.print(
            bilingual(
                f"Wrote {count} job(s) to {output}.",
                f"작업 {count}개를 {output}에 썼습니다.",
            )
        )


def export_to_file(rows: Iterable[ExportRow], export_format: ExportFormat, path: Path) -> int:
    """Write through a side file renamed at the end: a failed export leaves no half file."""
    partial = path.with_name(path.name + ".part")
    try:
        with partial.open("w", encoding="utf-8", newline="") as stream:
            count = write_export(rows, export_format, stream)
        partial.replace(path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        err.print(
            bilingual(
                f"Cannot write {path}: {error.strerror or error}.",
                f"{path}에 쓸 수 없습니다: {error.strerror or error}.",
            )
        )
        raise typer.Exit(1) from None
    return count


def write_export(rows: Iterable[ExportRow], export_format: ExportFormat, stream: TextIO) -> int:
    count = 0
    if export_format is ExportFormat.JSONL:
        for row in rows:
            stream.write(json.dumps(to_plain(row), ensure_ascii=False) + "\n")
            count += 1
        return count
    writer = csv.writer(stream)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        plain = to_plain(row)
        plain["seeds"] = ";".join(str(seed) for seed in row.seeds)
        plain["images"] = ";".join(row.images)
        writer.writerow(["" if plain[name] is None else plain[name] for name in CSV_COLUMNS])
        count += 1
    return count
