"""The A1111 prompt language: documented examples, edge cases, and fuzzing for robustness."""

import math
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InvalidRequestError
from pipeline.prompts.composable import WeightedPrompt, split_and
from pipeline.prompts.emphasis import BREAK, parse_emphasis
from pipeline.prompts.extra_networks import LoraTag, extract_loras
from pipeline.prompts.schedule import prompt_schedule, step_boundaries
from pipeline.prompts.syntax import PromptSyntaxError, split_whole_word

UP = 1.1
DOWN = 1 / 1.1

EMPHASIS_CASES: list[tuple[str, list[tuple[str, float]]]] = [
    ("", [("", 1.0)]),
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", UP), (" word", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", UP)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("anime_\\(character\\)", [("anime_(character)", 1.0)]),
    ("a \\\\ b", [("a \\ b", 1.0)]),
    ("[word:1.5]", [("word:1.5", DOWN)]),
    ("(word:1.5)", [("word", 1.5)]),
    ("(word: 1.5 )", [("word", 1.5)]),
    ("(word:.5)", [("word", 0.5)]),
    ("(word:-1)", [("word", -1.0)]),
    ("a (b:0.5) c", [("a ", 1.0), ("b", 0.5), (" c", 1.0)]),
    ("((x):1.5)", [("x", UP * 1.5)]),
    ("((a) b:2)", [("a", UP * 2), (" b", 2.0)]),
    ("a man in a ((tuxedo))", [("a man in a ", 1.0), ("tuxedo", UP * UP)]),
    ("a man in a (tuxedo:1.21)", [("a man in a ", 1.0), ("tuxedo", 1.21)]),
    ("a [word]", [("a ", 1.0), ("word", DOWN)]),
    ("a [[word]]", [("a ", 1.0), ("word", DOWN * DOWN)]),
    ("a (word:0.25)", [("a ", 1.0), ("word", 0.25)]),
    ("(unbalanced", [("unbalanced", UP)]),
    ("[unbalanced", [("unbalanced", DOWN)]),
    ("a (b [c", [("a ", 1.0), ("b ", UP), ("c", UP * DOWN)]),
    ("a) b] c", [("a) b] c", 1.0)]),
    ("a:1.5) b", [("a:1.5) b", 1.0)]),
    ("(a [b) c]", [("a ", UP), ("b", UP * DOWN), (" c", DOWN)]),
    ("(x:1e400)", [("x:1e400", UP)]),
    ("(x:1.2.3)", [("x:1.2.3", UP)]),
    ("(x:" + "9" * 400 + ")", [("x:" + "9" * 400, UP)]),
    ("(x\\:2)", [("x:2", UP)]),
    ("()", [("", 1.0)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", UP * UP * 1.3),
            (" ", UP),
            ("on", 1.0),
            (" a ", UP),
            ("hill", UP * 0.5),
            (", sun, ", UP),
            ("sky", UP**4),
            (".", UP),
        ],
    ),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ("a, BREAK, b", [("a,", 1.0), ("BREAK", -1), (", b", 1.0)]),
    ("BREAK", [("BREAK", -1)]),
    ("BREAK BREAK", [("BREAK", -1), ("BREAK", -1)]),
    ("(a BREAK b)", [("a", UP), ("BREAK", -1), ("b", UP)]),
    ("(a)BREAK(b)", [("a", UP), ("BREAK", -1), ("b", UP)]),
    ("BREAKING break aBREAK BREAK_", [("BREAKING break aBREAK BREAK_", 1.0)]),
    ("\\BREAK", [("BREAK", 1.0)]),
    ("trailing \\", [("trailing \\", 1.0)]),
]


@pytest.mark.parametrize(("text", "expected"), EMPHASIS_CASES)
def test_parse_emphasis(text: str, expected: list[tuple[str, float]]) -> None:
    result = parse_emphasis(text)
    assert [run for run, _ in result] == [run for run, _ in expected]
    assert [weight for _, weight in result] == pytest.approx([weight for _, weight in expected])


SCHEDULE_CASES: list[tuple[str, int, list[tuple[int, str]]]] = [
    ("x", 20, [(20, "x")]),
    ("", 20, [(20, "")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("[cat:dog:0.4]", 20, [(8, "cat"), (20, "dog")]),
    ("[cat:dog:.4]", 20, [(8, "cat"), (20, "dog")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("[fantasy:cyberpunk:16]", 100, [(16, "fantasy"), (100, "cyberpunk")]),
    (
        "a [fantasy:cyberpunk:16] landscape",
        100,
        [(16, "a fantasy landscape"), (100, "a cyberpunk landscape")],
    ),
    (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]",
        100,
        [
            (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
            (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
            (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
            (75, "fantasy landscape with a lake and an oak in background masterful"),
            (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
        ],
    ),
    (
        "[cow|horse] in a field",
        5,
        [
            (1, "cow in a field"),
            (2, "horse in a field"),
            (3, "cow in a field"),
            (4, "horse in a field"),
            (5, "cow in a field"),
        ],
    ),
    ("[a|b|c]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "a")]),
    ("[a|]", 3, [(1, "a"), (2, ""), (3, "a")]),
    ("[a|a] x", 6, [(6, "a x")]),
    ("[[a:b:2]|c]", 4, [(1, "a"), (2, "c"), (3, "b"), (4, "c")]),
    ("[a:b:0]", 10, [(10, "b")]),
    ("[a:b:10]", 10, [(10, "a")]),
    ("[a:b:50]", 10, [(10, "a")]),
    ("[a:b:1.5]", 10, [(10, "a")]),
    ("[a:b:" + "9" * 5000 + "]", 10, [(10, "a")]),
    ("[a:b:" + "9" * 400 + ".5]", 10, [(10, "a")]),
    ("[a:b: 3 ]", 10, [(3, "a"), (10, "b")]),
    ("[a:b:0.29]", 100, [(28, "a"), (100, "b")]),  # A1111's float arithmetic: int(28.99...)
    ("[a:a:5]", 10, [(10, "a")]),
    ("[:b:5]", 10, [(5, ""), (10, "b")]),
    ("[a::5]", 10, [(5, "a"), (10, "")]),
    ("([cat:dog:5]:1.2)", 10, [(5, "(cat:1.2)"), (10, "(dog:1.2)")]),
    ("[[cat:dog:5]]", 10, [(5, "[cat]"), (10, "[dog]")]),
    ("[a (b:c) d:e:5]", 10, [(5, "a (b:c) d"), (10, "e")]),
    # Not editing syntax: passes through as text.
    ("(x:1.2) [x] (y) [[z]]", 10, [(10, "(x:1.2) [x] (y) [[z]]")]),
    ("\\[a:b:2\\] \\(c\\)", 10, [(10, "\\[a:b:2\\] \\(c\\)")]),
    ("a <lora:name:0.8> b", 10, [(10, "a <lora:name:0.8> b")]),
    ("[a:b:x]", 10, [(10, "[a:b:x]")]),
    ("[a:b:-1]", 10, [(10, "b")]),
    ("[a:b:1e3]", 10, [(10, "[a:b:1e3]")]),
    ("[a:b:c:5]", 10, [(10, "[a:b:c:5]")]),
    ("[a|b:5]", 10, [(10, "[a|b:5]")]),
    ("[a:(b:5)]", 10, [(10, "[a:(b:5)]")]),
    ("a|b:c", 10, [(10, "a|b:c")]),
    ("a] b) c:", 10, [(10, "a] b) c:")]),
    ("[a (b:c:5]", 10, [(10, "[a (b:c:5]")]),
    ("[unclosed [a:b:2]", 10, [(2, "[unclosed a"), (10, "[unclosed b")]),
]


@pytest.mark.parametrize(("text", "steps", "expected"), SCHEDULE_CASES)
def test_prompt_schedule(text: str, steps: int, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedule(text, steps) == expected


def test_step_boundaries_keep_every_when() -> None:
    assert step_boundaries("[a:a:5] [b:c:0.5]", 20) == [5, 10, 20]
    assert step_boundaries("[a|b]", 3) == [1, 2, 3]


def test_steps_below_one_count_as_one() -> None:
    assert prompt_schedule("[a:b:1]", 0) == [(1, "a")]


SPLIT_AND_CASES: list[tuple[str, list[WeightedPrompt]]] = [
    ("", [WeightedPrompt("")]),
    ("a cat", [WeightedPrompt("a cat")]),
    ("a cat :1.2 AND a dog :0.8", [WeightedPrompt("a cat", 1.2), WeightedPrompt("a dog", 0.8)]),
    (
        "a cat :1.2 AND a dog AND a penguin :2.2",
        [WeightedPrompt("a cat", 1.2), WeightedPrompt("a dog"), WeightedPrompt("a penguin", 2.2)],
    ),
    ("ANDROID ANDY and me", [WeightedPrompt("ANDROID ANDY and me")]),
    ("x_AND_y", [WeightedPrompt("x_AND_y")]),
    ("a,AND,b", [WeightedPrompt("a,"), WeightedPrompt(",b")]),
    ("a AND AND b", [WeightedPrompt("a"), WeightedPrompt(""), WeightedPrompt("b")]),
    ("AND", [WeightedPrompt(""), WeightedPrompt("")]),
    ("a:b", [WeightedPrompt("a:b")]),
    ("a:b:0.5", [WeightedPrompt("a:b", 0.5)]),
    ("a : -0.5", [WeightedPrompt("a", -0.5)]),
    ("a:1.", [WeightedPrompt("a", 1.0)]),
    ("a:1e3", [WeightedPrompt("a:1e3")]),
    ("a:" + "9" * 400, [WeightedPrompt("a:" + "9" * 400)]),
    ("(a:1.2)", [WeightedPrompt("(a:1.2)")]),
    ("  spaced  ", [WeightedPrompt("spaced")]),
]


@pytest.mark.parametrize(("text", "expected"), SPLIT_AND_CASES)
def test_split_and(text: str, expected: list[WeightedPrompt]) -> None:
    assert split_and(text) == expected


LORA_CASES: list[tuple[str, str, list[LoraTag]]] = [
    ("no tags", "no tags", []),
    ("a <lora:x:0.5> b", "a  b", [LoraTag("x", 0.5, 0.5)]),
    ("<lora:x>", "", [LoraTag("x")]),
    ("<lora:x:0.5:0.2>", "", [LoraTag("x", 0.5, 0.2)]),
    ("<lora:x:-1>", "", [LoraTag("x", -1.0, -1.0)]),
    ("<lora: x : 0.7 >", "", [LoraTag("x", 0.7, 0.7)]),
    ("<lora:x:te=0.3>", "", [LoraTag("x", 0.3, 0.3)]),
    ("<lora:x:0.8:unet=0.5>", "", [LoraTag("x", 0.8, 0.5)]),
    ("<lyco:y:1>, z", ", z", [LoraTag("y")]),
    ("<lora:a:1><lora:b:2>", "", [LoraTag("a"), LoraTag("b", 2.0, 2.0)]),
    ("<hypernet:x:1> <lora:z:1>", "<hypernet:x:1> ", [LoraTag("z")]),
    ("<LORA:x:1> <lora:x:1", "<LORA:x:1> <lora:x:1", []),
    ("<lora:> <> <:x> a<b", "<lora:> <> <:x> a<b", []),
    ("[<lora:x:1>:b:5]", "[:b:5]", [LoraTag("x")]),
]


@pytest.mark.parametrize(("text", "expected_text", "expected_loras"), LORA_CASES)
def test_extract_loras(text: str, expected_text: str, expected_loras: list[LoraTag]) -> None:
    assert extract_loras(text) == (expected_text, expected_loras)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a <lora:x:abc> b", "<lora:x:abc>: the weight 'abc' is not a number"),
        ("<lora:x:1:high>", "<lora:x:1:high>: the weight 'high' is not a number"),
        ("<lyco:x:inf>", "<lyco:x:inf>"),
        ("<lora:x:te=nan>", "<lora:x:te=nan>"),
        ("<lora:x:>", "<lora:x:>"),
        ("<lora: :1>", "has no name"),
        ("<lora:x:1:2:3>", "at most two weights"),
        ("<lora:x:1:dyn=4>", "unsupported option 'dyn'"),
    ],
)
def test_bad_lora_tags_raise(text: str, message: str) -> None:
    with pytest.raises(PromptSyntaxError, match=message.replace("[", r"\[")) as raised:
        extract_loras(text)
    assert isinstance(raised.value, InvalidRequestError)


def test_split_whole_word() -> None:
    assert split_whole_word("xANDy AND z ANDAND", "AND") == ["xANDy ", " z ANDAND"]


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20_000,
        "(" * 20_000,
        "]" * 20_000 + ")" * 20_000,
        "[a:" * 5_000,
        "[a|" * 5_000 + "]" * 5_000,
        "(a:" * 5_000,
        "(a" * 5_000 + ":1)" * 5_000,
        "\\" * 20_000,
        "<lora:" * 5_000,
        "<" + "a" * 20_000,
        "ANDAND" * 5_000,
        "BREAK " * 5_000,
        ":" * 20_000 + ")",
    ],
)
def test_pathological_inputs_give_well_formed_results(text: str) -> None:
    # How long these take is measured by `python -m bench.prompts`.
    emphasis = parse_emphasis(text)
    assert emphasis and all(math.isfinite(weight) for _, weight in emphasis)
    schedule = prompt_schedule(text, 150)
    assert schedule and schedule[-1][0] == 150
    assert split_and(text)
    remaining, _ = extract_loras(text)
    assert len(remaining) <= len(text)


# Fuzzing: arbitrary text, weighted towards the characters and words the syntax uses.
_SYNTAX_CHARS = "ab ,()[]:|\\<>.0123456789-+=_e"
_SYNTAX_WORDS = ["BREAK", "AND", "lora", "<lora:x:1>", "[a:b:0.5]", "(x:1.5)", "[c|d]", "\n"]
prompt_texts = st.lists(
    st.one_of(
        st.sampled_from(list(_SYNTAX_CHARS)),
        st.sampled_from(_SYNTAX_WORDS),
        st.characters(),
    ),
    max_size=80,
).map("".join)
plain_texts = st.text(
    alphabet=st.characters(blacklist_characters="()[]\\", blacklist_categories=["Cs"]),
    max_size=60,
).filter(lambda text: "BREAK" not in text)

FUZZ = settings()  # examples and deadline: the profile in conftest.py


@FUZZ
@given(prompt_texts)
def test_fuzz_parse_emphasis(text: str) -> None:
    result = parse_emphasis(text)
    assert result
    for run, weight in result:
        assert math.isfinite(weight)
        assert run or result == [("", 1.0)]
    # Equal neighbours merge, except BREAK markers.
    for (first_text, first), (second_text, second) in pairwise(result):
        assert first != second or BREAK in (first_text, second_text)


@FUZZ
@given(plain_texts)
def test_fuzz_plain_text_has_weight_one(text: str) -> None:
    assert parse_emphasis(text) == [(text, 1.0)]


@FUZZ
@given(prompt_texts, st.integers(min_value=1, max_value=150))
def test_fuzz_prompt_schedule(text: str, steps: int) -> None:
    schedule = prompt_schedule(text, steps)
    assert schedule
    ends = [end for end, _ in schedule]
    assert ends == sorted(set(ends))
    assert ends[0] >= 1
    assert ends[-1] == steps
    texts = [part for _, part in schedule]
    assert all(first != second for first, second in pairwise(texts))
    if "[" not in text:
        assert schedule == [(steps, text)]


@FUZZ
@given(prompt_texts)
def test_fuzz_split_and(text: str) -> None:
    parts = split_and(text)
    assert len(parts) == len(split_whole_word(text, "AND"))
    assert all(math.isfinite(part.weight) for part in parts)
    assert all(part.text == part.text.strip() for part in parts)


@FUZZ
@given(prompt_texts)
def test_fuzz_extract_loras(text: str) -> None:
    try:
        remaining, loras = extract_loras(text)
    except PromptSyntaxError:
        return
    assert len(remaining) <= len(text)
    for lora in loras:
        assert lora.name
        assert math.isfinite(lora.te_weight)
        assert math.isfinite(lora.unet_weight)
    if "<" not in text:
        assert (remaining, loras) == (text, [])
