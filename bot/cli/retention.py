"""`easel prune`: delete old finished jobs, their images and the uploads nothing needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from bot.cli.common import err, operator_store, out
from bot.cli.output import JsonOption, human_bytes, print_json
from bot.cli.texts import bilingual
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.retention import PrunePlan, PruneResult
    from bot.store import Store

HELP = bilingual(
    "Delete finished jobs (done, failed, cancelled) asked for before an age, with their "
    "images, grids and the uploaded images no newer job uses; queued and running jobs stay. "
    "Only files inside the outputs folder are deleted. Without --yes it is a dry run: it says "
    "how many jobs, files and bytes would go, changes nothing and exits 0.",
    "지정한 기간보다 오래된 끝난 작업(완료, 실패, 취소)과 그 이미지, 그리드, 더 새로운 작업이 "
    "쓰지 않는 업로드 이미지를 지웁니다. 대기 중이거나 실행 중인 작업은 남습니다. 출력 폴더 안의 "
    "파일만 지웁니다. --yes가 없으면 미리 보기만 합니다: 지울 작업, 파일, 바이트 수를 알려 주고 "
    "아무것도 바꾸지 않으며 0으로 끝납니다.",
)


def parse_age(text: str) -> timedelta:
    """30d, 12h, 2w (or 90m): a length of time, as `--since` and ban lengths read it."""
    from bot.core.durations import DurationError, parse_length

    try:
        return parse_length(text)
    except DurationError:
        raise typer.BadParameter(
            bilingual(
                f"{text!r} is not an age: give a number and m, h, d or w (12h, 30d, 2w).",
                f"{text!r}은(는) 기간이 아닙니다: 숫자와 m, h, d, w를 붙여 주세요(12h, 30d, 2w).",
            )
        ) from None


def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help=bilingual(
                "Jobs asked for longer ago than this: 12h, 30d, 2w.",
                "이보다 오래전에 요청된 작업: 12h, 30d, 2w.",
            ),
        ),
    ],
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            help=bilingual(
                "Delete for real (otherwise a dry run).",
                "실제로 지웁니다(없으면 미리 보기만 합니다).",
            ),
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    from bot.retention import plan_prune

    age = parse_age(older_than)
    cutoff = datetime.now(UTC) - age
    outputs_dir = Settings().outputs_dir
    with operator_store() as store:
        plan = plan_prune(store, outputs_dir, cutoff)
        result = _apply_with_progress(store, plan) if yes else None
    if as_json:
        print_json(prune_json(plan, result, older_than))
    else:
        _print_prune(plan, result)
    if result is not None and result.problems:
        raise typer.Exit(1)


def _apply_with_progress(store: Store, plan: PrunePlan) -> PruneResult:
    """Delete, with a progress bar on a terminal (a prune of a busy bot's month takes a
    while); nothing is drawn into a pipe or a file."""
    from bot.retention import apply_prune

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(bilingual("Pruning", "정리 중"), total=len(plan.jobs))
        return apply_prune(store, plan, on_job=lambda: bar.advance(task))


def prune_json(plan: PrunePlan, result: PruneResult | None, older_than: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "dry_run": result is None,
        "older_than": older_than.strip(),
        "cutoff": plan.cutoff.isoformat(),
        "outputs_dir": str(plan.outputs_dir),
        "jobs": len(plan.jobs),
        "files": len(plan.files),
        "bytes": plan.bytes,
        "files_in_use": plan.files_in_use,
        "files_outside_outputs": plan.files_outside,
    }
    if result is not None:
        document["deleted"] = {"jobs": result.jobs, "files": result.files, "bytes": result.bytes}
        document["jobs_kept"] = list(result.jobs_kept)
        document["problems"] = list(result.problems)
    return document


def _print_prune(plan: PrunePlan, result: PruneResult | None) -> None:
    cutoff = plan.cutoff.strftime("%Y-%m-%d %H:%M UTC")
    if result is None:
        out.print(
            bilingual(
                f"Dry run: would delete {len(plan.jobs)} finished jobs from before {cutoff}, "
                f"{len(plan.files)} files ({human_bytes(plan.bytes)}) under "
                f"{plan.outputs_dir}. Nothing was changed; add --yes to delete.",
                f"미리 보기: {cutoff} 이전의 끝난 작업 {len(plan.jobs)}개와 {plan.outputs_dir} "
                f"안의 파일 {len(plan.files)}개({human_bytes(plan.bytes)})를 지울 예정입니다. "
                "아무것도 바꾸지 않았습니다. 지우려면 --yes를 붙이세요.",
            )
        )
    else:
        out.print(
            bilingual(
                f"Deleted {result.jobs} finished jobs from before {cutoff} and {result.files} "
                f"files ({human_bytes(result.bytes)}) under {plan.outputs_dir}.",
                f"{cutoff} 이전의 끝난 작업 {result.jobs}개와 {plan.outputs_dir} 안의 파일 "
                f"{result.files}개({human_bytes(result.bytes)})를 지웠습니다.",
            )
        )
    if plan.files_in_use:
        out.print(
            bilingual(
                f"{plan.files_in_use} files stay: newer or unfinished jobs use them.",
                f"파일 {plan.files_in_use}개는 더 새로운 작업이나 끝나지 않은 작업이 쓰므로 "
                "남깁니다.",
            )
        )
    if plan.files_outside:
        out.print(
            bilingual(
                f"{plan.files_outside} recorded files lie outside the outputs folder: left alone.",
                f"기록된 파일 {plan.files_outside}개는 출력 폴더 밖에 있어 건드리지 않았습니다.",
            )
        )
    if result is not None:
        for line in result.problems:
            err.print(bilingual(f"Could not delete {line}", f"지우지 못했습니다: {line}"))
        if result.jobs_kept:
            ids = ", ".join(str(job_id) for job_id in result.jobs_kept)
            err.print(
                bilingual(
                    f"Jobs kept because a file of theirs could not be deleted: {ids}.",
                    f"파일을 지우지 못해 남긴 작업: {ids}.",
                )
            )
