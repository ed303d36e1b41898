"""`easel imagine`, `vary` and `upscale`: generate, show progress, save and report."""

from __future__ import annotations

import json
import os
import sys
import threading
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bot.cli.common import _load_engine, err, out
from bot.cli.output import ModelOption, OutOption, ReportOption
from bot.cli.texts import bilingual
from bot.core.options import DEFAULT_HIRES_SCALE, options_from_fields
from bot.settings import Settings
from pipeline.errors import InvalidRequestError
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
    from pipeline.engine import Engine, PreparedJob


def imagine(
    prompt: Annotated[
        str,
        typer.Argument(
            help=bilingual(
                "What to draw; may hold the chat flags, e.g. `--ar 16:9`.",
                "그릴 내용. 채팅 플래그를 함께 쓸 수 있습니다 (예: `--ar 16:9`).",
            )
        ),
    ],
    negative: Annotated[
        str | None,
        typer.Option(
            "--negative", "--neg", help=bilingual("Negative prompt.", "네거티브 프롬프트.")
        ),
    ] = None,
    no: Annotated[
        str | None,
        typer.Option(
            "--no", help=bilingual("Things to avoid: `fog, people`.", "피할 것: `fog, people`.")
        ),
    ] = None,
    n: Annotated[
        int | None,
        typer.Option(
            "--n", help=bilingual("Number of images, 1-4 (default 4).", "이미지 수, 1-4 (기본 4).")
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help=bilingual(
                "Seed of the first image; -1 is random.", "첫 이미지의 시드. -1은 무작위."
            )
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help=bilingual("Sampling steps (default 20).", "샘플링 스텝 수 (기본 20).")),
    ] = None,
    cfg: Annotated[
        float | None, typer.Option(help=bilingual("CFG scale (default 7).", "CFG 스케일 (기본 7)."))
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(help=bilingual('e.g. "DPM++ 2M Karras".', '예: "DPM++ 2M Karras".')),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule",
            help=bilingual('Schedule type, e.g. "Karras".', '스케줄 종류, 예: "Karras".'),
        ),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(help=bilingual("WIDTHxHEIGHT, e.g. 768x512.", "가로x세로, 예: 768x512.")),
    ] = None,
    ar: Annotated[
        str | None,
        typer.Option(
            "--ar",
            "--aspect",
            help=bilingual("Aspect ratio W:H, e.g. 16:9.", "가로:세로 비율, 예: 16:9."),
        ),
    ] = None,
    style: Annotated[
        str | None,
        typer.Option(help=bilingual("Style id, e.g. watercolor.", "스타일 id, 예: watercolor.")),
    ] = None,
    shot: Annotated[
        str | None,
        typer.Option(help=bilingual("Shot id, e.g. close-up-shot.", "샷 id, 예: close-up-shot.")),
    ] = None,
    light: Annotated[
        str | None,
        typer.Option(
            "--light",
            "--lighting",
            help=bilingual(
                "Lighting id, e.g. golden-hour-lighting.", "조명 id, 예: golden-hour-lighting."
            ),
        ),
    ] = None,
    quality: Annotated[
        str | None,
        typer.Option(help=bilingual("Quality id, e.g. masterpiece.", "품질 id, 예: masterpiece.")),
    ] = None,
    face: Annotated[
        str | None,
        typer.Option(
            help=bilingual(
                "Face id, e.g. cute-eyes; or a face restorer (gfpgan, codeformer:0.7).",
                "얼굴 id, 예: cute-eyes. 또는 얼굴 복원 모델(gfpgan, codeformer:0.7).",
            )
        ),
    ] = None,
    composition: Annotated[
        str | None,
        typer.Option(
            "--composition",
            "--comp",
            help=bilingual("Composition id, e.g. portrait.", "구도 id, 예: portrait."),
        ),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            metavar="NAME[:WEIGHT]",
            help=bilingual(
                "A LoRA file by name; repeatable.",
                "이름으로 고른 LoRA 파일. 여러 번 쓸 수 있습니다.",
            ),
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help=bilingual("A preset from models/presets.toml.", "models/presets.toml의 프리셋.")
        ),
    ] = None,
    hires: Annotated[
        float | None,
        typer.Option(
            metavar="[F]",
            help=bilingual(
                f"Hires fix: upscale factor F (bare: {DEFAULT_HIRES_SCALE:g}).",
                f"하이레스 픽스: 확대 배율 F (값 없이: {DEFAULT_HIRES_SCALE:g}).",
            ),
        ),
    ] = None,
    tile: Annotated[
        bool,
        typer.Option(
            "--tile", help=bilingual("Seamless tiling texture.", "이음새 없는 타일 텍스처.")
        ),
    ] = False,
    clip_skip: Annotated[
        int | None,
        typer.Option(
            "--clip-skip", help=bilingual("CLIP layers to skip.", "건너뛸 CLIP 레이어 수.")
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option("--init", help=bilingual("Init image for img2img.", "img2img의 시작 이미지.")),
    ] = None,
    strength: Annotated[
        float,
        typer.Option(help=bilingual("Denoising strength for img2img.", "img2img 디노이즈 강도.")),
    ] = 0.75,
    restore_faces: Annotated[
        str | None,
        typer.Option(
            "--restore-faces",
            help=bilingual(
                "Restore faces: restore (the first), gfpgan, codeformer[:WEIGHT], a file.",
                "얼굴 복원: restore(첫 모델), gfpgan, codeformer[:가중치], 파일 이름.",
            ),
        ),
    ] = None,
    cn: Annotated[
        str | None,
        typer.Option(
            "--cn",
            help=bilingual(
                "ControlNet: a preprocessor (canny) or a model, NAME[:WEIGHT].",
                "ControlNet: 전처리기(canny) 또는 모델, 이름[:가중치].",
            ),
        ),
    ] = None,
    cn_image: Annotated[
        Path | None,
        typer.Option(
            "--cn-image",
            help=bilingual("The image the ControlNet follows.", "ControlNet이 따를 이미지."),
        ),
    ] = None,
    cn_start: Annotated[
        float | None,
        typer.Option(
            "--cn-start",
            help=bilingual("ControlNet from this share of the steps.", "ControlNet 시작 비율."),
        ),
    ] = None,
    cn_end: Annotated[
        float | None,
        typer.Option(
            "--cn-end",
            help=bilingual("ControlNet until this share of the steps.", "ControlNet 끝 비율."),
        ),
    ] = None,
    cn_mode: Annotated[
        str | None,
        typer.Option(
            "--cn-mode",
            help=bilingual("balanced, prompt or control.", "balanced, prompt, control 중 하나."),
        ),
    ] = None,
    cn_show: Annotated[
        bool,
        typer.Option(
            "--cn-show",
            help=bilingual("Save the control map too.", "컨트롤 맵도 저장합니다."),
        ),
    ] = False,
    model: ModelOption = None,
    out_dir: OutOption = None,
    as_json: ReportOption = False,
) -> None:
    """Generate images from a prompt and save them with a grid.

    The options are the chat bots' flags; they can also be written inside the prompt.
    """
    from pipeline.preparation import check_before_load
    from pipeline.presets import load_presets
    from pipeline.prompts.vocabulary import VocabularyStore

    settings = Settings()
    if init is not None and not init.is_file():
        raise InvalidRequestError(f"Init image {init} does not exist.")
    if cn_image is not None and not cn_image.is_file():
        raise InvalidRequestError(f"Control image {cn_image} does not exist.")
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
        restore_faces=restore_faces,
        cn=cn,
        cn_start=cn_start,
        cn_end=cn_end,
        cn_mode=cn_mode,
        cn_show=cn_show,
        control_image=ImageRef(path=str(cn_image)) if cn_image is not None else None,
    )
    if schedule:
        options = replace(options, sampler=sampler_name(options.sampler, schedule))
    presets = load_presets(settings.models_dir)
    early = options.to_request(vocabulary, 512, presets)  # an unknown preset fails now
    check_before_load(early, settings.models_dir, settings.limits())  # ControlNet, faces
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


def vary(
    image: Annotated[
        Path,
        typer.Argument(
            help=bilingual("A PNG that Easel or A1111 made.", "Easel이나 A1111이 만든 PNG.")
        ),
    ],
    strong: Annotated[
        bool,
        typer.Option(
            "--strong/--subtle",
            help=bilingual(
                "Strong (img2img) or subtle (default).", "강하게 (img2img) 또는 미묘하게 (기본)."
            ),
        ),
    ] = False,
    n: Annotated[
        int, typer.Option("--n", help=bilingual("Number of variations, 1-4.", "변형 수, 1-4."))
    ] = 4,
    strength: Annotated[
        float | None,
        typer.Option(
            help=bilingual(
                "Variation strength (subtle, default 0.25) or denoising (strong, 0.65).",
                "변형 강도 (미묘: 기본 0.25) 또는 디노이즈 (강함: 0.65).",
            )
        ),
    ] = None,
    model: ModelOption = None,
    out_dir: OutOption = None,
    as_json: ReportOption = False,
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


def upscale(
    image: Annotated[
        Path, typer.Argument(help=bilingual("The image to enlarge.", "확대할 이미지."))
    ],
    scale: Annotated[int, typer.Option(help=bilingual("2 or 4.", "2 또는 4."))] = 2,
    upscaler: Annotated[
        str | None,
        typer.Option(
            "--upscaler",
            help=bilingual(
                "Upscaler name in models/upscale; none: Lanczos.",
                "models/upscale의 업스케일러 이름. none: Lanczos.",
            ),
        ),
    ] = None,
    detail: Annotated[
        float,
        typer.Option(
            help=bilingual(
                "img2img detail pass strength after upscaling (0 to skip).",
                "업스케일 뒤 img2img 디테일 패스 강도 (0이면 건너뜀).",
            )
        ),
    ] = DETAIL_STRENGTH,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "--checkpoint",
            help=bilingual("Checkpoint for the detail pass.", "디테일 패스에 쓸 체크포인트."),
        ),
    ] = None,
    out_dir: OutOption = None,
    as_json: ReportOption = False,
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
    if saved.control_map is not None:
        out.print(f"{saved.control_map}  control map")
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
        "control_map": str(saved.control_map) if saved.control_map else None,
        "seeds": list(result.seeds),
        "variation_seeds": list(result.request.variation_seeds),
        "parameters": request,
        "model": {"name": result.model_name, "hash": result.model_hash},
        "timings": asdict(result.timings),
        "notes": list(notes),
    }
