"""The `easel` command line: generate images and inspect models."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bot.core.options import CATEGORY_FLAGS, DEFAULT_HIRES_SCALE, options_from_fields
from bot.settings import EarlySettings, Settings, settings_problems
from pipeline.errors import EaselError, InvalidRequestError, ModelLoadError
from pipeline.request import (
    DETAIL_STRENGTH,
    GenerationRequest,
    GenerationResult,
    ImageRef,
    ProgressEvent,
    ResultStatus,
)
from pipeline.sampler_names import sampler_name
from pipeline.validation import check_ranges

if TYPE_CHECKING:  # the engine imports torch and diffusers: slow for `easel --help`
    from bot.outputs import SavedResult
    from bot.runtime import Bot
    from pipeline.device import DeviceChoice
    from pipeline.engine import Engine, PreparedJob
    from pipeline.loading import HashCache, LoadedModel, ModelSource

# Plain click help: flags show as `--tile`, options as `--n <int>`, not `--tile <bool>`.
HELP_STYLE = None

app = typer.Typer(
    help="Easel: Stable Diffusion on your own GPU and checkpoints.",
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Markup is off: prompts, paths and model names are printed as they are, brackets included.
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
out = Console(soft_wrap=True, markup=False, highlight=False)
log = logging.getLogger("easel")


def early_settings() -> EarlySettings:
    """EASEL_LOG_LEVEL, EASEL_DEBUG and HF_HUB_OFFLINE from the environment and `.env`; a bad
    value leaves the defaults here and is refused when the full settings are read."""
    try:
        return EarlySettings()
    except ValidationError:
        return EarlySettings.model_construct()


def _log_level() -> int:
    """EASEL_LOG_LEVEL (DEBUG, INFO, ...; WARNING by default); EASEL_DEBUG means DEBUG."""
    return early_settings().logging_level()


def export_hub_offline(settings: EarlySettings) -> None:
    """HF_HUB_OFFLINE from `.env` into the process environment, where huggingface_hub reads it
    (once, when it is imported: this runs before that)."""
    if settings.hf_hub_offline and "HF_HUB_OFFLINE" not in os.environ:
        os.environ["HF_HUB_OFFLINE"] = "1"


def _quiet_libraries() -> None:
    """The libraries' loading bars and warnings, unless a debug or info log level asks."""
    from pipeline.quiet import quiet_libraries

    quiet_libraries(verbose=_log_level() <= logging.INFO)


def _load_engine(
    settings: Settings, model: str | None, quiet: bool, locale: str | None = None
) -> Engine:
    from bot.core.messages import Key, Message
    from bot.serve import console_locale
    from pipeline.device import choose_device
    from pipeline.engine import Engine
    from pipeline.loading import HashCache, SourceKind

    language = locale or console_locale(None)
    source = _model_source(settings, model)
    device = choose_device(settings.device, settings.dtype)
    err.print(_device_line(device, language))
    hashes = HashCache(settings.cache_dir / "hashes.json")
    # A hub download draws its own progress bars, which a spinner would garble.
    spinner = not quiet and source.kind is not SourceKind.HUB
    loading = Message(Key.STARTUP_LOADING, {"model": source.name}).render(language)
    status = err.status(loading) if spinner else nullcontext()
    with status:
        loaded = _load_or_explain(
            settings, source, device, hashes, chosen=bool(model or settings.model)
        )
    about = {"model": source.name, "family": loaded.family.label, "size": loaded.native_size}
    err.print(Message(Key.STARTUP_MODEL, about).render(language))
    return Engine(
        loaded,
        settings.limits(),
        exact_batches=settings.exact_batches,
        models_dir=settings.models_dir,
    )


def _model_source(settings: Settings, model: str | None) -> ModelSource:
    """The checkpoint to load; with none named and several here, a list to pick from."""
    from pipeline.loading import SeveralLocalModelsError, resolve_model

    try:
        return resolve_model(model or settings.model, settings.models_dir)
    except SeveralLocalModelsError as error:
        raise ModelLoadError(
            f"{len(error.names)} checkpoints in {error.models_dir} and no EASEL_MODEL: pick one "
            f"with --model NAME or EASEL_MODEL=NAME. Checkpoints: {', '.join(error.names)}."
        ) from error


def _load_or_explain(
    settings: Settings,
    source: ModelSource,
    device: DeviceChoice,
    hashes: HashCache,
    chosen: bool,
) -> LoadedModel:
    """Load the model; offline without a local one, say where a checkpoint goes."""
    from pipeline.loading import HubUnavailableError, load_model

    try:
        return load_model(source, device, settings.cache_dir, hashes)
    except HubUnavailableError as error:
        if chosen:
            raise
        folder = settings.models_dir / "stable-diffusion"
        raise ModelLoadError(
            f"No checkpoint in {folder}, and the default model {error.repo_id} is not "
            f"downloaded and cannot be: {error.reason}. Put a .safetensors checkpoint in "
            f"{folder}, or set EASEL_MODEL (or --model) to a checkpoint file, folder or "
            "Hugging Face repo id."
        ) from error


@app.command()
def imagine(
    prompt: Annotated[
        str, typer.Argument(help="What to draw; may hold the chat flags, e.g. `--ar 16:9`.")
    ],
    negative: Annotated[
        str | None, typer.Option("--negative", "--neg", help="Negative prompt.")
    ] = None,
    no: Annotated[str | None, typer.Option("--no", help="Things to avoid: `fog, people`.")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Number of images, 1-4 (default 4).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the first image; -1 is random.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default 20).")] = None,
    cfg: Annotated[float | None, typer.Option(help="CFG scale (default 7).")] = None,
    sampler: Annotated[str | None, typer.Option(help='e.g. "DPM++ 2M Karras".')] = None,
    schedule: Annotated[
        str | None, typer.Option("--schedule", help='Schedule type, e.g. "Karras".')
    ] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT, e.g. 768x512.")] = None,
    ar: Annotated[
        str | None, typer.Option("--ar", "--aspect", help="Aspect ratio W:H, e.g. 16:9.")
    ] = None,
    style: Annotated[str | None, typer.Option(help="Style id, e.g. watercolor.")] = None,
    shot: Annotated[str | None, typer.Option(help="Shot id, e.g. close-up-shot.")] = None,
    light: Annotated[
        str | None,
        typer.Option("--light", "--lighting", help="Lighting id, e.g. golden-hour-lighting."),
    ] = None,
    quality: Annotated[str | None, typer.Option(help="Quality id, e.g. masterpiece.")] = None,
    face: Annotated[str | None, typer.Option(help="Face id, e.g. cute-eyes.")] = None,
    composition: Annotated[
        str | None,
        typer.Option("--composition", "--comp", help="Composition id, e.g. portrait."),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option("--lora", metavar="NAME[:WEIGHT]", help="A LoRA file by name; repeatable."),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="A preset from models/presets.toml.")] = None,
    hires: Annotated[
        float | None,
        typer.Option(
            metavar="[F]", help=f"Hires fix: upscale factor F (bare: {DEFAULT_HIRES_SCALE:g})."
        ),
    ] = None,
    tile: Annotated[bool, typer.Option("--tile", help="Seamless tiling texture.")] = False,
    clip_skip: Annotated[
        int | None, typer.Option("--clip-skip", help="CLIP layers to skip.")
    ] = None,
    init: Annotated[Path | None, typer.Option("--init", help="Init image for img2img.")] = None,
    strength: Annotated[float, typer.Option(help="Denoising strength for img2img.")] = 0.75,
    model: Annotated[str | None, typer.Option(help="Model name, path or repo id.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Generate images from a prompt and save them with a grid.

    The options are the chat bots' flags; they can also be written inside the prompt.
    """
    from pipeline.presets import load_presets
    from pipeline.prompts.vocabulary import VocabularyStore

    settings = Settings()
    _quiet_libraries()
    if init is not None and not init.is_file():
        raise InvalidRequestError(f"Init image {init} does not exist.")
    vocabulary = VocabularyStore(settings.models_dir).current()
    # Everything that needs no model is checked before the (slow) model load.
    options = options_from_fields(
        prompt,
        vocabulary,
        settings.limits(),
        neg=negative,
        no=no,
        n=n,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler=sampler,
        size=size,
        ar=ar,
        style=style,
        shot=shot,
        light=light,
        quality=quality,
        face=face,
        composition=composition,
        tile=tile,
        clip_skip=clip_skip,
        lora=lora,
        preset=preset,
        hires=hires,
    )
    if schedule:
        options = replace(options, sampler=sampler_name(options.sampler, schedule))
    presets = load_presets(settings.models_dir)
    options.to_request(vocabulary, 512, presets)  # an unknown preset fails before the load
    engine = _load_engine(settings, model, quiet=as_json)
    request = options.to_request(vocabulary, engine.model.native_size, presets)
    if init is not None:
        request = replace(request, init_image=ImageRef(path=str(init)), denoising_strength=strength)
    _generate_and_save(engine, request, out_dir or settings.outputs_dir, as_json)


def _generate_and_save(
    engine: Engine, request: GenerationRequest, out_dir: Path, as_json: bool
) -> None:
    job = engine.prepare(request)
    for note in job.notes:
        err.print(note, style="yellow")
    result = _generate_with_progress(engine, job, show=not as_json)
    if result.status is ResultStatus.CANCELLED:
        _say_cancelled()
    from bot.outputs import save_result

    saved = save_result(result, out_dir)
    if as_json:
        print(json.dumps(_json_report(result, saved, job.notes), ensure_ascii=False))
    else:
        _print_report(result, saved)


@app.command()
def vary(
    image: Annotated[Path, typer.Argument(help="A PNG that Easel or A1111 made.")],
    strong: Annotated[
        bool, typer.Option("--strong/--subtle", help="Strong (img2img) or subtle (default).")
    ] = False,
    n: Annotated[int, typer.Option("--n", help="Number of variations, 1-4.")] = 4,
    strength: Annotated[
        float | None,
        typer.Option(help="Variation strength (subtle, default 0.25) or denoising (strong, 0.65)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name, path or repo id.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Variations of an image, from the parameters stored in it (Midjourney's V buttons)."""
    from pipeline.images import open_rgb, read_infotext
    from pipeline.variations import (
        STRONG_DENOISING,
        SUBTLE_STRENGTH,
        request_from_infotext,
        strong_variation,
        subtle_variation,
    )

    settings = Settings()
    _quiet_libraries()
    if not image.is_file():
        raise InvalidRequestError(f"{image} does not exist.")
    info = read_infotext(image)
    if info is None:
        raise InvalidRequestError(f"{image} holds no generation data to vary.")
    original = request_from_infotext(info)
    # 0 is a strength like any other (a subtle variation at 0 is the image itself).
    if strong:  # img2img from the pixels; a subtle variation needs only the parameters
        picture = open_rgb(image, settings.max_input_pixels, image.name)
        amount = STRONG_DENOISING if strength is None else strength
        request = strong_variation(original, picture, n, amount)
    else:
        amount = SUBTLE_STRENGTH if strength is None else strength
        request = subtle_variation(original, 0, n, amount)
    check_ranges(request, settings.limits())
    err.print(_variation_line(image, request, strong, amount))
    engine = _load_engine(settings, model or _local_model_named(info.model, settings), as_json)
    _generate_and_save(engine, request, out_dir or settings.outputs_dir, as_json)


@app.command()
def upscale(
    image: Annotated[Path, typer.Argument(help="The image to enlarge.")],
    scale: Annotated[int, typer.Option(help="2 or 4.")] = 2,
    upscaler: Annotated[
        str | None,
        typer.Option("--upscaler", help="Upscaler name in models/upscale; none: Lanczos."),
    ] = None,
    detail: Annotated[
        float,
        typer.Option(help="img2img detail pass strength after upscaling (0 to skip)."),
    ] = DETAIL_STRENGTH,
    model: Annotated[
        str | None,
        typer.Option("--model", "--checkpoint", help="Checkpoint for the detail pass."),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Enlarge an image with an upscaler model (or Lanczos), then add detail (Midjourney's U,
    the same rule as the chat's U buttons).

    The detail pass needs the image's generation parameters and a result within the size
    limit; otherwise it is skipped and said so.
    """
    from pipeline.device import choose_device
    from pipeline.images import open_rgb, output_path, read_infotext, save_png
    from pipeline.upscale import load_upscaler, upscale_image, validate_scale
    from pipeline.upscale_detail import plan_detail, upscaled_parameters

    settings = Settings()
    _quiet_libraries()
    validate_scale(scale)
    if not image.is_file():
        raise InvalidRequestError(f"{image} does not exist.")
    info = read_infotext(image)
    picture = open_rgb(image, settings.max_input_pixels, image.name)
    device = choose_device(settings.device, settings.dtype)
    loaded = load_upscaler(upscaler, settings.models_dir, device.device, device.dtype)
    with err.status(f"Upscaling x{scale}…") if not as_json else nullcontext():
        enlarged, used = upscale_image(picture, scale, loaded, settings.max_output_pixels)
    plan = plan_detail(info, enlarged, detail, settings.max_area)
    if plan.skipped:
        err.print(plan.skipped, style="yellow")
    parameters = info
    if plan.request is not None:
        wanted = model or _local_model_named(info.model if info else None, settings)
        engine = _load_engine(settings, wanted, quiet=as_json)
        result = _generate_with_progress(engine, engine.prepare(plan.request), show=not as_json)
        if result.status is ResultStatus.CANCELLED:
            _say_cancelled()
        enlarged, parameters = result.images[0].image, result.images[0].infotext
    infotext = upscaled_parameters(parameters, enlarged.size, used, scale)
    stem = f"upscaled-x{scale}-{image.stem}"
    path = save_png(enlarged, output_path(out_dir or settings.outputs_dir, stem), infotext)
    width, height = enlarged.size
    if as_json:
        report = {
            "path": str(path),
            "width": width,
            "height": height,
            "upscaler": used,
            "scale": scale,
            "detail": detail if plan.request is not None else None,
            "notes": [plan.skipped] if plan.skipped else [],
        }
        print(json.dumps(report, ensure_ascii=False))
    else:
        out.print(f"{path}  {width}x{height}  {used}")


def _variation_line(image: Path, request: GenerationRequest, strong: bool, amount: float) -> str:
    count = request.image_count
    images = f"{count} image{'s' if count != 1 else ''}"
    if strong:
        return f"Strong variation of {image} (denoising {amount:g}): {images}."
    return f"Subtle variation of {image} (seed {request.seeds[0]}, strength {amount:g}): {images}."


def _local_model_named(name: str | None, settings: Settings) -> str | None:
    """The image's own model when it is here; otherwise the configured default."""
    from pipeline.loading import find_local_models

    if name and any(source.name == name for source in find_local_models(settings.models_dir)):
        return name
    return None


CANCEL_GRACE_S = 120.0  # how long a cancelled job may take to reach the end of its step


def _generate_with_progress(engine: Engine, job: PreparedJob, show: bool) -> GenerationResult:
    """Run the job on a worker thread so Ctrl-C cancels it cleanly within a step.

    The main thread waits on an Event, never on Thread.join: before Python 3.13 a join that
    Ctrl-C interrupts marks a still running thread as finished, and the interpreter then exits
    under the running job (`terminate called without an active exception`).
    """
    cancel = threading.Event()
    done = threading.Event()
    outcome: list[GenerationResult | BaseException] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, disable=not show, transient=False) as progress:
        task = progress.add_task("Sampling", total=job.request.steps)

        def on_progress(event: ProgressEvent) -> None:
            progress.update(task, completed=event.step, total=event.total)

        def work() -> None:
            try:
                outcome.append(engine.run(job, on_progress=on_progress, cancel=cancel))
            except BaseException as error:  # handed to the main thread
                outcome.append(error)
            finally:
                done.set()

        worker = threading.Thread(target=work, name="easel-generate", daemon=True)
        try:
            worker.start()  # Ctrl-C can come while start() waits for the thread to begin
            while not done.wait(0.1):
                pass
        except KeyboardInterrupt:
            cancel.set()
            progress.stop()
            err.print("Cancelling: the current step finishes first…")
            _wait_after_cancel(done)
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _wait_after_cancel(done: threading.Event) -> None:
    """Wait for a cancelled job to stop; more Ctrl-C presses are not needed and are ignored."""
    waited = 0.0
    while waited < CANCEL_GRACE_S:
        try:
            if done.wait(0.1):
                return
        except KeyboardInterrupt:
            pass
        waited += 0.1
    # Leaving the interpreter under a running torch call aborts it; leave without that.
    err.print("Cancelled (the job did not stop in time).")
    sys.stderr.flush()
    os._exit(130)


def _say_cancelled() -> None:
    err.print("Cancelled: nothing was saved.")
    raise typer.Exit(130)


def _print_report(result: GenerationResult, saved: SavedResult) -> None:
    variation_seeds = result.request.variation_seeds
    for index, (path, item) in enumerate(zip(saved.images, result.images, strict=True)):
        if index < len(variation_seeds):
            out.print(f"{path}  variation seed {variation_seeds[index]} (seed {item.seed})")
        else:
            out.print(f"{path}  seed {item.seed}")
    if saved.grid is not None:
        out.print(f"{saved.grid}  grid")
    width, height = _output_size(result)
    err.print(f"{len(result.images)} image(s) at {width}x{height} in {result.timings.total_s:.1f}s")


def _output_size(result: GenerationResult) -> tuple[int, int]:
    """The saved images' size: after a hires fix, the upscaled size, not the base one."""
    if result.images:
        return result.images[0].image.size
    return result.request.width, result.request.height


def _json_report(
    result: GenerationResult, saved: SavedResult, notes: tuple[str, ...]
) -> dict[str, object]:
    request = json.loads(result.request.to_json())
    return {
        "images": [
            {"path": str(path), "seed": item.seed}
            for path, item in zip(saved.images, result.images, strict=True)
        ],
        "grid": str(saved.grid) if saved.grid else None,
        "seeds": list(result.seeds),
        "variation_seeds": list(result.request.variation_seeds),
        "parameters": request,
        "model": {"name": result.model_name, "hash": result.model_hash},
        "timings": asdict(result.timings),
        "notes": list(notes),
    }


@app.command()
def models() -> None:
    """List the checkpoints in the models folder: name, family, size and A1111 short hash."""
    from pipeline.folders import ModelFolders
    from pipeline.loading import HashCache, describe_local_models

    settings = Settings()
    folders = ModelFolders(settings.models_dir)
    if not folders.checkpoints:
        err.print(
            f"No checkpoint folder in {settings.models_dir} (expected stable-diffusion/ or "
            "an AUTOMATIC1111 models/ folder with Stable-diffusion/)."
        )
        raise typer.Exit(1)
    hashes = HashCache(settings.cache_dir / "hashes.json")
    infos = describe_local_models(settings.models_dir, hashes)
    if infos:
        table = Table(title=f"Models in {settings.models_dir}")
        for column in ("Name", "Family", "Size", "Hash", "Kind"):
            table.add_column(column)
        for info in infos:
            table.add_row(
                info.source.name,
                info.family,
                _human_size(info.size_bytes),
                info.short_hash or "-",
                info.source.kind.value,
            )
        out.print(table)
    else:
        names = ", ".join(str(folder) for folder in folders.checkpoints)
        err.print(f"No checkpoints in {names}.")
    out.print(_folder_line("LoRAs", folders.loras, len(folders.lora_files())))
    out.print(_folder_line("Upscalers", folders.upscalers, len(folders.upscaler_files())))


def _folder_line(kind: str, folders: list[Path], count: int) -> str:
    if not folders:
        return f"{kind}: no folder"
    return f"{kind}: {count} in {', '.join(str(folder) for folder in folders)}"


@app.command()
def vocabulary(
    category: Annotated[
        str | None,
        typer.Argument(
            help="One of the six categories: quality, face, style, shot, composition, lighting; "
            "or the flag's name (light, comp). Default: all six."
        ),
    ] = None,
    korean: Annotated[bool, typer.Option("--ko", help="Korean labels.")] = False,
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
    locale = "ko" if korean else "en"
    for name in [category] if category else CATEGORIES:
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
    help="LoRA files and presets.", no_args_is_help=True, rich_markup_mode=HELP_STYLE
)
app.add_typer(lora_app, name="lora")


@lora_app.command("list")
def lora_list(
    korean: Annotated[bool, typer.Option("--ko", help="Korean descriptions.")] = False,
) -> None:
    """The LoRA files in the models folder and the presets in models/presets.toml."""
    from pipeline.folders import ModelFolders
    from pipeline.lora_names import find_loras, lora_hash
    from pipeline.presets import load_presets

    settings = Settings()
    files = find_loras(settings.models_dir)
    lora_folder = (ModelFolders(settings.models_dir).loras or [settings.models_dir / "lora"])[0]
    table = Table(title=f"LoRA files in {settings.models_dir}")
    for column in ("Name", "Size", "Hash", "File"):
        table.add_column(column)
    for file in files:
        table.add_row(
            file.name, _human_size(file.path.stat().st_size), lora_hash(file.path), str(file.path)
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


@app.command()
def pnginfo(
    image: Annotated[Path, typer.Argument(help="A PNG, JPEG or WebP image.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
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


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{value:.1f} GiB"


discord_app = typer.Typer(
    help="Discord: the slash commands.", no_args_is_help=True, rich_markup_mode=HELP_STYLE
)
app.add_typer(discord_app, name="discord")


@discord_app.command("commands")
def discord_commands() -> None:
    """Print the slash commands that a sync sends, as JSON (no login); /imagine's bounds are
    the settings' limits."""
    import asyncio

    from bot.discord.sync import command_payload

    payload = asyncio.run(command_payload(Settings().limits()))
    print(json.dumps(payload, ensure_ascii=False, indent=2))


@discord_app.command("sync")
def discord_sync(
    guild: Annotated[
        int | None,
        typer.Option("--guild", help="A guild id: sync there only, shown at once."),
    ] = None,
) -> None:
    """Log in with DISCORD_TOKEN and sync the slash commands, globally or to one guild."""
    import asyncio

    from bot.discord.sync import sync_commands, sync_note

    settings = Settings()
    if settings.discord_token is None:
        raise InvalidRequestError("DISCORD_TOKEN is not set: put the bot's token in it.")
    out.print(sync_note(asyncio.run(sync_commands(settings, guild)), guild))


@discord_app.command("invite")
def discord_invite(
    client_id: Annotated[
        int | None,
        typer.Option(
            "--client-id", min=1, help="The application's id; default: from DISCORD_TOKEN."
        ),
    ] = None,
) -> None:
    """Print the links that add the bot to a server and to a user's account."""

    from bot.discord.invite import NOT_A_BOT_TOKEN, client_id_from_token, invite_links, invite_text

    if client_id is None:
        try:
            settings = Settings()
        except ValidationError as error:
            if any(problem["loc"] == ("DISCORD_TOKEN",) for problem in error.errors()):
                raise InvalidRequestError(NOT_A_BOT_TOKEN) from None
            raise
        if settings.discord_token is None:
            raise InvalidRequestError(
                "DISCORD_TOKEN is not set: put the bot's token in it, or give --client-id."
            )
        client_id = client_id_from_token(settings.discord_token.get_secret_value())
        if client_id is None:
            raise InvalidRequestError(NOT_A_BOT_TOKEN)
    print(invite_text(invite_links(client_id)))  # plain print: a wrapped URL would not work


db_app = typer.Typer(
    help="The database: migrations.", no_args_is_help=True, rich_markup_mode=HELP_STYLE
)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (the bot also does this at start)."""
    from bot.runtime import open_store

    store = open_store(Settings())
    out.print(f"{store.url}: at revision {store.current()}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's revision and the newest one."""
    from bot.store import Store

    url = Settings().database_url
    missing = _missing_sqlite_file(url)
    if missing is not None:
        out.print(
            f"No database yet ({missing} does not exist); `easel db upgrade` or starting the "
            "bot creates it."
        )
        return
    store = Store(url)
    current, head = store.current(), store.head()
    state = "up to date" if current == head else f"newest is {head}; run `easel db upgrade`"
    out.print(f"{store.url}: revision {current or 'none'} ({state})")


def _missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file a URL names when it does not exist yet (opening it would create it)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


@app.command()
def chat(
    lang: Annotated[str | None, typer.Option(help="en or ko; default: from LANG.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name, path or repo id.")] = None,
    previews: Annotated[
        Path | None,
        typer.Option(help="Save each job's live preview in this folder (job-N.jpg)."),
    ] = None,
) -> None:
    """Chat with the bot here: /imagine, /u 2, /v 3, /remix, /history, /help. Reads commands
    from stdin when it is not a terminal, and exits when input ends and its jobs are done."""
    import asyncio

    from bot.console.chat import previews_folder
    from bot.serve import console_locale, serve_console

    settings = Settings()
    if previews is not None:
        previews = previews_folder(previews)
    locale = console_locale(lang)
    bot = _open_bot(settings, model, locale)
    asyncio.run(serve_console(bot, settings, sys.stdin, sys.stdout, locale, previews))


@app.command()
def run(
    model: Annotated[str | None, typer.Option(help="Model name, path or repo id.")] = None,
    lang: Annotated[
        str | None, typer.Option(help="en or ko for the console and start-up lines.")
    ] = None,
) -> None:
    """Run the bot: Discord and/or Telegram when their tokens are set, else the console chat."""
    import asyncio

    from bot.core.messages import Key, Message
    from bot.serve import (
        console_locale,
        load_front_ends,
        serve_console,
        serve_front_ends,
        wanted_front_ends,
    )

    settings = Settings()
    front_ends = load_front_ends(wanted_front_ends(settings))
    for front_end in front_ends:  # a refused token stops here, before the model loads
        asyncio.run(front_end.check_token(settings))
    locale = console_locale(lang)
    if not front_ends:
        err.print(Message(Key.RUN_CONSOLE).render(locale))
    bot = _open_bot(settings, model, locale)
    if front_ends:
        asyncio.run(serve_front_ends(bot, settings, front_ends))
    else:
        asyncio.run(serve_console(bot, settings, sys.stdin, sys.stdout, locale))


def _open_bot(settings: Settings, model: str | None, locale: str | None = None) -> Bot:
    from bot.runtime import build_bot, open_store

    _quiet_libraries()
    store = open_store(settings, hold_bot_lock=True)
    engine = _load_engine(settings, model, quiet=False, locale=locale)
    return build_bot(settings, engine, store)


def _device_line(device: DeviceChoice, locale: str) -> str:
    """Where generation runs, in the user's language; the CPU is said to be slow."""
    from bot.core.messages import Key, Message

    dtype = str(device.dtype).removeprefix("torch.")
    if device.is_cpu:
        why = Key.STARTUP_CPU_CHOSEN if device.chosen_by_user else Key.STARTUP_NO_GPU
        return Message(Key.STARTUP_CPU, {"dtype": dtype, "why": Message(why)}).render(locale)
    name = str(device.device)
    if device.device.type == "cuda":
        import torch

        name = f"{device.device} ({torch.cuda.get_device_name(device.device)})"
    return Message(Key.STARTUP_DEVICE, {"device": name, "dtype": dtype}).render(locale)


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
    logging.basicConfig(level=early.logging_level(), format="%(levelname)s %(name)s: %(message)s")
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
