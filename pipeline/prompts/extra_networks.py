"""Extra-network tags: `<lora:name:weight>` taken out of a prompt and returned as LoraTags.

This is a reimplementation written from AUTOMATIC1111's documented behaviour (the wiki
"Features" page, Lora / extra networks); A1111 is AGPL and none of its code is copied.

Rules:
- A tag is `<kind:args>`: `kind` is word characters, `args` runs to the next `>` and has no `<`.
- `<lora:name>` has weight 1; `<lora:name:w>` uses w for the text encoder and the UNet;
  `<lora:name:te:unet>` sets them separately; `te=w` and `unet=w` may be written by name
  (`<lora:name:0.8:unet=0.5>`), and an unnamed UNet weight defaults to the text-encoder one.
  `<lyco:...>` is read the same way. Kinds are case-sensitive, as in A1111.
- Weights are optionally signed decimals (`0.8`, `-1`, `.5`) from MIN_LORA_WEIGHT to
  MAX_LORA_WEIGHT (-4 to 4, the range A1111 users work in; beyond it images turn to noise or
  black). A weight outside is a WeightOutOfRange. A weight that is not a number, a
  missing name, more than two weights, or an option other than te/unet (A1111's `dyn` included,
  which Easel cannot honour) is a PromptSyntaxError naming the tag.
- LoRA tags are removed from the text and nothing else changes (the spaces around them stay).
  Other tags such as `<hypernet:x:1>` are left in the text untouched; A1111 would remove them.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.prompts.syntax import (
    PromptSyntaxError,
    WeightOutOfRange,
    is_word_char,
    parse_number,
    shorten,
)

LORA_KINDS = frozenset({"lora", "lyco"})
MIN_LORA_WEIGHT = -4.0
MAX_LORA_WEIGHT = 4.0


def lora_weight_in_range(weight: float) -> bool:
    return MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT


@dataclass(frozen=True)
class LoraTag:
    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


@dataclass(frozen=True)
class _Tag:
    start: int
    end: int  # just past the `>`
    kind: str
    args: str

    def source(self, text: str) -> str:
        return text[self.start : self.end]


def _tag_at(text: str, start: int) -> _Tag | None:
    """The tag that opens with the `<` at `start`, if the text there is one."""
    colon = start + 1
    while colon < len(text) and is_word_char(text[colon]):
        colon += 1
    if colon == start + 1 or colon == len(text) or text[colon] != ":":
        return None
    close = colon + 1
    while close < len(text) and text[close] not in "<>":
        close += 1
    if close == len(text) or text[close] != ">" or close == colon + 1:
        return None
    return _Tag(start, close + 1, text[start + 1 : colon], text[colon + 1 : close])


def _tags(text: str) -> Iterator[_Tag]:
    start = text.find("<")
    while start != -1:
        tag = _tag_at(text, start)
        if tag is not None:
            yield tag
        start = text.find("<", tag.end if tag is not None else start + 1)


def _weight(value: str, tag: str) -> float:
    weight = parse_number(value)
    if weight is None:
        shown = shorten(value.strip())
        raise PromptSyntaxError(
            f"{shorten(tag)}: the weight {shown!r} is not a number",
            ko=f"{shorten(tag)}: 가중치 {shown!r}은(는) 숫자가 아닙니다.",
        )
    if not lora_weight_in_range(weight):
        raise WeightOutOfRange("lora", tag, weight, MIN_LORA_WEIGHT, MAX_LORA_WEIGHT)
    return weight


def _lora(tag: _Tag, source: str) -> LoraTag:
    name, *values = (item.strip() for item in tag.args.split(":"))
    if not name:
        raise PromptSyntaxError(
            f"{shorten(source)}: the tag has no name",
            ko=f"{shorten(source)}: 태그에 이름이 없습니다.",
        )
    positional = [value for value in values if "=" not in value]
    pairs = (value.split("=", 1) for value in values if "=" in value)
    options = {key.strip(): value for key, value in pairs}
    if len(positional) > 2:
        raise PromptSyntaxError(
            f"{shorten(source)}: at most two weights (text encoder, UNet) are allowed",
            ko=f"{shorten(source)}: 가중치는 최대 두 개(텍스트 인코더, UNet)까지 쓸 수 있습니다.",
        )
    unknown = sorted(set(options) - {"te", "unet"})
    if unknown:
        raise PromptSyntaxError(
            f"{shorten(source)}: unsupported option {shorten(unknown[0])!r} (use te= or unet=)",
            ko=f"{shorten(source)}: 지원하지 않는 옵션입니다: {shorten(unknown[0])!r}"
            "(te= 또는 unet=을 쓰세요).",
        )
    te = _weight(options.get("te", positional[0] if positional else "1"), source)
    unet_value = options.get("unet", positional[1] if len(positional) > 1 else None)
    unet = te if unet_value is None else _weight(unet_value, source)
    return LoraTag(name=name, te_weight=te, unet_weight=unet)


def extract_loras(text: str) -> tuple[str, list[LoraTag]]:
    """`text` without its LoRA tags, and those tags in order of appearance.

    Raises PromptSyntaxError for a LoRA tag that cannot be read.
    """
    kept: list[str] = []
    loras: list[LoraTag] = []
    position = 0
    for tag in _tags(text):
        if tag.kind not in LORA_KINDS:
            continue
        loras.append(_lora(tag, tag.source(text)))
        kept.append(text[position : tag.start])
        position = tag.end
    kept.append(text[position:])
    return "".join(kept), loras
