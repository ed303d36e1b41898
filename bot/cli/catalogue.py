"""`easel vocabulary`, `lora list` and `pnginfo`: what is here, what an image holds."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bot.cli.common import HELP_STYLE, err, out
from bot.cli.output import JsonOption, human_bytes, print_json
from bot.cli.texts import bilingual
from bot.core.options import CATEGORY_FLAGS
from bot.settings import Settings
from pipeline.errors import InvalidRequestError

if TYPE_CHECKING:
    from pipeline.lora_names import LoraFile


def _folder_line(kind: str, folders: list[Path], count: int) -> str:
    if not folders:
        return f"{kind}: no folder"
    return f"{kind}: {count} in {', '.join(str(folder) for folder in folders)}"


def vocabulary(
    category: Annotated[
        str | None,
        typer.Argument(
            help=bilingual(
                "One of the six categories: quality, face, style, shot, composition, "
                "lighting; or the flag's name (light, comp). Default: all six.",
                "여섯 분류 중 하나: quality, face, style, shot, composition, lighting "
                "(또는 플래그 이름 light, comp). 기본: 여섯 모두.",
            )
        ),
    ] = None,
    korean: Annotated[
        bool, typer.Option("--ko", help=bilingual("Korean labels.", "한국어 이름."))
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The ids --quality, --face, --style, --shot, --composition (--comp) and --light
    (--lighting) take, with their labels and prompts."""
    from pipeline.prompts.vocabulary import CATEGORIES, CATEGORY_LABELS, VocabularyStore

    if category is not None:
        category = VOCABULARY_ALIASES.get(category.strip().lower(), category.strip().lower())
    settings = Settings()
    store = VocabularyStore(settings.models_dir)
    words = store.current()
    if store.last_error:
        err.print(f"{store.override_path} was not applied: {store.last_error}", style="yellow")
    if category is not None and category not in CATEGORIES:
        raise InvalidRequestError(
            f"Unknown category {category!r}; use one of {', '.join(CATEGORIES)} (or light, comp)."
        )
    chosen = [category] if category else list(CATEGORIES)
    if as_json:
        print_json(
            {
                name: [
                    {"id": entry.id, "en": entry.en, "ko": entry.ko, "prompt": entry.prompt}
                    for entry in words.entries(name)
                ]
                for name in chosen
            }
        )
        return
    locale = "ko" if korean else "en"
    for name in chosen:
        table = Table(title=CATEGORY_LABELS[name].text(locale))
        table.add_column("Id", no_wrap=True, overflow="ignore")  # what people type: never cut
        table.add_column("Label")
        table.add_column("Prompt")
        for entry in words.entries(name):
            table.add_row(entry.id, entry.label(locale), entry.prompt)
        out.print(table)


# `easel vocabulary light`: the prompt flags' names for their categories.
VOCABULARY_ALIASES = {
    **{flag: category for category, flag in CATEGORY_FLAGS.items()},
    "comp": "composition",
}


lora_app = typer.Typer(
    help=bilingual("LoRA files and presets.", "LoRA 파일과 프리셋."),
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
)


@lora_app.command(
    "list",
    help=bilingual(
        "The LoRA files in the models folder and the presets in models/presets.toml.",
        "models 폴더의 LoRA 파일과 models/presets.toml의 프리셋.",
    ),
)
def lora_list(
    korean: Annotated[
        bool, typer.Option("--ko", help=bilingual("Korean descriptions.", "한국어 설명."))
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The LoRA files in the models folder and the presets in models/presets.toml."""
    from pipeline.folders import ModelFolders
    from pipeline.lora_names import find_loras, lora_hash
    from pipeline.presets import load_presets

    settings = Settings()
    files = find_loras(settings.models_dir)
    lora_folder = (ModelFolders(settings.models_dir).loras or [settings.models_dir / "lora"])[0]
    if as_json:
        print_json(_lora_document(settings.models_dir, files))
        return
    table = Table(title=f"LoRA files in {settings.models_dir}")
    for column in ("Name", "Size", "Hash", "File"):
        table.add_column(column)
    for file in files:
        table.add_row(
            file.name, human_bytes(file.path.stat().st_size), lora_hash(file.path), str(file.path)
        )
    out.print(table if files else "No LoRA files (put .safetensors files in models/lora).")
    presets = load_presets(settings.models_dir)
    known = {file.name.lower() for file in files}
    table = Table(title="Presets")
    for column in ("Id", "Description", "LoRAs", "Trigger words"):
        table.add_column(column)
    for preset in presets.presets:
        loras = ", ".join(
            f"{use.name}:{use.unet_weight:g}" + ("" if use.name.lower() in known else " (missing)")
            for use in preset.loras
        )
        table.add_row(
            preset.id, preset.description("ko" if korean else "en"), loras, preset.trigger
        )
    out.print(table if presets.presets else "No presets (models/presets.toml).")
    for preset in presets.presets:
        for use in preset.missing_loras(settings.models_dir):
            source = preset.source_of(use.name)
            where = f"download it yourself from {source}" if source else "no source given"
            out.print(
                f"Missing for preset {preset.id}: {use.name}.safetensors in {lora_folder}; {where}."
            )


def _lora_document(models_dir: Path, files: list[LoraFile]) -> dict[str, object]:
    from pipeline.lora_names import lora_hash
    from pipeline.presets import load_presets

    presets = load_presets(models_dir)
    return {
        "loras": [
            {
                "name": file.name,
                "path": str(file.path),
                "bytes": file.path.stat().st_size,
                "hash": lora_hash(file.path),
            }
            for file in files
        ],
        "presets": [
            {
                "id": preset.id,
                "description": {"en": preset.description("en"), "ko": preset.description("ko")},
                "loras": [{"name": use.name, "weight": use.unet_weight} for use in preset.loras],
                "trigger": preset.trigger,
                "missing": [use.name for use in preset.missing_loras(models_dir)],
            }
            for preset in presets.presets
        ],
    }


def pnginfo(
    image: Annotated[
        Path,
        typer.Argument(help=bilingual("A PNG, JPEG or WebP image.", "PNG, JPEG 또는 WebP 이미지.")),
    ],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help=bilingual("Print one JSON object.", "JSON 객체 하나로 출력합니다.")
        ),
    ] = False,
) -> None:
    """Show the generation parameters stored in an image (A1111's PNG Info)."""
    from pipeline.images import format_infotext, read_infotext

    if not image.is_file():
        raise InvalidRequestError(f"{image} does not exist.")
    info = read_infotext(image)
    if info is None:
        err.print(f"{image}: no generation data.")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(asdict(info), ensure_ascii=False))
    else:
        out.print(format_infotext(info))
