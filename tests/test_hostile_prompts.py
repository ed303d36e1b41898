"""Hostile prompts and options: long inputs stay linear, weights are bounded, text is cleaned,
and the option parser raises nothing but OptionsError."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core.options import OptionsError, options_from_fields, parse_options, size_for_ratio
from pipeline.errors import InvalidRequestError
from pipeline.images import param_pairs, parse_infotext
from pipeline.prompts import emphasis, vocabulary
from pipeline.prompts.extra_networks import extract_loras
from pipeline.prompts.plan import plan_prompt
from pipeline.prompts.schedule import prompt_schedule
from pipeline.prompts.syntax import PromptSyntaxError, WeightOutOfRange
from pipeline.prompts.vocabulary import Vocabulary
from pipeline.request import GenerationRequest, HiresFix, LoraUse
from pipeline.text import clean_text
from pipeline.validation import Limits, check_prompt_plan, check_ranges

VOCABULARY = Vocabulary.load()
LONG = 20_000
# A1111's own pattern for the parameter line, which `param_pairs` replaces.
A1111_PARAMS = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


# --------------------------------------------------------------------------- linear parsing


@pytest.mark.parametrize(
    "prompt",
    [
        "(" * LONG,
        "[" * LONG,
        "(:" + " " * LONG + ")",
        "(" * LONG + "a" + ")" * LONG,
        "a" + " ," * LONG,
        "(a:" + "1" * LONG + ")",
        "[a:" * (LONG // 3),
        "<lora:x:" + "9" * LONG,
        "a " + '"--x' * (LONG // 4),
    ],
)
def test_long_prompts_parse_and_compose(prompt: str) -> None:
    """Each of these took seconds to a minute when a regular expression backtracked; they are
    6,000-character chat messages and more, and must simply finish."""
    limits = Limits(max_and_parts=8)
    try:
        options = parse_options(f"{prompt} --style watercolor", VOCABULARY, limits)
    except OptionsError:
        return
    request = options.to_request(VOCABULARY, 512)
    assert request.prompt.endswith(VOCABULARY.get("style", "watercolor").prompt)


def test_de_duplication_looks_at_each_character_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The edge-comma strip is one pass: at most two checks per character."""
    calls = 0
    original = vocabulary._is_edge_char

    def counting(char: str) -> bool:
        nonlocal calls
        calls += 1
        return original(char)

    monkeypatch.setattr(vocabulary, "_is_edge_char", counting)
    VOCABULARY.compose("(:" + " " * LONG + ")", style="watercolor")
    assert calls <= 2 * (LONG + 3)


def test_long_infotext_parameter_lines_parse() -> None:
    key_run = "a" * LONG
    assert parse_infotext(f"prompt\n{key_run}") is None
    quoted = 'Key: "x,' * (LONG // 8)
    assert parse_infotext(f"prompt\n{quoted}") is not None
    spaced = "Steps: 20," + " " * LONG + "Seed: 1, Sampler: Euler"
    info = parse_infotext(f"a cat\n{spaced}")
    assert info is not None and info.seed == 1 and info.steps == 20
    huge = "9" * LONG
    info = parse_infotext(f"a cat\nSteps: {huge}, Size: {huge}x{huge}, Seed: 3")
    assert info is not None and info.steps is None and info.width is None and info.seed == 3


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='ab :,"\\-/_é\t1', max_size=30))
def test_param_pairs_match_a1111s_pattern(line: str) -> None:
    assert param_pairs(line) == A1111_PARAMS.findall(line)


# --------------------------------------------------------------------------- AND parts


def test_and_parts_are_limited_with_a_clear_message() -> None:
    prompt = " AND ".join(["a fox"] * 682)
    with pytest.raises(OptionsError) as error:
        parse_options(prompt, VOCABULARY)
    assert "682 parts joined by AND" in error.value.en and "at most 8" in error.value.en
    assert "682개" in error.value.ko and "최대 8개" in error.value.ko
    nine = " AND ".join(["a fox"] * 9)
    with pytest.raises(OptionsError):
        parse_options(nine, VOCABULARY)
    assert parse_options(nine, VOCABULARY, Limits(max_and_parts=9)).prompt == nine
    with pytest.raises(InvalidRequestError, match="9 parts joined by AND; the limit is 8"):
        check_prompt_plan(plan_prompt(nine, "", 20), Limits())


# --------------------------------------------------------------------------- schedules


def test_a_negative_switch_point_uses_the_second_text_from_the_start() -> None:
    assert prompt_schedule("a [cat:dog:-1] here", 10) == [(10, "a dog here")]
    assert prompt_schedule("[cat:dog:-0.5]", 4) == [(4, "dog")]
    assert prompt_schedule("[cat::-3]", 4) == [(4, "")]
    assert prompt_schedule("[cat:dog:-x]", 4) == [(4, "[cat:dog:-x]")]


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "flag",
    ["good:" + "9" * 400, "good:1e30", "good:4.5", "good:-5", "good:nan", "good:inf"],
)
def test_lora_flag_weights_are_bounded(flag: str) -> None:
    with pytest.raises(OptionsError) as error:
        parse_options(f"a fox --lora {flag}", VOCABULARY)
    assert "--lora" in error.value.en
    assert "가중치" in error.value.ko or "형식" in error.value.ko


def test_lora_flag_weights_within_bounds_are_kept() -> None:
    options = parse_options("a fox --lora good:-4 --lora other:4 --lora plain", VOCABULARY)
    assert options.loras == (
        LoraUse("good", -4.0, -4.0),
        LoraUse("other", 4.0, 4.0),
        LoraUse("plain", 1.0, 1.0),
    )


def test_lora_tag_weights_are_bounded() -> None:
    with pytest.raises(WeightOutOfRange, match="must be from -4 to 4, not 30"):
        extract_loras("a fox <lora:good:30>")
    with pytest.raises(OptionsError) as error:
        parse_options("a fox <lora:good:0.5:unet=9>", VOCABULARY)
    assert "LoRA weights must be from -4 to 4" in error.value.en
    assert "LoRA 가중치는 -4에서 4 사이" in error.value.ko
    with pytest.raises(PromptSyntaxError, match="is not a number"):
        extract_loras("<lora:good:1e30>")
    assert extract_loras("<lora:good:-4>")[1][0].te_weight == -4.0


def test_request_lora_weights_are_bounded() -> None:
    for weight in (float("inf"), float("nan"), 1e30, -4.01):
        request = GenerationRequest(prompt="a", loras=(LoraUse("good", weight, 1.0),))
        with pytest.raises(InvalidRequestError, match="LoRA good: a weight must be from -4 to 4"):
            check_ranges(request, Limits())


@pytest.mark.parametrize(
    "prompt", ["(a fox:999)", "(a fox:" + "9" * 300 + ")", "(((a:4)))", "(a:-1)", "[(a:5):b:3]"]
)
def test_emphasis_weights_are_bounded(prompt: str) -> None:
    with pytest.raises(OptionsError) as error:
        parse_options(prompt, VOCABULARY)
    assert "emphasis weights (nested brackets multiply) must be from 0 to 4" in error.value.en
    assert "강조 가중치" in error.value.ko
    with pytest.raises(WeightOutOfRange):
        plan_prompt(prompt, "", 20)


def test_emphasis_within_bounds_and_in_the_negative() -> None:
    assert parse_options("((((a fox:3)))) [b] (c:0)", VOCABULARY).prompt
    with pytest.raises(OptionsError, match="'ugly' comes to 7"):
        parse_options("a fox --neg (ugly:7)", VOCABULARY)
    assert emphasis.weight_out_of_range("(" * 14 + "a") is None  # 1.1^14 = 3.8
    assert emphasis.weight_out_of_range("(" * 15 + "a") == ("a", pytest.approx(1.1**15))


# --------------------------------------------------------------------------- hires steps


def test_hires_with_one_step_is_an_option_error() -> None:
    with pytest.raises(OptionsError) as error:
        parse_options("a fox --steps 1 --hires", VOCABULARY)
    assert "--hires needs at least 2 steps" in error.value.en
    assert "--hires는 2단계 이상" in error.value.ko
    assert parse_options("a fox --steps 2 --hires", VOCABULARY).hires == 2.0


def test_a_hires_pass_without_a_step_is_refused() -> None:
    request = GenerationRequest(prompt="a", steps=1, hires=HiresFix(scale=2.0))
    with pytest.raises(InvalidRequestError, match="leaves no step to run; use at least 2 steps"):
        check_ranges(request, Limits())
    check_ranges(GenerationRequest(prompt="a", steps=2, hires=HiresFix(scale=2.0)), Limits())
    fine = HiresFix(scale=2.0, steps=4, denoising_strength=0.25)
    check_ranges(GenerationRequest(prompt="a", steps=1, hires=fine), Limits())


# --------------------------------------------------------------------------- clean text

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_TEXT = st.text(st.one_of(st.characters(), SURROGATES, st.sampled_from("\x00\x1b\x9b\r")))


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_clean_text_encodes_and_holds_no_controls(text: str) -> None:
    cleaned = clean_text(text)
    cleaned.encode("utf-8")
    assert all(char in "\n\t" or not _is_control(char) for char in cleaned)
    assert clean_text(cleaned) == cleaned
    assert len(cleaned) <= len(text)


def _is_control(char: str) -> bool:
    return ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0


def test_clean_text_keeps_words_and_marks_lone_surrogates() -> None:
    assert clean_text("a\udc80b") == "a\ufffdb"
    assert clean_text("\ud83d\ude00 fox") == "😀 fox"
    assert clean_text("red\x1b[31m\x00 fox\r\n\tok") == "red[31m fox\n\tok"
    assert clean_text("여우 🦊") == "여우 🦊"


def test_a_lone_surrogate_in_a_prompt_parses_and_plans() -> None:
    options = parse_options("a \udc80 fox --neg \ud800 ugly", VOCABULARY)
    assert options.prompt == "a \ufffd fox" and options.negative == "\ufffd ugly"
    request = options.to_request(VOCABULARY, 512)
    request.to_json().encode("utf-8")
    plan = plan_prompt("a \udc80 fox", "\udfff", 4)
    assert all(text.encode("utf-8") for text in plan.texts() if text)


# --------------------------------------------------------------------------- only OptionsError


def test_huge_numbers_are_option_errors() -> None:
    sides = "1" + "0" * 308
    for text in (f"a --ar {sides}:{sides}", f"a --size {'9' * 5000}x64", "a --ar 1e308:1"):
        with pytest.raises(OptionsError):
            parse_options(text, VOCABULARY)


def test_a_saved_huge_ratio_is_skipped_and_extremes_stay_finite() -> None:
    sides = "1" + "0" * 308
    options = options_from_fields("a fox", VOCABULARY, defaults={"ar": f"{sides}:{sides}"})
    assert options.aspect_ratio is None
    options.to_request(VOCABULARY, 512)
    assert size_for_ratio((1e308, 1e308), 512) == (512, 512)
    assert size_for_ratio((1e308, 1.0), 512) == (1472, 192)


FIELDS = (
    "ar", "size", "seed", "no", "neg", "steps", "cfg", "sampler", "style", "shot", "light",
    "quality", "n", "tile", "lora", "hires", "preset", "clip_skip",
)  # fmt: skip
VALUES = st.one_of(
    ANY_TEXT,
    st.from_regex(
        r"-?[0-9]{1,500}(\.[0-9]{0,400})?(e[0-9]{1,4})?(:|x)?-?[0-9]{0,500}", fullmatch=True
    ),
    st.floats().map(str),
    st.integers().map(str),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT)
def test_any_line_gives_options_or_an_options_error(text: str) -> None:
    try:
        options = parse_options(text, VOCABULARY)
    except OptionsError:
        return
    # An unknown preset is only checked when the request is made.
    with contextlib.suppress(InvalidRequestError):
        options.to_request(VOCABULARY, 512).to_json().encode("utf-8")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), VALUES, st.booleans())
def test_any_field_value_gives_options_or_an_options_error(
    field: str, value: str, as_default: bool
) -> None:
    try:
        if as_default:
            options = options_from_fields("a fox", VOCABULARY, defaults={field: value})
        else:
            options = options_from_fields("a fox", VOCABULARY, **{field: value})
    except OptionsError:
        return
    with contextlib.suppress(InvalidRequestError):
        options.to_request(VOCABULARY, 512).to_json().encode("utf-8")
