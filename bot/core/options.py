"""The one /imagine option parser for every front end.

A Telegram message, a console line and `easel imagine` give one line of text with
Midjourney-style flags (`a castle --ar 16:9 --style watercolor --no fog, people`); Discord
gives typed fields. Both end in the same validated `ImagineOptions`, and every mistake is one
`OptionsError` that says what was wrong and what is allowed, in English and in Korean.

Text is cleaned first (lone surrogates, control characters: `pipeline.text.clean_text`), every
step is linear in the length of the text, and no parser raises anything but OptionsError.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.buckets import XL_NATIVE, xl_bucket
from pipeline.control_names import MODES, NO_PREPROCESSOR, PREPROCESSORS
from pipeline.errors import InvalidRequestError, UnknownSamplerError
from pipeline.face_steps import ANY_RESTORER
from pipeline.presets import Presets
from pipeline.prompts.composable import split_and
from pipeline.prompts.extra_networks import MAX_LORA_WEIGHT, MIN_LORA_WEIGHT, lora_weight_in_range
from pipeline.prompts.plan import plan_prompt
from pipeline.prompts.syntax import PromptSyntaxError, WeightOutOfRange, parse_number, shorten
from pipeline.prompts.vocabulary import UnknownVocabularyId, Vocabulary
from pipeline.request import (
    CODEFORMER_WEIGHT,
    ControlMode,
    ControlUse,
    GenerationRequest,
    HiresFix,
    ImageRef,
    LoraUse,
)
from pipeline.sampler_names import resolve_sampler_name as resolve_sampler
from pipeline.text import clean_text
from pipeline.validation import MAX_SEED, Limits, batch_seeds

ASPECT_STEP = 64
# Words that make `--face` mean face restoration (a restorer's family, or "restore").
RESTORER_WORDS = ("restore", "gfpgan", "codeformer", "restoreformer")
DEFAULT_HIRES_SCALE = 2.0
# `--preset none`: no preset, whatever the user's or the chat's default is.
NO_PRESET_WORDS = frozenset({"none", "-", "off", "default", "clear"})
DEFAULT_IMG2IMG_STRENGTH = 0.75
_MAX_SIZE_DIGITS = 6  # int() of a long digit string is slow, and refused past 4,300 digits
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
# Sides of at most six digits (and six decimals): 16:9, 2.35:1, 3840:2160.
_RATIO = re.compile(r"^\s*(\d{1,6}(?:\.\d{1,6})?)\s*:\s*(\d{1,6}(?:\.\d{1,6})?)\s*$")
_FLAG = re.compile(r"(?:^|(?<=\s))(--|—|–)(\w[\w-]*)")


class OptionsError(InvalidRequestError):
    """A bad /imagine option; `en` and `ko` are the same message in each language."""

    ko: str

    def __init__(self, en: str, ko: str) -> None:
        super().__init__(en, ko)


@dataclass(frozen=True)
class ImagineOptions:
    """What a user asked for, validated; `to_request` turns it into a GenerationRequest."""

    prompt: str
    negative: str = ""
    avoid: tuple[str, ...] = ()  # --no a, b: added to the negative prompt
    aspect_ratio: tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    seed: int = -1
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "Euler a"
    style: str | None = None
    shot: str | None = None
    lighting: str | None = None
    quality: str | None = None
    face: str | None = None
    composition: str | None = None
    count: int = 4
    tile: bool = False
    loras: tuple[LoraUse, ...] = ()
    preset: str | None = None
    hires: float | None = None
    clip_skip: int = 1
    init_image: ImageRef | None = None  # img2img: a chat attachment, a photo, a stored image
    strength: float | None = None  # img2img denoising strength; None: the default
    # ControlNet: --cn NAME[:WEIGHT] (a preprocessor, or a model for a ready-made map)
    control: tuple[str, float] | None = None
    control_image: ImageRef | None = None
    control_start: float = 0.0
    control_end: float = 1.0
    control_mode: ControlMode = ControlMode.BALANCED
    control_show: bool = False
    # A1111's "Restore faces": a restorer (file, or gfpgan, codeformer, restoreformer, or
    # "restore" for the first there is) and CodeFormer's weight.
    restore_faces: tuple[str, float] | None = None

    def composed_prompt(self, vocabulary: Vocabulary) -> str:
        """The user's words first, then style, shot, lighting and quality fragments."""
        return vocabulary.compose(
            self.prompt,
            style=self.style,
            shot=self.shot,
            lighting=self.lighting,
            quality=self.quality,
            face=self.face,
            composition=self.composition,
        )

    def negative_prompt(self) -> str:
        return ", ".join(part for part in (self.negative, *self.avoid) if part)

    def to_request(
        self, vocabulary: Vocabulary, native_size: int, presets: Presets | None = None
    ) -> GenerationRequest:
        prompt, negative, loras = (
            self.composed_prompt(vocabulary),
            self.negative_prompt(),
            self.loras,
        )
        if self.preset is not None:
            preset = (presets or Presets()).usable(self.preset)
            prompt, negative = preset.apply(prompt, negative)
            loras = (*preset.loras, *loras)
        size = self.size
        if self.aspect_ratio is not None:
            size = size_for_ratio(self.aspect_ratio, native_size)
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative,
            width=size[0] if size else None,
            height=size[1] if size else None,
            steps=self.steps,
            cfg_scale=self.cfg,
            sampler=self.sampler,
            seeds=batch_seeds(self.seed, self.count),
            tiling=self.tile,
            clip_skip=self.clip_skip,
            hires=HiresFix(scale=self.hires) if self.hires is not None else None,
            loras=loras,
            init_image=self.init_image,
            denoising_strength=(
                self.strength if self.strength is not None else DEFAULT_IMG2IMG_STRENGTH
            ),
            control=self._control_use(),
            face_restoration=self.restore_faces[0] if self.restore_faces else None,
            codeformer_weight=self.restore_faces[1] if self.restore_faces else CODEFORMER_WEIGHT,
        )

    def _control_use(self) -> ControlUse | None:
        if self.control is None or self.control_image is None:
            return None
        name, weight = self.control
        is_preprocessor = name.lower() in PREPROCESSORS or name.lower() == NO_PREPROCESSOR
        return ControlUse(
            image=self.control_image,
            model="" if is_preprocessor else name,
            preprocessor=name.lower() if is_preprocessor else NO_PREPROCESSOR,
            weight=weight,
            guidance_start=self.control_start,
            guidance_end=self.control_end,
            mode=self.control_mode,
            show=self.control_show,
        )


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Flag:
    field: str
    parse: Callable[[str, _Context], object]
    takes_value: bool = True
    aliases: tuple[str, ...] = ()


@dataclass
class _Context:
    vocabulary: Vocabulary
    limits: Limits


def parse_options(
    text: str, vocabulary: Vocabulary, limits: Limits | None = None
) -> ImagineOptions:
    """Parse one line: the prompt, then `--flag value` pairs (values may be quoted)."""
    return options_from_fields(text, vocabulary, limits)


def options_from_fields(
    prompt: str,
    vocabulary: Vocabulary,
    limits: Limits | None = None,
    defaults: Mapping[str, str] | None = None,
    turned_off: tuple[str, ...] = (),
    **typed: object,
) -> ImagineOptions:
    """Typed fields (a Discord slash command) keyed by flag name (`ar`, `style`, `steps`;
    dashes as underscores), on top of any flags written in the prompt. A field given both
    ways takes the typed value, except `no`, which adds up.

    `turned_off` names switches and optional values (`tile`, `hires`, `style`) that a typed
    field turned off: they are off even when the prompt writes them, as a typed value wins.

    `defaults` (a user's saved settings, by flag name) fill the fields given neither way; one
    that no longer parses (an operator removed that style) is skipped, never an error."""
    context = _Context(vocabulary, limits or Limits())
    init_image = typed.pop("init_image", None)
    control_image = typed.pop("control_image", None)
    # A remix's: its job's control image, used only while the edited line keeps its --cn.
    kept_control_image = typed.pop("kept_control_image", None)
    for given in (init_image, control_image, kept_control_image):
        if given is not None and not isinstance(given, ImageRef):
            raise TypeError("init_image and the control images are ImageRefs")
    text, flags = _split_flags(clean_text(prompt))
    for key, value in typed.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and item is not False:
                raw = "" if item is True else clean_text(str(item))
                flags.append((clean_text(key).replace("_", "-"), raw, True))
    flags = [_face_restoration_alias(flag) for flag in flags]
    values: dict[str, object] = {}
    repeated: dict[str, list[object]] = {}
    written: set[str] = set()
    for name, raw, is_typed in flags:
        flag = _lookup_flag(name)
        if not flag.takes_value and raw:
            shown = shorten(raw)
            raise OptionsError(
                f"--{name} takes no value, but got {shown!r}. Put the prompt before the flags.",
                f"--{name} 뒤에는 값을 쓰지 않습니다({shown!r}). 프롬프트는 플래그 앞에 쓰세요.",
            )
        if flag.field in written and flag.field not in _REPEATABLE and not is_typed:
            raise OptionsError(f"--{name} is given twice.", f"--{name} 옵션이 두 번 들어갔습니다.")
        written.add(flag.field)
        parsed = flag.parse(raw, context)
        if flag.field in _REPEATABLE:
            repeated.setdefault(flag.field, []).extend(parsed)  # type: ignore[call-overload]
        else:
            values[flag.field] = parsed
    values.update({field: tuple(items) for field, items in repeated.items()})
    for name in turned_off:
        _turn_off(values, _lookup_flag(clean_text(name).replace("_", "-")))
    cleaned = {clean_text(name): clean_text(raw) for name, raw in (defaults or {}).items()}
    _apply_defaults(values, cleaned, context)
    if init_image is not None:
        values["init_image"] = init_image
    if control_image is not None:
        values["control_image"] = control_image
    if kept_control_image is not None and values.get("control") is not None:
        values.setdefault("control_image", kept_control_image)
    _place_control_image(values)
    return _finish(text, values, context)


def _place_control_image(values: dict[str, object]) -> None:
    """With --cn, the image sent with the line is the control image (unless one was given
    apart, as Discord's control_image option): the job is text-to-image with a control."""
    has_control = values.get("control") is not None
    if has_control and "control_image" not in values and "init_image" in values:
        values["control_image"] = values.pop("init_image")
        if values.get("strength") is not None:
            raise OptionsError(
                "With --cn the image you send is the control image, so --strength has no "
                "picture to start from. For img2img with a ControlNet, give the control image "
                "apart: Discord's control_image option, or --cn-image FILE in easel imagine.",
                "--cn을 쓰면 보낸 이미지는 컨트롤 이미지가 되므로 --strength로 시작할 그림이 "
                "없습니다. ControlNet과 img2img를 함께 쓰려면 컨트롤 이미지를 따로 주세요: "
                "Discord의 control_image 옵션, easel imagine의 --cn-image 파일.",
            )
    control_flags = ("control_start", "control_end", "control_mode", "control_show")
    if not has_control and ("control_image" in values or any(f in values for f in control_flags)):
        raise OptionsError(
            "The ControlNet options need --cn NAME (a preprocessor such as canny, or a "
            "ControlNet model).",
            "ControlNet 옵션에는 --cn 이름(canny 같은 전처리기나 ControlNet 모델)이 필요합니다.",
        )
    if has_control and "control_image" not in values:
        raise OptionsError(
            "--cn needs a control image: attach one to the message or reply to one (in the "
            "console: --init FILE; easel imagine: --cn-image FILE).",
            "--cn에는 컨트롤 이미지가 필요합니다. 메시지에 이미지를 첨부하거나 이미지에 "
            "답장하세요(콘솔: --init 파일, easel imagine: --cn-image 파일).",
        )
    start = values.get("control_start", ImagineOptions.control_start)
    end = values.get("control_end", ImagineOptions.control_end)
    if not start < end:  # type: ignore[operator]
        raise OptionsError(
            f"--cn-start ({start:g}) must be below --cn-end ({end:g}).",
            f"--cn-start({start:g})는 --cn-end({end:g})보다 작아야 합니다.",
        )


def _face_restoration_alias(flag: tuple[str, str, bool]) -> tuple[str, str, bool]:
    """`--face` takes the origin notes' face words (`--face cute-eyes`) and, bare or with a
    restorer (`--face`, `--face codeformer:0.7`), A1111's "Restore faces"."""
    name, raw, typed = flag
    if name == "face" and is_restorer_word(raw):
        return "restore-faces", raw, typed
    return flag


def is_restorer_word(raw: str) -> bool:
    word = raw.strip().lower()
    return not word or word.startswith(RESTORER_WORDS)


def _turn_off(values: dict[str, object], flag: _Flag) -> None:
    """Off is the field's default, and that default is None or False: a field such as the
    step count has no off."""
    default = ImagineOptions.__dataclass_fields__[flag.field].default
    if default is not None and default is not False:
        raise TypeError(f"{flag.field} cannot be turned off")
    values[flag.field] = default


def _apply_defaults(
    values: dict[str, object], defaults: Mapping[str, str], context: _Context
) -> None:
    for name, raw in defaults.items():
        flag = _BY_NAME.get(name)
        sized = flag is not None and flag.field == "aspect_ratio" and "size" in values
        if flag is None or flag.field in values or sized or not raw:
            continue
        try:
            values[flag.field] = flag.parse(raw, context)
        except OptionsError:
            continue


def _split_flags(text: str) -> tuple[str, list[tuple[str, str, bool]]]:
    """The prompt before the first flag, and (name, value, typed=False) for each flag.

    `--name` is always a flag (an unknown name is an error later); the em and en dash forms
    that phones type count only for known flag names, so `a knight —in the rain` stays text.
    A dash inside quotes belongs to the quoted value.
    """
    quoted = _quoted_spans(text)
    starts = [start for start, _ in quoted]
    matches = [
        match
        for match in _FLAG.finditer(text)
        if not _inside(match.start(), quoted, starts)
        and (match.group(1) == "--" or match.group(2).lower() in _BY_NAME)
    ]
    if not matches:
        return text.strip(), []
    prompt = text[: matches[0].start()].strip()
    flags = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        flags.append((match.group(2).lower(), _unquote(text[match.end() : end].strip()), False))
    return prompt, flags


def _quoted_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in re.finditer(r'"[^"]*"|“[^”]*”', text):
        spans.append((match.start(), match.end()))
    return spans


def _inside(position: int, spans: list[tuple[int, int]], starts: list[int]) -> bool:
    """Whether `position` is strictly inside one of `spans` (sorted, not overlapping)."""
    index = bisect.bisect_left(starts, position) - 1
    return index >= 0 and spans[index][0] < position < spans[index][1]


def _unquote(value: str) -> str:
    for quote in ('"', "'", "“", "‘"):
        closing = {"“": "”", "‘": "’"}.get(quote, quote)
        if len(value) >= 2 and value.startswith(quote) and value.endswith(closing):
            return value[1:-1].strip()
    return value


def _finish(prompt: str, values: dict[str, object], context: _Context) -> ImagineOptions:
    """Check what needs several values at once, and fit the defaults to the limits."""
    if not prompt.strip():
        raise OptionsError(
            "The prompt is empty: write what to draw before the flags, e.g. "
            "`a castle on a hill --ar 16:9`.",
            "프롬프트가 비어 있습니다. 플래그 앞에 그릴 내용을 쓰세요. "
            "예: `a castle on a hill --ar 16:9`",
        )
    if values.get("size") is not None and values.get("aspect_ratio") is not None:
        raise OptionsError("Give --ar or --size, not both.", "--ar과 --size 중 하나만 쓰세요.")
    if values.get("strength") is not None and "init_image" not in values:
        raise OptionsError(
            "--strength is for img2img: give an image with the prompt (attach or reply to "
            "one; in the console, --init FILE).",
            "--strength는 img2img용입니다. 프롬프트와 함께 이미지를 주세요"
            "(첨부하거나 이미지에 답장; 콘솔에서는 --init 파일).",
        )
    schedule = values.pop("schedule", None)
    if schedule is not None:
        sampler = str(values.get("sampler", ImagineOptions.sampler))
        try:
            values["sampler"] = resolve_sampler(sampler, str(schedule)).name
        except (UnknownSamplerError, InvalidRequestError) as error:
            raise OptionsError(
                f"{error}",
                f"{sampler} 샘플러에는 {schedule} 스케줄을 쓸 수 없습니다: {error.message('ko')}",
            ) from None
    limits = context.limits
    values.setdefault("count", min(ImagineOptions.count, limits.max_images))
    values.setdefault("steps", min(ImagineOptions.steps, limits.max_steps))
    values.setdefault("cfg", min(max(ImagineOptions.cfg, limits.min_cfg), limits.max_cfg))
    options = ImagineOptions(prompt=prompt, **values)  # type: ignore[arg-type]
    _check_hires_steps(options)
    _check_prompt(options, limits)
    return options


def _check_hires_steps(options: ImagineOptions) -> None:
    """A hires pass runs `steps x strength` steps; with none left the job could not run."""
    strength = HiresFix().denoising_strength
    if options.hires is not None and int(options.steps * strength) < 1:
        least = math.ceil(1 / strength)
        raise OptionsError(
            f"--hires needs at least {least} steps (its second pass runs "
            f"{strength:g} of them), not {options.steps}.",
            f"--hires는 {least}단계 이상이 필요합니다(두 번째 단계가 그중 {strength:g}만큼 "
            f"실행됩니다). 입력: {options.steps}",
        )


def _check_prompt(options: ImagineOptions, limits: Limits) -> None:
    """The prompt language's own rules: AND parts, LoRA tags, emphasis weights."""
    _check_and_parts(len(split_and(options.prompt)), limits)
    try:
        plan = plan_prompt(options.prompt, options.negative_prompt(), options.steps)
    except WeightOutOfRange as error:
        raise _weight_error(error) from None
    except PromptSyntaxError as error:
        raise OptionsError(
            str(error), f"프롬프트의 LoRA 태그를 읽을 수 없습니다: {error.message('ko')}"
        ) from None
    _check_and_parts(len(plan.parts), limits)


def _check_and_parts(parts: int, limits: Limits) -> None:
    if parts > limits.max_and_parts:
        raise OptionsError(
            f"The prompt has {parts} parts joined by AND; at most {limits.max_and_parts} "
            "are allowed.",
            f"프롬프트가 AND로 나뉜 부분이 {parts}개입니다. 최대 {limits.max_and_parts}개까지 "
            "쓸 수 있습니다.",
        )


def _weight_error(error: WeightOutOfRange) -> OptionsError:
    low, high, weight = f"{error.low:g}", f"{error.high:g}", f"{error.weight:g}"
    if error.kind == "lora":
        return _lora_weight_error(error.where, error.weight)
    return OptionsError(
        f"The emphasis on {error.where!r} comes to {weight}; emphasis weights (nested brackets "
        f"multiply) must be from {low} to {high}.",
        f"'{error.where}'의 강조 가중치가 {weight}입니다. 강조 가중치(겹친 괄호는 서로 "
        f"곱해집니다)는 {low}에서 {high} 사이여야 합니다.",
    )


def _lora_weight_error(where: str, weight: float) -> OptionsError:
    low, high = f"{MIN_LORA_WEIGHT:g}", f"{MAX_LORA_WEIGHT:g}"
    return OptionsError(
        f"LoRA weights must be from {low} to {high}: {where} has {weight:g}.",
        f"LoRA 가중치는 {low}에서 {high} 사이여야 합니다: {where}의 가중치는 {weight:g}입니다.",
    )


# --------------------------------------------------------------------------- values


def _integer(name: str, low: int, high: int) -> Callable[[str, _Context], int]:
    def parse(raw: str, _: _Context) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise OptionsError(
                f"--{name} must be a whole number from {low} to {high}, not {shorten(raw)!r}.",
                f"--{name} 값은 {low}에서 {high} 사이의 정수여야 합니다({shorten(raw)!r}).",
            )
        return value

    return parse


def _limited_integer(
    name: str, low: int, limit: Callable[[Limits], int]
) -> Callable[[str, _Context], int]:
    def parse(raw: str, context: _Context) -> int:
        return _integer(name, low, limit(context.limits))(raw, context)

    return parse


def _cfg(raw: str, context: _Context) -> float:
    low, high = context.limits.min_cfg, context.limits.max_cfg
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise OptionsError(
            f"--cfg must be a number from {low:g} to {high:g}, not {shorten(raw)!r}.",
            f"--cfg 값은 {low:g}에서 {high:g} 사이의 숫자여야 합니다({shorten(raw)!r}).",
        )
    return value


def _sampler(raw: str, _: _Context) -> str:
    try:
        return resolve_sampler(raw).name
    except UnknownSamplerError as error:
        raise OptionsError(
            str(error), f"알 수 없는 샘플러입니다: {shorten(raw)!r}. {_korean_hint(error)}"
        ) from None


def _schedule(raw: str, _: _Context) -> str:
    """A1111's separate schedule field: "Karras" (or "Automatic", the sampler's own)."""
    try:
        resolve_sampler("Euler", raw)
    except (UnknownSamplerError, InvalidRequestError):
        raise OptionsError(
            f"--schedule takes Karras or Automatic, not {shorten(raw)!r}.",
            f"--schedule 값은 Karras 또는 Automatic이어야 합니다({shorten(raw)!r}).",
        ) from None
    return raw


def _korean_hint(error: UnknownSamplerError) -> str:
    text = str(error)
    suggestion = re.search(r"Did you mean '([^']+)'", text)
    valid = text.split("Valid samplers: ", 1)[-1].rstrip(".")
    hint = f"'{suggestion.group(1)}'을(를) 찾으셨나요? " if suggestion else ""
    return f"{hint}쓸 수 있는 샘플러: {valid}."


def _vocabulary(category: str, flag: str) -> Callable[[str, _Context], str]:
    def parse(raw: str, context: _Context) -> str:
        try:
            return context.vocabulary.get(category, raw).id
        except UnknownVocabularyId as error:
            allowed = ", ".join(context.vocabulary.ids(category))
            hint_en = f" Did you mean {error.suggestion!r}?" if error.suggestion else ""
            hint_ko = f" '{error.suggestion}'을(를) 찾으셨나요?" if error.suggestion else ""
            shown = shorten(raw)
            elsewhere = _flag_with_id(raw, context.vocabulary)
            if elsewhere is not None:
                hint_en = f" {shown!r} is a --{elsewhere} value: use --{elsewhere} {shown}."
                hint_ko = f" {shown!r}은(는) --{elsewhere} 값입니다: --{elsewhere} {shown}"
            raise OptionsError(
                f"Unknown --{flag} {shown!r}.{hint_en} Allowed: {allowed}.",
                f"알 수 없는 --{flag} 값입니다: {shown!r}.{hint_ko} 쓸 수 있는 값: {allowed}.",
            ) from None

    return parse


# Each vocabulary category and the flag that takes its ids.
CATEGORY_FLAGS = {
    "style": "style",
    "shot": "shot",
    "lighting": "light",
    "quality": "quality",
    "face": "face",
    "composition": "composition",
}


def _flag_with_id(raw: str, vocabulary: Vocabulary) -> str | None:
    """The flag whose category has this id (`kawaii-cute-girl` -> face), if any."""
    for category, flag in CATEGORY_FLAGS.items():
        if vocabulary.find(category, raw) is not None:
            return flag
    return None


def _avoid(raw: str, _: _Context) -> tuple[str, ...]:
    words = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not words:
        raise OptionsError(
            "--no needs the things to leave out, e.g. `--no fog, people`.",
            "--no 뒤에 빼고 싶은 것을 쓰세요. 예: `--no fog, people`",
        )
    return words


def _text(name: str) -> Callable[[str, _Context], str]:
    def parse(raw: str, _: _Context) -> str:
        if not raw:
            raise OptionsError(f"--{name} needs a value.", f"--{name} 뒤에 값을 쓰세요.")
        return raw

    return parse


def _preset(raw: str, context: _Context) -> str | None:
    """A preset's name; `none` (or `off`, `-`) is no preset, also where the user or the chat
    has a default one."""
    name = _text("preset")(raw, context)
    return None if name.strip().lower() in NO_PRESET_WORDS else name


def _flag_on(raw: str, _: _Context) -> bool:
    return True


def _ratio(raw: str, _: _Context) -> tuple[float, float]:
    try:
        return parse_ratio(raw)
    except InvalidRequestError:
        raise OptionsError(
            f"--ar must be W:H between 1:8 and 8:1, e.g. 16:9, not {shorten(raw)!r}.",
            f"--ar 값은 1:8에서 8:1 사이의 W:H 형식이어야 합니다. 예: 16:9 ({shorten(raw)!r}).",
        ) from None


def _size(raw: str, context: _Context) -> tuple[int, int]:
    try:
        width, height = parse_size(raw)
    except InvalidRequestError:
        width = height = 0
    side = int(math.sqrt(context.limits.max_area))
    if min(width, height) < 1 or width * height > context.limits.max_area:
        raise OptionsError(
            f"--size must be WIDTHxHEIGHT of at most {context.limits.max_area:,} pixels in all "
            f"(e.g. {side}x{side}), not {shorten(raw)!r}.",
            f"--size 값은 너비x높이 형식이며 전체 {context.limits.max_area:,} 픽셀 이하여야 "
            f"합니다(예: {side}x{side}). 입력: {shorten(raw)!r}",
        )
    return width, height


def _loras(raw: str, _: _Context) -> tuple[LoraUse, ...]:
    name, colon, weight_text = raw.partition(":")
    name = name.strip()
    weight = parse_number(weight_text) if colon else 1.0
    if not name or any(char.isspace() for char in name) or weight is None:
        shown = shorten(raw)
        raise OptionsError(
            f"--lora must be NAME or NAME:WEIGHT, e.g. pixel-art:0.8, not {shown!r}.",
            f"--lora 값은 이름 또는 이름:가중치 형식이어야 합니다. 예: pixel-art:0.8 ({shown!r}).",
        )
    if not lora_weight_in_range(weight):
        raise _lora_weight_error(f"--lora {shorten(name)}", weight)
    return (LoraUse(name, weight, weight),)


def _strength(raw: str, _: _Context) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise OptionsError(
            f"--strength takes a number above 0 and at most 1 (how much of the image is "
            f"redrawn), e.g. 0.6, not {raw!r}.",
            f"--strength 값은 0보다 크고 1 이하인 수여야 합니다(이미지를 다시 그리는 정도). "
            f"예: 0.6 ({raw!r}).",
        )
    return value


def _control(raw: str, _: _Context) -> tuple[str, float]:
    name, colon, weight_text = raw.partition(":")
    name = name.strip()
    weight = parse_number(weight_text) if colon else 1.0
    shown = shorten(raw)
    if not name or any(char.isspace() for char in name) or weight is None:
        raise OptionsError(
            f"--cn must be NAME or NAME:WEIGHT, e.g. canny or canny:0.8, not {shown!r}.",
            f"--cn 값은 이름 또는 이름:가중치 형식이어야 합니다. 예: canny, canny:0.8 ({shown!r}).",
        )
    if not 0.0 <= weight <= 2.0:
        raise OptionsError(
            f"The ControlNet weight must be from 0 to 2, not {weight:g}.",
            f"ControlNet 가중치는 0에서 2 사이여야 합니다. 입력: {weight:g}",
        )
    return name, weight


def _share(name: str) -> Callable[[str, _Context], float]:
    def parse(raw: str, _: _Context) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise OptionsError(
                f"--{name} takes a share of the steps from 0 to 1, e.g. 0.2, not {shorten(raw)!r}.",
                f"--{name} 값은 0에서 1 사이의 단계 비율이어야 합니다. 예: 0.2 ({shorten(raw)!r}).",
            )
        return value

    return parse


def _control_mode(raw: str, _: _Context) -> ControlMode:
    mode = MODES.get(raw.strip().lower())
    if mode is None:
        raise OptionsError(
            f"--cn-mode takes balanced, prompt or control, not {shorten(raw)!r}.",
            f"--cn-mode 값은 balanced, prompt, control 중 하나여야 합니다({shorten(raw)!r}).",
        )
    return mode


def parse_restore_faces(raw: str) -> tuple[str, float]:
    """A restore-faces choice (`gfpgan`, `codeformer:0.7`, "" for the first restorer) as a
    restorer and CodeFormer's weight; OptionsError when it is not one."""
    return _restore_faces(raw, None)  # type: ignore[arg-type]  # the parser reads no context


def _restore_faces(raw: str, _: _Context) -> tuple[str, float]:
    name, colon, weight_text = raw.partition(":")
    name = name.strip() or ANY_RESTORER
    weight = parse_number(weight_text) if colon else CODEFORMER_WEIGHT
    if any(char.isspace() for char in name) or weight is None or not 0.0 <= weight <= 1.0:
        shown = shorten(raw)
        raise OptionsError(
            "--restore-faces takes a face restorer and CodeFormer's weight (0 to 1), e.g. "
            f"gfpgan or codeformer:0.7, not {shown!r}.",
            "--restore-faces 값은 얼굴 복원 모델과 CodeFormer 가중치(0~1)입니다. 예: gfpgan, "
            f"codeformer:0.7 ({shown!r}).",
        )
    return name, weight


def _hires(raw: str, _: _Context) -> float:
    if not raw:
        return DEFAULT_HIRES_SCALE
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 1.0 < value <= 4.0):
        raise OptionsError(
            f"--hires takes an upscale factor above 1 and at most 4, e.g. 2, not {shorten(raw)!r}.",
            f"--hires 값은 1보다 크고 4 이하인 배율이어야 합니다. 예: 2 ({shorten(raw)!r}).",
        )
    return value


_FLAGS: tuple[_Flag, ...] = (
    _Flag("aspect_ratio", _ratio, aliases=("ar", "aspect")),
    _Flag("size", _size, aliases=("size",)),
    _Flag("seed", _integer("seed", -1, MAX_SEED), aliases=("seed",)),
    _Flag("avoid", _avoid, aliases=("no",)),
    _Flag("negative", _text("neg"), aliases=("neg", "negative")),
    _Flag(
        "steps", _limited_integer("steps", 1, lambda limits: limits.max_steps), aliases=("steps",)
    ),
    _Flag("cfg", _cfg, aliases=("cfg",)),
    _Flag("sampler", _sampler, aliases=("sampler",)),
    _Flag("schedule", _schedule, aliases=("schedule",)),
    _Flag("style", _vocabulary("style", "style"), aliases=("style",)),
    _Flag("shot", _vocabulary("shot", "shot"), aliases=("shot",)),
    _Flag("lighting", _vocabulary("lighting", "light"), aliases=("light", "lighting")),
    _Flag("quality", _vocabulary("quality", "quality"), aliases=("quality",)),
    _Flag("face", _vocabulary("face", "face"), aliases=("face",)),
    _Flag(
        "composition",
        _vocabulary("composition", "composition"),
        aliases=("composition", "comp"),
    ),
    _Flag("count", _limited_integer("n", 1, lambda limits: limits.max_images), aliases=("n",)),
    _Flag("tile", _flag_on, takes_value=False, aliases=("tile",)),
    _Flag("loras", _loras, aliases=("lora",)),
    _Flag("hires", _hires, aliases=("hires",)),
    _Flag("preset", _preset, aliases=("preset",)),
    _Flag("strength", _strength, aliases=("strength",)),
    _Flag("control", _control, aliases=("cn", "controlnet")),
    _Flag("control_start", _share("cn-start"), aliases=("cn-start",)),
    _Flag("control_end", _share("cn-end"), aliases=("cn-end",)),
    _Flag("control_mode", _control_mode, aliases=("cn-mode",)),
    _Flag("control_show", _flag_on, takes_value=False, aliases=("cn-show",)),
    _Flag("restore_faces", _restore_faces, aliases=("restore-faces",)),
    _Flag(
        "clip_skip",
        _limited_integer("clip-skip", 1, lambda limits: limits.max_clip_skip),
        aliases=("clip-skip",),
    ),
)
_REPEATABLE = ("avoid", "loras")
_BY_NAME: Mapping[str, _Flag] = {alias: flag for flag in _FLAGS for alias in flag.aliases}


def _lookup_flag(name: str) -> _Flag:
    flag = _BY_NAME.get(name.lower())
    if flag is None:
        import difflib

        close = difflib.get_close_matches(name.lower(), list(_BY_NAME), n=1)
        hint_en = f" Did you mean --{close[0]}?" if close else ""
        hint_ko = f" --{close[0]}을(를) 찾으셨나요?" if close else ""
        allowed = ", ".join(f"--{alias}" for alias in _BY_NAME)
        raise OptionsError(
            f"Unknown flag --{shorten(name)}.{hint_en} Flags: {allowed}.",
            f"알 수 없는 플래그입니다: --{shorten(name)}.{hint_ko} 쓸 수 있는 플래그: {allowed}.",
        )
    return flag


# --------------------------------------------------------------------------- sizes


def parse_size(text: str) -> tuple[int, int]:
    match = _SIZE.match(text)
    if match is None or max(len(match.group(1)), len(match.group(2))) > _MAX_SIZE_DIGITS:
        shown = shorten(text)
        raise InvalidRequestError(
            f"Size {shown!r} is not WIDTHxHEIGHT, for example 768x512.",
            ko=f"크기 {shown!r}이(가) 너비x높이 형식이 아닙니다. 예: 768x512",
        )
    return int(match.group(1)), int(match.group(2))


def parse_ratio(text: str) -> tuple[float, float]:
    match = _RATIO.match(text)
    if match is None:
        raise InvalidRequestError(
            f"Aspect ratio {text!r} is not W:H, for example 16:9.",
            ko=f"화면비 {text!r}이(가) W:H 형식이 아닙니다. 예: 16:9",
        )
    width, height = float(match.group(1)), float(match.group(2))
    if width <= 0 or height <= 0 or not 1 / 8 <= width / height <= 8:
        raise InvalidRequestError(
            f"Aspect ratio {text.strip()} is out of range (1:8 to 8:1).",
            ko=f"화면비 {text.strip()}이(가) 허용 범위(1:8~8:1)를 벗어났습니다.",
        )
    return width, height


def size_for_ratio(ratio: tuple[float, float], native_size: int) -> tuple[int, int]:
    """A size of about the model's native area with this aspect ratio, in multiples of 64; on
    a model trained at 1024² (SDXL), the trained size nearest the ratio."""
    # Clamped to the range parse_ratio allows, so that no pair of sides can overflow.
    proportion = min(max(ratio[0] / ratio[1], 1 / 8), 8.0)
    if native_size == XL_NATIVE:
        return xl_bucket((proportion, 1.0))
    area = native_size * native_size
    width = (area * proportion) ** 0.5
    height = area / width
    return (
        max(ASPECT_STEP, round(width / ASPECT_STEP) * ASPECT_STEP),
        max(ASPECT_STEP, round(height / ASPECT_STEP) * ASPECT_STEP),
    )
