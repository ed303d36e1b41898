"""Replies in the user's language, and the buttons under a grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.buttons import (
    MAX_ID_BYTES,
    Action,
    ButtonSpec,
    button_id,
    grid_buttons,
    parse_action,
    parse_button_id,
)
from bot.core.events import Reply
from bot.core.messages import LOCALES, Key, Localized, Message, catalog, placeholders, render
from bot.store import JobKind

# ---------------------------------------------------------------------------------- catalogs

KEYS = {key.value for key in Key}


@pytest.mark.parametrize("locale", LOCALES)
def test_every_key_is_in_the_catalog_and_nothing_else(locale: str) -> None:
    entries = set(catalog(locale))

    assert sorted(KEYS - entries) == [], f"missing from {locale}.toml"
    assert sorted(entries - KEYS) == [], f"in {locale}.toml but not a Key"


def test_the_catalogs_are_english_and_korean_files() -> None:
    assert set(LOCALES) == {"en", "ko"}
    locales = Path(__file__).parents[1] / "bot" / "core" / "locales"
    assert {path.stem for path in locales.glob("*.toml")} == set(LOCALES)


@pytest.mark.parametrize("key", list(Key), ids=str)
def test_each_key_has_the_same_placeholders_in_every_language(key: Key) -> None:
    english = placeholders(catalog("en")[key.value])
    for locale in LOCALES:
        assert placeholders(catalog(locale)[key.value]) == english, f"{key} in {locale}"


@pytest.mark.parametrize("key", list(Key), ids=str)
@pytest.mark.parametrize("locale", LOCALES)
def test_each_template_renders_with_its_placeholders(key: Key, locale: str) -> None:
    template = catalog(locale)[key.value]
    args = {name: f"<{name}>" for name in placeholders(template)}

    text = Message(key, args).render(locale)

    assert text.strip()
    for value in args.values():
        assert value in text


def test_placeholders_reads_format_fields() -> None:
    assert placeholders("Job #{job} is queued, position {position}.") == {"job", "position"}
    assert placeholders("no fields {{here}}") == set()


# ---------------------------------------------------------------------------------- render

CANCELLED = Message(Key.CANCELLED, {"job": 7})


@pytest.mark.parametrize("locale", ["ko", "ko-KR", "ko_KR", "KO", "ko_KR.UTF-8"])
def test_korean_locales_render_korean(locale: str) -> None:
    assert render(CANCELLED, locale) == "작업 #7이(가) 취소되었습니다."


@pytest.mark.parametrize("locale", ["en", "en-US", "fr", "fr_FR", "", None])
def test_other_locales_render_english(locale: str | None) -> None:
    assert render(CANCELLED, locale) == "Job #7 was cancelled."  # type: ignore[arg-type]


def test_nested_messages_render_in_the_same_language() -> None:
    message = Message(Key.ALREADY_FINISHED, {"job": 3, "status": Message(Key.STATUS_DONE)})

    assert message.render("ko-KR") == "작업 #3은(는) 이미 끝났습니다(완료)."
    assert message.render("fr") == "Job #3 has already ended (done)."


def test_localized_arguments_pick_the_language() -> None:
    message = Message(
        Key.INVALID_REQUEST, {"detail": Localized("too many steps", "단계가 너무 많음")}
    )

    assert message.render("ko_KR") == "이 요청은 실행할 수 없습니다: 단계가 너무 많음"
    assert message.render("en") == "This request cannot run: too many steps"
    assert message.render("de") == "This request cannot run: too many steps"


def test_reply_text_joins_the_message_and_its_lines_in_the_locale() -> None:
    reply = Reply(
        Message(Key.HISTORY_HEADER, {"page": 1, "pages": 2, "total": 12}),
        lines=(
            Message(
                Key.HISTORY_LINE,
                {
                    "job": 5,
                    "when": "2024-05-01",
                    "kind": Message(Key.KIND_UPSCALE),
                    "status": Message(Key.STATUS_QUEUED),
                    "prompt": "a castle",
                },
            ),
            Message(Key.HISTORY_EMPTY),
        ),
    )

    assert reply.text("en").split("\n") == [
        "Your jobs, page 1 of 2 (12 in all):",
        "#5 2024-05-01 upscale, queued: a castle",
        "You have no jobs yet. Try /imagine a castle on a hill.",
    ]
    assert reply.text("ko-KR").split("\n") == [
        "내 작업, 2쪽 중 1쪽 (모두 12개):",
        "#5 2024-05-01 업스케일, 대기 중: a castle",
        "아직 작업이 없습니다. /imagine a castle on a hill 처럼 시작해 보세요.",
    ]


def test_a_reply_without_lines_is_just_its_message() -> None:
    assert Reply(CANCELLED).text("ko") == "작업 #7이(가) 취소되었습니다."


# ---------------------------------------------------------------------------------- buttons

DISCORD_ROW = 5  # components per action row
DISCORD_ROWS = 5  # action rows per message
HUGE_ID = 2**63 - 1


def ids(rows: tuple[tuple[ButtonSpec, ...], ...]) -> list[list[str]]:
    return [[button.custom_id for button in row] for row in rows]


def test_a_four_image_grid_has_u_v_s_rows_then_reroll_and_remix() -> None:
    rows = grid_buttons(42, 4)

    assert [[button.text("en") for button in row] for row in rows] == [
        ["U1", "U2", "U3", "U4"],
        ["V1", "V2", "V3", "V4"],
        ["S1", "S2", "S3", "S4"],
        ["Reroll", "Remix"],
    ]
    assert ids(rows)[0] == ["easel:42:U1", "easel:42:U2", "easel:42:U3", "easel:42:U4"]
    assert ids(rows)[3] == ["easel:42:reroll", "easel:42:remix"]
    assert [button.text("ko") for button in rows[3]] == ["다시 생성", "리믹스"]


def test_a_one_image_grid_has_one_of_each() -> None:
    assert ids(grid_buttons(7, 1)) == [
        ["easel:7:U1"],
        ["easel:7:V1"],
        ["easel:7:S1"],
        ["easel:7:reroll", "easel:7:remix"],
    ]


@pytest.mark.parametrize("images", [1, 2, 3, 4, 8])
def test_grids_fit_discords_limits(images: int) -> None:
    rows = grid_buttons(HUGE_ID, images)

    assert 1 <= len(rows) <= DISCORD_ROWS
    assert all(1 <= len(row) <= DISCORD_ROW for row in rows)
    custom_ids = [button.custom_id for row in rows for button in row]
    assert len(custom_ids) == len(set(custom_ids))
    for custom_id in custom_ids:
        assert len(custom_id.encode()) <= MAX_ID_BYTES <= 64  # Telegram's callback_data limit
        assert custom_id.startswith(f"easel:{HUGE_ID}:")


@pytest.mark.parametrize("job_id", [1, 42, HUGE_ID])
@pytest.mark.parametrize("images", [1, 4])
def test_every_button_id_parses_back(job_id: int, images: int) -> None:
    for row in grid_buttons(job_id, images):
        for button in row:
            parsed = parse_button_id(button.custom_id)
            assert parsed is not None
            parsed_job, action = parsed
            assert parsed_job == job_id
            assert button_id(parsed_job, action) == button.custom_id


def test_button_actions_mean_what_their_labels_say() -> None:
    assert parse_button_id("easel:9:U2") == (9, Action(JobKind.UPSCALE, 1))
    assert parse_button_id("easel:9:V1") == (9, Action(JobKind.VARY_STRONG, 0))
    assert parse_button_id("easel:9:S4") == (9, Action(JobKind.VARY_SUBTLE, 3))
    assert parse_button_id("easel:9:reroll") == (9, Action(JobKind.REROLL))
    assert parse_button_id("easel:9:remix") == (9, Action(JobKind.REMIX))


@pytest.mark.parametrize(
    "custom_id",
    [
        "other:1:U1",
        "easel:x:U1",
        "easel:1:U9x",
        "easel:1:Z1",
        "easel:1:U0",
        "easel:-1:U1",
        "easel::U1",
        "easel:1",
        "easel:1:U1:extra",
        "easel:²:U1",  # str.isdigit() says yes, int() says no
        "easel:١:U1",  # an Arabic-Indic one: int() reads it, but it is not an id we made
        "",
    ],
)
def test_foreign_button_ids_are_not_ours(custom_id: str) -> None:
    assert parse_button_id(custom_id) is None


def test_parse_action_is_case_insensitive() -> None:
    assert parse_action("u2") == Action(JobKind.UPSCALE, 1)
    assert parse_action("V3") == Action(JobKind.VARY_STRONG, 2)
    assert parse_action(" s1 ") == Action(JobKind.VARY_SUBTLE, 0)
    assert parse_action("REROLL") == Action(JobKind.REROLL)
    assert parse_action("x1") is None
    assert parse_action("u") is None


def test_a_button_id_over_the_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        button_id(10**60, Action(JobKind.REROLL))
