"""The `easel` command line: generate images and inspect models."""

from __future__ import annotations

import logging
import sys

import typer
from pydantic import ValidationError
from rich.text import Text

from bot.cli import catalogue, database, discord, generate, running
from bot.cli.common import HELP_STYLE, _device_line, early_settings, err, export_hub_offline
from bot.core.options import DEFAULT_HIRES_SCALE
from bot.logs import configure_logging
from bot.settings import Settings, settings_problems
from pipeline.errors import EaselError

__all__ = ["_device_line", "app", "early_settings", "export_hub_offline", "main", "with_bare_hires"]


app = typer.Typer(
    help="Easel: Stable Diffusion on your own GPU and checkpoints.",
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = logging.getLogger("easel")

# The commands in the order `easel --help` lists them.
app.command()(generate.imagine)
app.command()(generate.vary)
app.command()(generate.upscale)
app.command()(catalogue.models)
app.command()(catalogue.vocabulary)
app.add_typer(catalogue.lora_app, name="lora")
app.command()(catalogue.pnginfo)
app.add_typer(discord.discord_app, name="discord")
app.add_typer(database.db_app, name="db")
app.command()(running.chat)
app.command()(running.run)


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
