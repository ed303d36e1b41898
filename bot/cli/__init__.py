"""The `easel` command line: generate images and inspect models."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable

import typer
from pydantic import ValidationError
from rich.text import Text

from bot.cli import (
    catalogue,
    database,
    discord,
    doctor,
    generate,
    jobs,
    models,
    presets,
    queue,
    retention,
    running,
    stats,
    users,
    worker,
)
from bot.cli.common import HELP_STYLE, _device_line, early_settings, err, export_hub_offline
from bot.cli.texts import bilingual
from bot.core.options import DEFAULT_HIRES_SCALE
from bot.logs import configure_logging
from bot.settings import Settings, settings_problems
from pipeline.errors import EaselError

__all__ = ["_device_line", "app", "early_settings", "export_hub_offline", "main", "with_bare_hires"]


app = typer.Typer(
    help=bilingual(
        "Easel: Stable Diffusion on your own GPU and checkpoints.",
        "Easel: 내 GPU와 체크포인트로 돌리는 Stable Diffusion.",
    ),
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = logging.getLogger("easel")


def _command(function: Callable[..., None], korean: str) -> None:
    """Register a command; its docstring is the English help."""
    app.command(help=bilingual(inspect.getdoc(function) or "", korean))(function)


# The commands in the order `easel --help` lists them.
_command(generate.imagine, "프롬프트로 이미지를 만들고 그리드와 함께 저장합니다.")
_command(generate.vary, "이미지에 저장된 설정으로 변형을 만듭니다 (Midjourney의 V 버튼).")
_command(generate.upscale, "업스케일러(또는 Lanczos)로 이미지를 키우고 디테일을 더합니다.")
app.add_typer(models.models_app, name="models")
_command(catalogue.vocabulary, "스타일, 샷, 조명 등 플래그에 쓸 수 있는 id 목록.")
app.add_typer(catalogue.lora_app, name="lora")
app.add_typer(presets.presets_app, name="presets")
_command(catalogue.pnginfo, "이미지에 저장된 생성 설정을 보여 줍니다 (A1111의 PNG Info).")
app.add_typer(discord.discord_app, name="discord")
app.add_typer(database.db_app, name="db")
app.add_typer(users.users_app, name="users")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(jobs.history_app, name="history")
app.add_typer(queue.queue_app, name="queue")
app.command(help=stats.HELP)(stats.stats)
app.command(help=retention.HELP)(retention.prune)
_command(doctor.doctor, doctor.DOCTOR_HELP_KO)
_command(running.chat, "여기서 봇과 대화합니다: /imagine, /u 2, /v 3, /remix, /history, /help.")
_command(running.run, "봇을 실행합니다: 토큰이 있으면 Discord와 Telegram, 없으면 콘솔 대화.")
_command(
    worker.worker,
    "GPU 워커를 실행합니다: EASEL_BROKER_URL(Redis)과 공유 데이터베이스(DATABASE_URL)를 통해 "
    "봇의 배치를 받아 실행합니다. Ctrl-C로 멈춥니다.",
)


def with_bare_hires(argv: list[str]) -> list[str]:
    """`--hires` without a number means the default factor (the README's `--hires [F]`);
    click options cannot take an optional value, so the bare flag is spelled out here."""
    result: list[str] = []
    for index, token in enumerate(argv):
        if token == "--":
            return result + argv[index:]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if token == "--hires" and not _is_number(following):
            token = f"--hires={DEFAULT_HIRES_SCALE:g}"
        result.append(token)
    return result


def _is_number(text: str | None) -> bool:
    if text is None:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def main() -> None:
    """Entry point: every known error is one readable line and a non-zero exit."""
    early = early_settings()
    configure_logging(early)
    export_hub_offline(early)
    sys.argv[1:] = with_bare_hires(sys.argv[1:])
    try:
        app()  # usage errors print their help and exit 2 through typer's standalone mode
    except EaselError as error:
        _print_error(str(error))
        sys.exit(1)
    except ValidationError as error:
        lines = settings_problems(error) if error.title == Settings.__name__ else [str(error)]
        for line in lines:  # one line per bad setting, by its variable
            _print_error(line)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("Interrupted.")
        sys.exit(130)
    except Exception as error:  # the last line of defence: no traceback for users
        if early.debug:
            raise
        _print_error(f"{type(error).__name__}: {error}")
        sys.exit(1)


def _print_error(message: str) -> None:
    err.print(Text.assemble(("error:", "red"), " ", message))
