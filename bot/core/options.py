"""The one /imagine option parser for every front end.

A Telegram message, a console line and `easel imagine` give one line of text with
Midjourney-style flags (`a castle --ar 16:9 --style watercolor --no fog, people`); Discord
gives typed fields. Both end in the same validated `ImagineOptions`, and every mistake is one
`OptionsError` that says what was wrong and what is allowed, in English and in Korean.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.errors import InvalidRequestError, UnknownSamplerError
from pipeline.presets import Presets
from pipeline.prompts.vocabulary import UnknownVocabularyId, Vocabulary
from pipeline.request import GenerationRequest, HiresFix, LoraUse
from pipeline.sampler_names import resolve_sampler_name as resolve_sampler
from pipeline.validation import MAX_SEED, Limits, batch_seeds

ASPECT_STEP = 64
DEFAULT_HIRES_SCALE = 2.0
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")
_FLAG = re.compile(r"(?:^|(?<=\s))(--|—|–)(\w[\w-]*)")
_LORA = re.compile(r"^\s*([^:\s]+)\s*(?::\s*([-+]?\d*\.?\d+))?\s*$")


class OptionsError(InvalidRequestError):
    """A bad /imagine option; `en` and `ko` are the same message in each language."""

    def __init__(self, en: str, ko: str) -> None:
        super().__init__(en)
        self.en = en
        self.ko = ko

    def message(self, locale: str) -> str:
        return self.ko if locale.startswith("ko") else self.en


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
    count: int = 4
    tile: bool = False
    loras: tuple[LoraUse, ...] = ()
    preset: str | None = None
    hires: float | None = None
    clip_skip: int = 1

    def composed_prompt(self, vocabulary: Vocabulary) -> str:
        """The user's words first, then style, shot, lighting and quality fragments."""
        return vocabulary.compose(
            self.prompt,
            style=self.style,
            shot=self.shot,
            lighting=self.lighting,
            quality=self.quality,
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
            preset = (presets or Presets()).get(self.preset)
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
    **typed: object,
) -> ImagineOptions:
    """Typed fields (a Discord slash command) keyed by flag name (`ar`, `style`, `steps`;
    dashes as underscores), on top of any flags written in the prompt. A field given both
    ways takes the typed value, except `no`, which adds up.

    `defaults` (a user's saved settings, by flag name) fill the fields given neither way; one
    that no longer parses (an operator removed that style) is skipped, never an error."""
    context = _Context(vocabulary, limits or Limits())
    text, flags = _split_flags(prompt)
    for key, value in typed.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and item is not False:
                flags.append((key.replace("_", "-"), "" if item is True else str(item), True))
    values: dict[str, object] = {}
    written: set[str] = set()
    for name, raw, is_typed in flags:
        flag = _lookup_flag(name)
        if not flag.takes_value and raw:
            raise OptionsError(
                f"--{name} takes no value, but got {raw!r}. Put the prompt before the flags.",
                f"--{name} 뒤에는 값을 쓰지 않습니다({raw!r}). 프롬프트는 플래그 앞에 쓰세요.",
            )
        if flag.field in written and flag.field not in _REPEATABLE and not is_typed:
            raise OptionsError(f"--{name} is given twice.", f"--{name} 옵션이 두 번 들어갔습니다.")
        written.add(flag.field)
        parsed = flag.parse(raw, context)
        if flag.field in _REPEATABLE:
            parsed = (*values.get(flag.field, ()), *parsed)  # type: ignore[misc]
        values[flag.field] = parsed
    _apply_defaults(values, defaults or {}, context)
    return _finish(text, values, context)


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
    matches = [
        match
        for match in _FLAG.finditer(text)
        if not any(start < match.start() < end for start, end in quoted)
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
    if "size" in values and "aspect_ratio" in values:
        raise OptionsError("Give --ar or --size, not both.", "--ar과 --size 중 하나만 쓰세요.")
    limits = context.limits
    values.setdefault("count", min(ImagineOptions.count, limits.max_images))
    values.setdefault("steps", min(ImagineOptions.steps, limits.max_steps))
    values.setdefault("cfg", min(max(ImagineOptions.cfg, limits.min_cfg), limits.max_cfg))
    return ImagineOptions(prompt=prompt, **values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- values


def _integer(name: str, low: int, high: int) -> Callable[[str, _Context], int]:
    def parse(raw: str, _: _Context) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise OptionsError(
                f"--{name} must be a whole number from {low} to {high}, not {raw!r}.",
                f"--{name} 값은 {low}에서 {high} 사이의 정수여야 합니다({raw!r}).",
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
            f"--cfg must be a number from {low:g} to {high:g}, not {raw!r}.",
            f"--cfg 값은 {low:g}에서 {high:g} 사이의 숫자여야 합니다({raw!r}).",
        )
    return value


def _sampler(raw: str, _: _Context) -> str:
    try:
        return resolve_sampler(raw).name
    except UnknownSamplerError as error:
        raise OptionsError(
            str(error), f"알 수 없는 샘플러입니다: {raw!r}. {_korean_hint(error)}"
        ) from None


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
            raise OptionsError(
                f"Unknown --{flag} {raw!r}.{hint_en} Allowed: {allowed}.",
                f"알 수 없는 --{flag} 값입니다: {raw!r}.{hint_ko} 쓸 수 있는 값: {allowed}.",
            ) from None

    return parse


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


def _flag_on(raw: str, _: _Context) -> bool:
    return True


def _ratio(raw: str, _: _Context) -> tuple[float, float]:
    try:
        return parse_ratio(raw)
    except InvalidRequestError:
        raise OptionsError(
            f"--ar must be W:H between 1:8 and 8:1, e.g. 16:9, not {raw!r}.",
            f"--ar 값은 1:8에서 8:1 사이의 W:H 형식이어야 합니다. 예: 16:9 ({raw!r}).",
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
            f"(e.g. {side}x{side}), not {raw!r}.",
            f"--size 값은 너비x높이 형식이며 전체 {context.limits.max_area:,} 픽셀 이하여야 "
            f"합니다(예: {side}x{side}). 입력: {raw!r}",
        )
    return width, height


def _loras(raw: str, _: _Context) -> tuple[LoraUse, ...]:
    match = _LORA.match(raw)
    if match is None:
        raise OptionsError(
            f"--lora must be NAME or NAME:WEIGHT, e.g. pixel-art:0.8, not {raw!r}.",
            f"--lora 값은 이름 또는 이름:가중치 형식이어야 합니다. 예: pixel-art:0.8 ({raw!r}).",
        )
    weight = float(match.group(2)) if match.group(2) else 1.0
    return (LoraUse(match.group(1), weight, weight),)


def _hires(raw: str, _: _Context) -> float:
    if not raw:
        return DEFAULT_HIRES_SCALE
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 1.0 < value <= 4.0):
        raise OptionsError(
            f"--hires takes an upscale factor above 1 and at most 4, e.g. 2, not {raw!r}.",
            f"--hires 값은 1보다 크고 4 이하인 배율이어야 합니다. 예: 2 ({raw!r}).",
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
    _Flag("style", _vocabulary("style", "style"), aliases=("style",)),
    _Flag("shot", _vocabulary("shot", "shot"), aliases=("shot",)),
    _Flag("lighting", _vocabulary("lighting", "light"), aliases=("light", "lighting")),
    _Flag("quality", _vocabulary("quality", "quality"), aliases=("quality",)),
    _Flag("count", _limited_integer("n", 1, lambda limits: limits.max_images), aliases=("n",)),
    _Flag("tile", _flag_on, takes_value=False, aliases=("tile",)),
    _Flag("loras", _loras, aliases=("lora",)),
    _Flag("hires", _hires, aliases=("hires",)),
    _Flag("preset", _text("preset"), aliases=("preset",)),
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
            f"Unknown flag --{name}.{hint_en} Flags: {allowed}.",
            f"알 수 없는 플래그입니다: --{name}.{hint_ko} 쓸 수 있는 플래그: {allowed}.",
        )
    return flag


# --------------------------------------------------------------------------- sizes


def parse_size(text: str) -> tuple[int, int]:
    match = _SIZE.match(text)
    if match is None:
        raise InvalidRequestError(f"Size {text!r} is not WIDTHxHEIGHT, for example 768x512.")
    return int(match.group(1)), int(match.group(2))


def parse_ratio(text: str) -> tuple[float, float]:
    match = _RATIO.match(text)
    if match is None:
        raise InvalidRequestError(f"Aspect ratio {text!r} is not W:H, for example 16:9.")
    width, height = float(match.group(1)), float(match.group(2))
    if width <= 0 or height <= 0 or not 1 / 8 <= width / height <= 8:
        raise InvalidRequestError(f"Aspect ratio {text} is out of range (1:8 to 8:1).")
    return width, height


def size_for_ratio(ratio: tuple[float, float], native_size: int) -> tuple[int, int]:
    """A size of about the model's native area with this aspect ratio, in multiples of 64."""
    area = native_size * native_size
    width = (area * ratio[0] / ratio[1]) ** 0.5
    height = area / width
    return (
        max(ASPECT_STEP, round(width / ASPECT_STEP) * ASPECT_STEP),
        max(ASPECT_STEP, round(height / ASPECT_STEP) * ASPECT_STEP),
    )
