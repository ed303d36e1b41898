"""`easel presets`: presets.toml listed, checked without a bot, reloaded in a running one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer
from rich.table import Table

from bot.cli.common import HELP_STYLE, err, operator_name, operator_store, out
from bot.cli.output import JsonOption, print_json, to_plain
from bot.cli.texts import bilingual
from bot.core.sources import PresetEntry, ProblemKind, SourcesCheck, check_sources
from bot.settings import Settings

presets_app = typer.Typer(
    help=bilingual(
        "The presets of models/presets.toml: list, check, reload in a running bot.",
        "models/presets.toml의 프리셋: 목록, 검사, 실행 중인 봇에서 다시 읽기.",
    ),
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
)


def _entry_json(entry: PresetEntry) -> dict[str, Any]:
    return {**to_plain(entry), "complete": entry.complete}


def _check_json(check: SourcesCheck) -> dict[str, Any]:
    return {
        "presets_file": str(check.presets_file),
        "exists": check.exists,
        "ok": check.ok,
        "presets": [_entry_json(entry) for entry in check.presets],
        "problems": to_plain(check.problems),
    }


@presets_app.command(
    "list",
    help=bilingual(
        "List the presets: id, LoRAs with their weights, trigger words, descriptions in "
        "English and Korean, and whether every LoRA file is present.",
        "프리셋 목록: id, LoRA와 가중치, 트리거 단어, 영어·한국어 설명, LoRA 파일이 모두 있는지.",
    ),
)
def presets_list(as_json: JsonOption = False) -> None:
    settings = Settings()
    check = check_sources(settings.models_dir)
    broken = [p for p in check.problems if p.kind is ProblemKind.PRESETS_FILE]
    if as_json:
        print_json(_check_json(check))
    else:
        _print_presets(check)
    for problem in broken:
        err.print(problem.message)
    if broken:
        raise typer.Exit(1)


def _print_presets(check: SourcesCheck) -> None:
    if not check.presets:
        where = check.presets_file if check.exists else f"{check.presets_file} (no such file)"
        out.print(bilingual(f"No presets in {where}.", f"{where}에 프리셋이 없습니다."))
        return
    table = Table(title=f"Presets in {check.presets_file}")
    for column in ("Id", "LoRAs", "Trigger words", "Description", "설명", "Files"):
        table.add_column(column)
    for entry in check.presets:
        loras = ", ".join(
            f"{lora.name} {lora.unet:g}/{lora.te:g}" + ("" if lora.present else " (missing)")
            for lora in entry.loras
        )
        table.add_row(
            entry.id,
            loras or "-",
            entry.trigger or "-",
            entry.description_en,
            entry.description_ko,
            "all present" if entry.complete else "missing",
        )
    out.print(table)


@presets_app.command(
    "check",
    help=bilingual(
        "Check presets.toml and the vocabulary override without a running bot: errors in "
        "the files and LoRA files a preset names that are missing. Exits 1 when something "
        "is wrong.",
        "실행 중인 봇 없이 presets.toml과 어휘 덮어쓰기 파일을 검사합니다: 파일의 오류와 "
        "프리셋이 쓰는데 없는 LoRA 파일. 문제가 있으면 1로 끝납니다.",
    ),
)
def presets_check(as_json: JsonOption = False) -> None:
    settings = Settings()
    check = check_sources(settings.models_dir)
    if as_json:
        print_json(_check_json(check))
    elif check.ok:
        count = len(check.presets)
        source = check.presets_file if check.exists else f"{check.presets_file} (no file)"
        out.print(
            bilingual(
                f"OK: {count} preset(s) in {source}, every LoRA file present.",
                f"문제없음: {source}에 프리셋 {count}개, LoRA 파일이 모두 있습니다.",
            )
        )
    else:
        for problem in check.problems:
            err.print(problem.message)
    if not check.ok:
        raise typer.Exit(1)


@dataclass(frozen=True)
class ReloadAsked:
    sources_revision: int  # a running bot reloads when it sees this move
    changed_by: str
    ok: bool  # the files as they are now are usable (else the bot keeps the last good ones)


def ask_reload(settings: Settings) -> tuple[ReloadAsked, SourcesCheck]:
    """Ask a running bot to read presets.toml and the vocabulary again (within a second or
    so), and check them here as it will."""
    check = check_sources(settings.models_dir)
    store = operator_store(settings)
    try:
        who = operator_name()
        store.request_sources_reload(who)
        revision = store.control_state().sources_revision
    finally:
        store.close()
    return ReloadAsked(revision, who, check.ok), check


@presets_app.command(
    "reload",
    help=bilingual(
        "Ask a running bot to read presets.toml and the vocabulary again (it does within "
        "about a second). A file with errors leaves the bot on its last good version.",
        "실행 중인 봇이 presets.toml과 어휘를 다시 읽게 합니다(1초 안팎). 오류가 있는 파일은 "
        "쓰이지 않고 봇은 마지막으로 문제없던 내용을 계속 씁니다.",
    ),
)
def presets_reload(as_json: JsonOption = False) -> None:
    settings = Settings()
    asked, check = ask_reload(settings)
    if as_json:
        print_json({**to_plain(asked), "check": _check_json(check)})
        return
    out.print(
        bilingual(
            "Asked the bot to reload presets.toml and the vocabulary.",
            "봇에 presets.toml과 어휘를 다시 읽으라고 요청했습니다.",
        )
    )
    for problem in check.problems:
        if problem.kind is ProblemKind.MISSING_LORA:
            err.print(problem.message)
        else:
            kept = bilingual(
                "The bot keeps its last good version of this file.",
                "봇은 이 파일의 마지막으로 문제없던 내용을 계속 씁니다.",
            )
            err.print(f"{problem.message} {kept}")
