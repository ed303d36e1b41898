"""`easel models`: the checkpoints here, and which one a running bot uses (`models use`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer
from rich.table import Table

from bot.cli.catalogue import _folder_line
from bot.cli.common import HELP_STYLE, err, operator_name, operator_store, out
from bot.cli.output import JsonOption, human_bytes, print_json
from bot.cli.texts import bilingual
from bot.settings import Settings
from pipeline.errors import ModelLoadError

models_app = typer.Typer(
    help=bilingual(
        "The checkpoints in the models folder, and which one the bot uses.",
        "모델 폴더의 체크포인트와 봇이 쓰는 체크포인트.",
    ),
    invoke_without_command=True,
    rich_markup_mode=HELP_STYLE,
)


@dataclass(frozen=True)
class CheckpointRow:
    name: str
    family: str
    size_bytes: int
    short_hash: str | None
    kind: str
    location: str
    chosen: bool  # the one `easel models use` chose for the running bot


@dataclass(frozen=True)
class ModelsListing:
    models_dir: str
    checkpoints: tuple[CheckpointRow, ...]
    chosen: str | None  # None: the configured checkpoint (or no database to say)
    loras: int
    upscalers: int


def list_models(settings: Settings) -> ModelsListing:
    """The local checkpoints and the choice stored for the running bot, when there is a
    database to read it from."""
    from pipeline.folders import ModelFolders
    from pipeline.loading import HashCache, describe_local_models

    folders = ModelFolders(settings.models_dir)
    if not folders.checkpoints:
        err.print(
            f"No checkpoint folder in {settings.models_dir} (expected stable-diffusion/ or "
            "an AUTOMATIC1111 models/ folder with Stable-diffusion/)."
        )
        raise typer.Exit(1)
    chosen = _stored_choice(settings)
    infos = describe_local_models(
        settings.models_dir, HashCache(settings.cache_dir / "hashes.json")
    )
    rows = tuple(
        CheckpointRow(
            info.source.name,
            info.family,
            info.size_bytes,
            info.short_hash,
            info.source.kind.value,
            info.source.location,
            info.source.name == chosen,
        )
        for info in infos
    )
    return ModelsListing(
        str(settings.models_dir),
        rows,
        chosen,
        len(folders.lora_files()),
        len(folders.upscaler_files()),
    )


def _stored_choice(settings: Settings) -> str | None:
    from bot.store import StoreError

    try:
        store = operator_store(settings)
    except StoreError:
        return None  # no database yet (or an older one): nothing is chosen there
    try:
        return store.control_state().model
    finally:
        store.close()


@models_app.callback(
    help=bilingual(
        "The checkpoints in the models folder (alone: the list). `easel models use NAME` "
        "chooses the one a running bot uses.",
        "모델 폴더의 체크포인트(하위 명령 없이: 목록). `easel models use NAME`으로 실행 중인 "
        "봇이 쓸 체크포인트를 고릅니다.",
    )
)
def models(ctx: typer.Context, as_json: JsonOption = False) -> None:
    if ctx.invoked_subcommand is None:
        _print_listing(as_json)


@models_app.command(
    "list",
    help=bilingual(
        "List the checkpoints in the models folder: name, family, size, A1111 short hash, "
        "and the one chosen with `easel models use`.",
        "모델 폴더의 체크포인트 목록: 이름, 계열, 크기, A1111 짧은 해시, "
        "`easel models use`로 고른 체크포인트.",
    ),
)
def models_list(as_json: JsonOption = False) -> None:
    _print_listing(as_json)


def _print_listing(as_json: bool) -> None:
    settings = Settings()
    listing = list_models(settings)
    if as_json:
        print_json(listing)
        return
    if listing.checkpoints:
        table = Table(title=f"Models in {settings.models_dir}")
        for column in ("Name", "Family", "Size", "Hash", "Kind", "Chosen"):
            table.add_column(column)
        for row in listing.checkpoints:
            table.add_row(
                row.name,
                row.family,
                human_bytes(row.size_bytes),
                row.short_hash or "-",
                row.kind,
                "yes" if row.chosen else "",
            )
        out.print(table)
    else:
        err.print(f"No checkpoints in {settings.models_dir}.")
    if listing.chosen is None:
        out.print(
            bilingual(
                "Chosen for the bot: none (it uses the configured checkpoint).",
                "봇에 고른 체크포인트: 없음(설정된 체크포인트를 씁니다).",
            )
        )
    elif not any(row.chosen for row in listing.checkpoints):
        out.print(
            bilingual(
                f"Chosen for the bot: {listing.chosen}, which is not in the models folder.",
                f"봇에 고른 체크포인트: {listing.chosen}(모델 폴더에 없습니다).",
            )
        )
    from pipeline.folders import ModelFolders

    folders = ModelFolders(settings.models_dir)
    out.print(_folder_line("LoRAs", folders.loras, listing.loras))
    out.print(_folder_line("Upscalers", folders.upscalers, listing.upscalers))


@dataclass(frozen=True)
class ModelChoice:
    model: str | None  # None: back to the configured checkpoint
    changed_by: str


def choose_model(settings: Settings, name: str | None) -> ModelChoice:
    """Store the checkpoint a running bot uses for jobs queued from now on (None: the
    configured one); a name that is not a usable local checkpoint changes nothing."""
    from pipeline.loading import resolve_local_model

    model = resolve_local_model(name, settings.models_dir).name if name is not None else None
    store = operator_store(settings)
    try:
        who = operator_name()
        store.set_model(model, who)
    finally:
        store.close()
    return ModelChoice(model, who)


@models_app.command(
    "use",
    help=bilingual(
        "Choose the checkpoint a running bot uses: jobs queued from now on run on it (it is "
        "loaded between batches; jobs already queued keep theirs). Kept across restarts. "
        "--default goes back to the configured checkpoint (--model / EASEL_MODEL).",
        "실행 중인 봇이 쓸 체크포인트를 고릅니다. 이제부터 대기열에 들어오는 작업이 그 "
        "체크포인트로 실행됩니다(배치 사이에 불러오며, 이미 대기 중인 작업은 원래 체크포인트를 "
        "씁니다). 재시작해도 유지됩니다. --default는 설정된 체크포인트(--model / EASEL_MODEL)로 "
        "돌아갑니다.",
    ),
)
def models_use(
    name: Annotated[
        str | None,
        typer.Argument(
            help=bilingual(
                "A checkpoint's name, as `easel models` lists it.",
                "`easel models`에 나오는 체크포인트 이름.",
            )
        ),
    ] = None,
    default: Annotated[
        bool,
        typer.Option(
            "--default",
            help=bilingual(
                "Go back to the configured checkpoint.", "설정된 체크포인트로 돌아갑니다."
            ),
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    if (name is None) == (not default):
        raise typer.BadParameter(
            bilingual(
                "Give a checkpoint's name or --default (not both).",
                "체크포인트 이름이나 --default 중 하나만 주세요.",
            )
        )
    settings = Settings()
    try:
        choice = choose_model(settings, None if default else name)
    except ModelLoadError as error:
        err.print(bilingual(str(error), f"체크포인트를 바꾸지 않았습니다. {error}"))
        raise typer.Exit(1) from None
    if as_json:
        print_json(choice)
    elif choice.model is None:
        out.print(
            bilingual(
                "The bot goes back to its configured checkpoint for jobs queued from now on; "
                "jobs already queued keep theirs.",
                "이제부터 대기열에 들어오는 작업은 설정된 체크포인트로 돌아갑니다. 이미 대기 "
                "중인 작업은 원래 체크포인트를 씁니다.",
            )
        )
    else:
        out.print(
            bilingual(
                f"Jobs queued from now on run on {choice.model}; a running bot loads it "
                "before their first batch. Jobs already queued keep their checkpoint.",
                f"이제부터 대기열에 들어오는 작업은 {choice.model}(으)로 실행됩니다. 실행 중인 "
                "봇이 그 첫 배치 전에 불러옵니다. 이미 대기 중인 작업은 원래 체크포인트를 씁니다.",
            )
        )
