"""The /imagine options: one line with Midjourney-style flags, or typed fields."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.options import (
    ImagineOptions,
    OptionsError,
    options_from_fields,
    parse_options,
    parse_ratio,
    parse_size,
    size_for_ratio,
)
from pipeline.buckets import XL_BUCKETS
from pipeline.errors import InvalidRequestError
from pipeline.prompts.vocabulary import Vocabulary
from pipeline.request import HiresFix, LoraUse
from pipeline.validation import Limits

VOCABULARY = Vocabulary.load()


def parse(text: str) -> ImagineOptions:
    return parse_options(text, VOCABULARY)


def test_a_full_line() -> None:
    options = parse(
        "a castle on a hill --ar 16:9 --seed 42 --no fog, people --neg blurry "
        '--steps 30 --cfg 6.5 --sampler "DPM++ 2M Karras" --style Pixel Art --shot wide-shot '
        "--light golden-hour-lighting --quality masterpiece --n 2 --tile --clip-skip 2"
    )
    assert options.prompt == "a castle on a hill"
    assert options.aspect_ratio == (16.0, 9.0)
    assert (options.seed, options.steps, options.cfg, options.count) == (42, 30, 6.5, 2)
    assert options.avoid == ("fog", "people")
    assert options.negative_prompt() == "blurry, fog, people"
    assert options.sampler == "DPM++ 2M Karras"
    assert (options.style, options.shot, options.lighting, options.quality) == (
        "pixel-art",
        "wide-shot",
        "golden-hour-lighting",
        "masterpiece",
    )
    assert options.tile and options.clip_skip == 2


def test_the_request_puts_the_users_words_first() -> None:
    options = parse(
        "a fox in the snow --style watercolor --shot close-up-shot --light soft-lighting"
    )
    request = options.to_request(VOCABULARY, native_size=512)
    assert request.prompt.startswith("a fox in the snow, ")
    fragments = request.prompt.split(", ")
    assert fragments.index("watercolor") < fragments.index("close-up shot")
    assert fragments.index("close-up shot") < fragments.index("soft lighting")


@pytest.mark.parametrize(
    ("line", "native", "size"),
    [
        ("x --ar 16:9", 512, (704, 384)),
        ("x --ar 1:1", 768, (768, 768)),
        ("x --ar 2:3", 768, (640, 960)),
        ("x --size 640x448", 512, (640, 448)),
        ("x", 512, (None, None)),
    ],
)
def test_sizes_follow_the_model(line: str, native: int, size: tuple) -> None:
    request = parse(line).to_request(VOCABULARY, native_size=native)
    assert (request.width, request.height) == size


def test_seed_and_count_make_a1111_batch_seeds() -> None:
    request = parse("x --seed 10 --n 3").to_request(VOCABULARY, 512)
    assert request.seeds == (10, 11, 12)


def test_several_no_flags_add_up_and_ids_match_loosely() -> None:
    options = parse("x --no fog --no rain, snow --style WATERCOLOR")
    assert options.avoid == ("fog", "rain", "snow")
    assert options.style == "watercolor"


@pytest.mark.parametrize(
    ("line", "english", "korean"),
    [
        ("x --steps 0", "--steps must be a whole number from 1 to 100", "--steps 값은"),
        ("x --steps many", "--steps must be a whole number", "정수"),
        ("x --cfg 99", "--cfg must be a number from 1 to 30", "--cfg 값은"),
        ("x --n 9", "--n must be a whole number from 1 to 4", "--n 값은"),
        ("x --ar 16x9", "--ar must be W:H", "--ar 값은"),
        ("x --size 4000x4000", "at most 1,048,576 pixels", "픽셀 이하"),
        ("x --style pixl-art", "Did you mean 'pixel-art'?", "'pixel-art'을(를) 찾으셨나요?"),
        ("x --sampler eular a", "Did you mean 'Euler a'?", "'Euler a'을(를) 찾으셨나요?"),
        ("x --stpes 20", "Did you mean --steps?", "--steps을(를) 찾으셨나요?"),
        ("x --tile yes", "--tile takes no value", "값을 쓰지 않습니다"),
        ("x --seed 1 --seed 2", "--seed is given twice", "두 번"),
        ("--ar 16:9", "The prompt is empty", "프롬프트가 비어"),
        ("x --ar 1:1 --size 512x512", "Give --ar or --size, not both", "하나만"),
        ("x --lora bad:weight:x", "--lora must be NAME or NAME:WEIGHT", "--lora 값은"),
        ("x --hires 9", "--hires takes an upscale factor", "--hires 값은"),
        ("x --no", "--no needs the things to leave out", "--no 뒤에"),
    ],
)
def test_mistakes_are_one_error_in_both_languages(line: str, english: str, korean: str) -> None:
    with pytest.raises(OptionsError) as caught:
        parse(line)
    assert english in caught.value.en and english in str(caught.value)
    assert korean in caught.value.ko
    assert caught.value.message("ko-KR") == caught.value.ko


def test_limits_come_from_the_settings() -> None:
    with pytest.raises(OptionsError, match="from 1 to 30"):
        parse_options("x --steps 31", VOCABULARY, Limits(max_steps=30))


def test_loras_add_up_and_reach_the_request() -> None:
    options = parse("x --lora pixel-style:0.7 --lora detail")
    assert options.loras == (LoraUse("pixel-style", 0.7, 0.7), LoraUse("detail"))
    assert options.to_request(VOCABULARY, 512).loras == options.loras


def test_hires_takes_an_optional_factor() -> None:
    assert parse("x --hires").to_request(VOCABULARY, 512).hires == HiresFix(scale=2.0)
    assert parse("x --hires 1.5 --n 1").to_request(VOCABULARY, 512).hires == HiresFix(scale=1.5)


def test_typed_fields_go_through_the_same_checks() -> None:
    options = options_from_fields(
        "a castle --seed 3", VOCABULARY, ar="3:2", style="ukiyo-e-painting", tile=True, steps=None
    )
    assert (options.seed, options.aspect_ratio, options.style, options.tile) == (
        3,
        (3.0, 2.0),
        "ukiyo-e-painting",
        True,
    )
    with pytest.raises(OptionsError, match="Unknown --light"):
        options_from_fields("a castle", VOCABULARY, light="disco")


def test_prompt_text_with_dashes_and_brackets_stays_text() -> None:
    options = parse("a [cat:dog:0.5] -- (best quality:1.2), well-lit x--y --n 1")
    assert options.prompt == "a [cat:dog:0.5] -- (best quality:1.2), well-lit x--y"
    assert options.count == 1


PIECES = [*"ab :-,'\"0123456789x.", "--", "--ar ", "--n ", "--style ", "--no ", "--tile"]
PIECES += ["--seed ", "--lora ", "--hires", "—", "--size ", "--sampler ", "--cfg "]


@settings()  # examples and deadline: the profile in conftest.py
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_any_line_parses_or_is_one_options_error(text: str) -> None:
    try:
        options = parse(text)
    except OptionsError as error:
        assert error.en and error.ko
    else:
        assert options.prompt.strip()


@pytest.mark.parametrize(
    ("ratio", "native", "size"),
    [
        ("1:1", 512, (512, 512)),
        ("16:9", 512, (704, 384)),
        ("9:16", 512, (384, 704)),
        ("3:2", 512, (640, 448)),
        ("2:3", 768, (640, 960)),
        ("21:9", 768, (1152, 512)),
    ],
)
def test_aspect_ratios_keep_about_the_native_area(
    ratio: str, native: int, size: tuple[int, int]
) -> None:
    width, height = size_for_ratio(parse_ratio(ratio), native)
    assert (width, height) == size
    assert width % 64 == 0 and height % 64 == 0
    assert abs(width * height - native * native) / (native * native) < 0.15


@pytest.mark.parametrize(
    ("ratio", "size"),
    [
        ("1:1", (1024, 1024)),
        ("16:9", (1344, 768)),
        ("9:16", (768, 1344)),
        ("3:2", (1216, 832)),
        ("2:3", (832, 1216)),
        ("4:3", (1152, 896)),
        ("21:9", (1536, 640)),
        ("8:1", (2048, 512)),
    ],
)
def test_aspect_ratios_on_sdxl_are_its_trained_sizes(ratio: str, size: tuple[int, int]) -> None:
    assert size_for_ratio(parse_ratio(ratio), 1024) == size
    assert size in XL_BUCKETS


def test_every_sdxl_bucket_is_about_a_megapixel_in_multiples_of_64() -> None:
    assert len(XL_BUCKETS) == 39
    for width, height in XL_BUCKETS:
        assert width % 64 == 0 and height % 64 == 0
        assert 0.85 < width * height / 1024**2 < 1.1
        assert (height, width) in XL_BUCKETS


@pytest.mark.parametrize("text", ["16-9", "0:1", "1:9", "wide", ""])
def test_bad_ratios_say_what_is_allowed(text: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"W:H|out of range"):
        parse_ratio(text)


def test_sizes() -> None:
    assert parse_size("768x512") == (768, 512)
    assert parse_size(" 640 X 640 ") == (640, 640)
    with pytest.raises(InvalidRequestError, match="WIDTHxHEIGHT"):
        parse_size("768 by 512")


@pytest.mark.parametrize(
    ("line", "prompt", "negative"),
    [
        ("a knight —in the rain --n 1", "a knight —in the rain", ""),
        ('a cat --neg "ugly --low" --n 1', "a cat", "ugly --low"),
        ("a cat –no fog --n 1", "a cat", "fog"),
        ("고양이 한 마리 --no 안개 --n 1", "고양이 한 마리", "안개"),
    ],
)
def test_dashes_quotes_and_korean_in_realistic_prompts(
    line: str, prompt: str, negative: str
) -> None:
    options = parse(line)
    assert (options.prompt, options.negative_prompt(), options.count) == (prompt, negative, 1)


def test_unknown_flags_in_any_script_are_errors() -> None:
    with pytest.raises(OptionsError, match="Unknown flag --스타일"):
        parse("고양이 --스타일 수채화")


def test_defaults_fit_the_operators_limits() -> None:
    limits = Limits(max_images=2, max_steps=10)
    options = parse_options("a castle", VOCABULARY, limits)
    assert (options.count, options.steps) == (2, 10)
    with pytest.raises(OptionsError, match="--clip-skip must be a whole number from 1 to 2"):
        parse_options("a castle --clip-skip 3", VOCABULARY, Limits(max_clip_skip=2))


def test_typed_fields_merge_with_flags_in_the_prompt() -> None:
    options = options_from_fields("a castle --no fog --steps 12", VOCABULARY, no="rain", cfg=5)
    assert options.avoid == ("fog", "rain") and (options.steps, options.cfg) == (12, 5.0)
    with pytest.raises(OptionsError, match="not both"):
        options_from_fields("a castle --ar 16:9", VOCABULARY, size="512x512")


def test_every_vocabulary_category_has_a_flag_and_ids_in_the_wrong_one_are_pointed_to_it() -> None:
    vocabulary = Vocabulary.load()
    options = parse_options(
        "a girl --face kawaii-cute-girl --composition portrait --style pixel-art", vocabulary
    )
    assert (options.face, options.composition) == ("kawaii-cute-girl", "portrait")
    assert options.composed_prompt(vocabulary) == "a girl, kawaii cute girl, pixel art, portrait"
    assert parse_options("a girl --comp portrait", vocabulary).composition == "portrait"
    with pytest.raises(OptionsError) as error:
        parse_options("a girl --light kawaii-cute-girl", vocabulary)
    assert "'kawaii-cute-girl' is a --face value: use --face kawaii-cute-girl." in error.value.en
    assert "--face 값입니다" in error.value.ko


def test_the_schedule_flag_works_inside_the_prompt_as_on_the_command_line() -> None:
    vocabulary = Vocabulary.load()
    options = parse_options('a fox --sampler "DPM++ 2M" --schedule Karras', vocabulary)
    assert options.sampler == "DPM++ 2M Karras"
    assert parse_options("a fox --sampler Euler --schedule automatic", vocabulary).sampler == (
        "Euler"
    )
    with pytest.raises(OptionsError, match="Euler a' has no Karras schedule"):
        parse_options("a fox --schedule Karras", vocabulary)
    with pytest.raises(OptionsError, match="--schedule takes Karras or Automatic"):
        parse_options("a fox --schedule fast", vocabulary)
