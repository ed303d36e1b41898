"""`easel queue status|pause|resume|clear`: the shared queue, as the database has it; a
running bot acts on a pause, a resume or a clear within a second."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bot.cli.common import HELP_STYLE, operator_name, operator_store, out
from bot.cli.jobs import (
    UNWRAPPED,
    run_seconds,
    seconds,
    short_prompt,
    wait_seconds,
    when,
)
from bot.cli.output import JsonOption, print_json
from bot.cli.selectors import user_label
from bot.cli.texts import bilingual

if TYPE_CHECKING:
    from bot.store import JobRecord, UserRecord

queue_app = typer.Typer(
    help=bilingual(
        "The queue: see it, pause and resume it, clear it (a running bot acts within a second).",
        "대기열: 보기, 일시 정지와 재개, 비우기(실행 중인 봇은 1초 안에 반영).",
    ),
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
)


@dataclass(frozen=True)
class QueueEntry:
    """A queued or running job; `position` is 1 for the job that starts next (None for a
    running one)."""

    id: int
    position: int | None
    user_id: int
    user: str
    kind: str
    prompt: str
    images: int
    created_at: datetime
    started_at: datetime | None
    wait_seconds: float | None
    run_seconds: float | None


@dataclass(frozen=True)
class QueueStatus:
    paused: bool
    # Who last paused, resumed or otherwise changed the shared settings, and when.
    changed_by: str | None
    changed_at: datetime | None
    revision: int
    running: tuple[QueueEntry, ...]
    queued: tuple[QueueEntry, ...]
    counts: dict[str, int]  # jobs of each status in the database


def queue_order(queued: tuple[JobRecord, ...], owners: dict[int, UserRecord]) -> dict[int, int]:
    """Each queued job's 1-based place in the order the bot takes them: admins' jobs first,
    then VIPs', then users', fair shares among the users of a tier (the bot's own
    scheduler, built from the rows as the bot builds it at start)."""
    from bot.core.config import TIERS
    from bot.core.scheduler import FairScheduler, QueuedJob
    from bot.store import Role

    scheduler = FairScheduler(max_batch_images=1)
    for job in queued:
        owner = owners.get(job.user_id)
        tier = TIERS[owner.role if owner is not None else Role.USER]
        images = max(job.image_count, math.ceil(job.cost))
        scheduler.add(QueuedJob(job.id, job.user_id, tier, images, job.batch_key))
    return {job.id: scheduler.position(job.id) + 1 for job in queued}


def queue_status() -> QueueStatus:
    from bot.store.listing import queue_snapshot

    with operator_store() as store:
        control = store.control_state()
        snapshot = queue_snapshot(store)
    now = datetime.now(UTC)
    order = queue_order(snapshot.queued, snapshot.owners)

    def entry(job: JobRecord, position: int | None) -> QueueEntry:
        return QueueEntry(
            id=job.id,
            position=position,
            user_id=job.user_id,
            user=user_label(snapshot.owners.get(job.user_id)),
            kind=job.kind.value,
            prompt=short_prompt(job),
            images=job.image_count,
            created_at=job.created_at,
            started_at=job.started_at,
            wait_seconds=wait_seconds(job, now),
            run_seconds=run_seconds(job, now),
        )

    queued = sorted((entry(job, order[job.id]) for job in snapshot.queued), key=_by_place)
    return QueueStatus(
        paused=control.paused,
        changed_by=control.changed_by,
        changed_at=control.changed_at,
        revision=control.revision,
        running=tuple(entry(job, None) for job in snapshot.running),
        queued=tuple(queued),
        counts={status.value: count for status, count in snapshot.counts.items()},
    )


def _by_place(entry: QueueEntry) -> tuple[int, int]:
    return (entry.position or 0, entry.id)


@queue_app.command(
    "status",
    help=bilingual(
        "Whether the queue is paused (and by whom), the running and queued jobs with their "
        "users and places in order, and the counts.",
        "대기열이 일시 정지되었는지(누가), 실행 중인 작업과 대기 중인 작업(사용자와 순서), 개수.",
    ),
)
def status(as_json: JsonOption = False) -> None:
    state = queue_status()
    if as_json:
        print_json(state)
        return
    out.print(pause_line(state))
    counts = state.counts
    out.print(
        bilingual(
            f"{counts.get('running', 0)} running, {counts.get('queued', 0)} queued; "
            f"{counts.get('done', 0)} done, {counts.get('failed', 0)} failed, "
            f"{counts.get('cancelled', 0)} cancelled in all.",
            f"실행 중 {counts.get('running', 0)}, 대기 중 {counts.get('queued', 0)}; 전체 완료 "
            f"{counts.get('done', 0)}, 실패 {counts.get('failed', 0)}, 취소 "
            f"{counts.get('cancelled', 0)}.",
        )
    )
    if state.running or state.queued:
        out.print(entries_table(state))


def pause_line(state: QueueStatus) -> str:
    who = state.changed_by or "?"
    since = when(state.changed_at)
    if state.paused:
        return bilingual(
            f"The queue is paused (by {who}, {since} UTC): no new job starts.",
            f"대기열이 일시 정지되었습니다({who}, {since} UTC): 새 작업이 시작되지 않습니다.",
        )
    return bilingual("The queue is running.", "대기열이 돌아가고 있습니다.")


def entries_table(state: QueueStatus) -> Table:
    table = Table()
    for column in ("Place", "ID", "User", "Kind", "Images", "Waited", "Running for", "Prompt"):
        table.add_column(column, overflow="fold", no_wrap=column in UNWRAPPED)
    for item in state.running:
        table.add_row(
            "running",
            f"#{item.id}",
            item.user,
            item.kind,
            str(item.images),
            seconds(item.wait_seconds),
            seconds(item.run_seconds),
            item.prompt,
        )
    for item in state.queued:
        table.add_row(
            str(item.position),
            f"#{item.id}",
            item.user,
            item.kind,
            str(item.images),
            seconds(item.wait_seconds),
            "-",
            item.prompt,
        )
    return table


@queue_app.command(
    "pause",
    help=bilingual(
        "Pause the queue: no new job starts (running ones finish) until `easel queue resume`.",
        "대기열을 일시 정지합니다: `easel queue resume` 전까지 새 작업이 시작되지 않습니다"
        "(실행 중인 작업은 끝까지 실행).",
    ),
)
def pause() -> None:
    set_paused(True)


@queue_app.command(
    "resume",
    help=bilingual("Resume a paused queue.", "일시 정지된 대기열을 재개합니다."),
)
def resume() -> None:
    set_paused(False)


def set_paused(paused: bool) -> None:
    with operator_store() as store:
        control = store.control_state()
        if control.paused == paused:
            who = control.changed_by or "?"
            out.print(
                bilingual(
                    f"The queue is already paused (by {who}).",
                    f"대기열이 이미 일시 정지되어 있습니다({who}).",
                )
                if paused
                else bilingual("The queue is not paused.", "대기열이 일시 정지되어 있지 않습니다.")
            )
            return
        store.set_queue_paused(paused, operator_name())
        queued = store.count_queued()
    if paused:
        out.print(
            bilingual(
                f"Paused: no new job starts; running jobs finish. {queued} job(s) queued.",
                f"일시 정지했습니다: 새 작업이 시작되지 않고 실행 중인 작업은 끝납니다. 대기 중 "
                f"{queued}개.",
            )
        )
    else:
        out.print(
            bilingual(
                f"Resumed: {queued} queued job(s) start in turn.",
                f"재개했습니다: 대기 중인 작업 {queued}개가 차례로 시작됩니다.",
            )
        )


@queue_app.command(
    "clear",
    help=bilingual(
        "Cancel every queued job (running ones go on). Without --yes it only says how many "
        "would be cancelled, changes nothing and exits 0.",
        "대기 중인 모든 작업을 취소합니다(실행 중인 작업은 계속). --yes 없이는 몇 개가 취소될지만 "
        "말하고 아무것도 바꾸지 않으며 0으로 끝납니다.",
    ),
)
def clear(
    yes: Annotated[
        bool,
        typer.Option("--yes", help=bilingual("Really cancel them.", "실제로 취소합니다.")),
    ] = False,
) -> None:
    from bot.store.listing import cancel_queued

    with operator_store() as store:
        if not yes:
            queued = store.count_queued()
            out.print(
                bilingual(
                    f"{queued} queued job(s) would be cancelled; nothing changed. Run "
                    "`easel queue clear --yes` to cancel them.",
                    f"대기 중인 작업 {queued}개가 취소됩니다; 아무것도 바꾸지 않았습니다. "
                    "취소하려면 `easel queue clear --yes`를 실행하세요.",
                )
            )
            return
        cancelled = cancel_queued(store, operator_name())
    if not cancelled:
        out.print(bilingual("No job is queued: nothing to cancel.", "대기 중인 작업이 없습니다."))
        return
    ids = ", ".join(f"#{job_id}" for job_id in cancelled)
    out.print(
        bilingual(
            f"Cancelled {len(cancelled)} queued job(s): {ids}.",
            f"대기 중인 작업 {len(cancelled)}개를 취소했습니다: {ids}.",
        )
    )
