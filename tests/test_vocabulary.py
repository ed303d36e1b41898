"""The /imagine vocabulary: complete against the author's notes, and its lookup, compose and
operator override behave as documented."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from pipeline.errors import InvalidRequestError
from pipeline.prompts.vocabulary import (
    CATEGORIES,
    COMPOSE_ORDER,
    PACKAGED_FILE,
    STYLE_GROUPS,
    UnknownVocabularyId,
    Vocabulary,
    VocabularyEntry,
    VocabularyFileError,
    VocabularyStore,
    read_vocabulary_file,
)

NOTES = Path(__file__).resolve().parents[2] / "shared" / "seed" / "NOTES.en.md"

# Each list of the notes' vocabulary section: its label, the category it feeds and the style
# group (None where the category has no groups that must match).
NOTES_LISTS: dict[str, tuple[str, str | None]] = {
    "Quality tags": ("quality", None),
    "Face and character": ("face", None),
    "Movements": ("style", "movement"),
    "Anime studios and games": ("style", "studio"),
    "Painting techniques": ("style", "technique"),
    "Shot distance": ("shot", None),
    "Angle": ("shot", None),
    "Light and composition": ("composition", None),
    "Lighting": ("lighting", None),
}
# Labels in the section that introduce sub-lists rather than hold items.
HEADING_LABELS = {"Style", "Viewpoint and light"}
# Korean labels that may stay in Latin script: names usually written that way in Korean too.
ACCEPTED_PROPER_NOUNS = {"A-1 Pictures", "P.A.WORKS"}
HANGUL = re.compile(r"[\uac00-\ud7a3]")
KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def notes_lists() -> dict[str, list[str]]:
    """The item lists of NOTES.en.md's "Vocabulary" section, by label, parentheticals dropped."""
    if not NOTES.is_file():
        pytest.skip(f"the author's notes are not at {NOTES} (shared/ is copied beside the repo)")
    text = NOTES.read_text(encoding="utf-8")
    start = text.index("### Vocabulary")
    end = text.index("\n## ", start)
    section = re.sub(r"\([^()]*\)", "", text[start:end].split("\n", 1)[1], flags=re.DOTALL)
    lists: dict[str, list[str]] = {}
    label = ""
    for line in _logical_lines(section):
        heading, colon, rest = line.partition(":")
        if colon:
            label, line = heading.strip(), rest
        items = [item.strip().rstrip(".").strip() for item in line.split(",")]
        lists.setdefault(label, []).extend(item for item in items if item)
    return lists


def _logical_lines(section: str) -> list[str]:
    """Lines with their indented continuations joined, bullet marks removed."""
    lines: list[str] = []
    for raw in section.splitlines():
        if raw.startswith("  ") and lines:
            lines[-1] += " " + raw.strip()
        elif raw.strip():
            lines.append(raw.strip().removeprefix("- "))
    return lines


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return Vocabulary.load()


def test_notes_parse_into_the_expected_lists() -> None:
    lists = notes_lists()
    assert set(lists) - HEADING_LABELS == set(NOTES_LISTS), "the notes' lists changed shape"
    assert not any(lists.get(label) for label in HEADING_LABELS)
    # Spot checks that the parser splits what the original ran together and drops the notes.
    assert {"final fantasy", "arknights"} <= set(lists["Anime studios and games"])
    assert {"oil painting", "watercolor"} <= set(lists["Painting techniques"])
    assert "best quality" in lists["Quality tags"]
    assert sum(len(items) for items in lists.values()) == 114


@pytest.mark.parametrize("label", sorted(NOTES_LISTS))
def test_every_notes_item_is_an_entry_of_its_category(vocabulary: Vocabulary, label: str) -> None:
    category, group = NOTES_LISTS[label]
    entries = vocabulary.entries(category)
    for item in notes_lists()[label]:
        matching = [entry for entry in entries if entry.prompt in (item, f"style of {item}")]
        assert matching, f"{label}: {item!r} is no {category} entry's prompt"
        if group is not None:
            assert any(entry.group == group for entry in matching), f"{item!r} not in {group}"


def test_category_counts(vocabulary: Vocabulary) -> None:
    counts = {category: len(vocabulary.entries(category)) for category in CATEGORIES}
    assert counts == {
        "quality": 19,
        "face": 9,
        "style": 48,
        "shot": 20,
        "composition": 9,
        "lighting": 10,
    }


def test_words_in_two_lists_have_an_entry_in_each(vocabulary: Vocabulary) -> None:
    assert vocabulary.get("quality", "realism").prompt == "realism"
    assert vocabulary.get("style", "realism").prompt == "style of realism"
    for category in ("quality", "lighting"):
        assert vocabulary.get(category, "cinematic-lighting").prompt == "cinematic lighting"
        assert vocabulary.get(category, "brilliant-photo").prompt == "brilliant photo"
    for category in ("quality", "composition"):
        assert vocabulary.get(category, "beautiful-composition").prompt == "beautiful composition"
        assert vocabulary.get(category, "sharp-focus").prompt == "sharp focus"


def test_typos_of_the_original_are_corrected(vocabulary: Vocabulary) -> None:
    prompts = {entry.prompt for category in CATEGORIES for entry in vocabulary.entries(category)}
    for typo in ("best quailty", "extreamly detailed", "brillant photo", "find detailed face"):
        assert typo not in prompts
    for typo in ("far long short", "west shot", "beatiful composition"):
        assert typo not in prompts
    assert vocabulary.get("shot", "extreme-long-shot").prompt == "extreme long shot"
    assert vocabulary.get("shot", "waist-shot").prompt == "waist shot"


def test_ids_are_kebab_case_and_unique_per_category() -> None:
    changes = read_vocabulary_file(PACKAGED_FILE, packaged=True)
    for category in CATEGORIES:
        ids = [change.id for change in changes if change.category == category]
        assert ids, f"no {category} entries"
        assert len(ids) == len(set(ids)), f"duplicate {category} ids"
        assert all(KEBAB.match(entry_id) for entry_id in ids), ids


def test_every_entry_has_a_korean_label(vocabulary: Vocabulary) -> None:
    for category in CATEGORIES:
        for entry in vocabulary.entries(category):
            assert entry.ko.strip(), entry
            assert HANGUL.search(entry.ko) or entry.ko in ACCEPTED_PROPER_NOUNS, entry


def test_labels_are_unique_per_category_in_each_locale(vocabulary: Vocabulary) -> None:
    for category in CATEGORIES:
        for locale in ("en", "ko"):
            labels = [entry.label(locale) for entry in vocabulary.entries(category)]
            assert len(labels) == len(set(labels)), (category, locale)


def test_style_entries_have_a_group_and_the_to_do_styles_exist(vocabulary: Vocabulary) -> None:
    assert all(entry.group in STYLE_GROUPS for entry in vocabulary.entries("style"))
    assert vocabulary.get("style", "pixel-art").prompt == "pixel art"
    assert vocabulary.get("style", "voxel-art").prompt == "voxel art"
    assert vocabulary.get("style", "kyoto-animation").prompt == "style of kyoto animation"
    assert vocabulary.get("style", "art-nouveau").prompt == "style of art nouveau"
    assert vocabulary.get("style", "love-live").prompt == "style of love live!"
    assert vocabulary.get("style", "a-1-pictures").group == "studio"
    assert vocabulary.get("style", "watercolor-painting").prompt == "watercolor painting"


def test_label_picks_the_locale() -> None:
    entry = VocabularyEntry(
        "style", "pixel-art", "Pixel art", "픽셀 아트", "pixel art", "technique"
    )
    assert entry.label("ko") == "픽셀 아트"
    assert entry.label("en") == "Pixel art"
    assert entry.label("fr") == "Pixel art"


def test_compose_appends_style_shot_lighting_quality_after_the_subject(
    vocabulary: Vocabulary,
) -> None:
    assert COMPOSE_ORDER == ("face", "style", "shot", "composition", "lighting", "quality")
    composed = vocabulary.compose(
        "a castle on a hill",
        quality="masterpiece",
        lighting="soft-lighting",
        shot="wide-shot",
        style="watercolor",
    )
    assert composed == "a castle on a hill, watercolor, wide shot, soft lighting, masterpiece"
    assert vocabulary.compose("a cat") == "a cat"
    assert vocabulary.compose("a cat", shot="bust-shot") == "a cat, bust shot"


def test_compose_skips_fragments_the_prompt_already_has(vocabulary: Vocabulary) -> None:
    composed = vocabulary.compose("a cat, Pixel Art,", style="pixel-art", quality="masterpiece")
    assert composed == "a cat, Pixel Art, masterpiece"
    emphasised = vocabulary.compose("a cat, (masterpiece:1.2)", quality="masterpiece")
    assert emphasised == "a cat, (masterpiece:1.2)"
    # Only whole comma-separated parts count: "long shot" is not in "extreme long shot".
    assert vocabulary.compose("extreme long shot", shot="long-shot") == (
        "extreme long shot, long shot"
    )
    # The same words from two options are added once.
    both = vocabulary.compose("a cat", lighting="cinematic-lighting", quality="cinematic-lighting")
    assert both == "a cat, cinematic lighting"


def test_compose_with_an_empty_prompt_gives_just_the_fragments(vocabulary: Vocabulary) -> None:
    assert vocabulary.compose("", style="pixel-art", quality="8k") == "pixel art, 8k"
    assert vocabulary.compose("  ", shot="closeup") == "closeup"


def test_lookup_ignores_case_spaces_and_underscores(vocabulary: Vocabulary) -> None:
    for spelling in ("pixel-art", "Pixel Art", "pixel_art", " PIXEL-ART "):
        assert vocabulary.get("style", spelling).id == "pixel-art"
    assert vocabulary.get("style", "Love Live!").id == "love-live"
    assert vocabulary.get("style", "P.A. Works").id == "p-a-works"
    assert vocabulary.find("style", "no such style") is None


def test_labels_work_as_ids_in_both_languages(vocabulary: Vocabulary) -> None:
    watercolor = vocabulary.get("style", "watercolor")
    assert vocabulary.get("style", watercolor.ko).id == "watercolor"
    assert vocabulary.get("style", "pixelart").id == "pixel-art"  # the label without its space


def test_styles_reach_every_part_of_a_composed_prompt(vocabulary: Vocabulary) -> None:
    composed = vocabulary.compose("a cat AND a dog :1.5", style="watercolor")
    assert composed == "a cat, watercolor AND a dog, watercolor :1.5"


def test_unknown_id_suggests_the_closest(vocabulary: Vocabulary) -> None:
    with pytest.raises(UnknownVocabularyId) as raised:
        vocabulary.get("style", "pixl-art")
    error = raised.value
    assert isinstance(error, InvalidRequestError)
    assert (error.category, error.given_id, error.suggestion) == ("style", "pixl-art", "pixel-art")
    assert "pixel-art" in str(error)
    assert "\n" not in str(error)
    assert vocabulary.closest("shot", "extreme long shots") == "extreme-long-shot"
    assert vocabulary.closest("lighting", "zzzzqqq") is None
    with pytest.raises(UnknownVocabularyId) as raised:
        vocabulary.compose("a cat", quality="zzzzqqq")
    assert raised.value.suggestion is None


def test_unknown_category_is_a_programming_error(vocabulary: Vocabulary) -> None:
    with pytest.raises(ValueError, match="category"):
        vocabulary.entries("mood")


def write_override(models_dir: Path, text: str, *, mtime: int | None = None) -> Path:
    path = models_dir / "vocabulary.toml"
    path.write_text(text, encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


OVERRIDE = """
[[style]]
id = "pixel-art"
group = "technique"
en = "Pixel art (16-bit)"
ko = "16비트 픽셀 아트"
prompt = "16-bit pixel art"

[[style]]
id = "Claymation"
en = "Claymation"
ko = "클레이 애니메이션"
prompt = "claymation"

[[style]]
id = "gothic"
remove = true

[[lighting]]
id = "neon-lighting"
en = "Neon lighting"
ko = "네온 조명"
prompt = "neon lighting"
"""


def test_override_file_adds_replaces_and_removes(tmp_path: Path) -> None:
    write_override(tmp_path, OVERRIDE)
    vocabulary = Vocabulary.load(tmp_path / "vocabulary.toml")
    packaged = Vocabulary.load()
    assert vocabulary.get("style", "pixel-art").prompt == "16-bit pixel art"
    assert (
        vocabulary.ids("style").index("pixel-art") == packaged.ids("style").index("pixel-art") - 1
    )
    assert vocabulary.get("style", "claymation").ko == "클레이 애니메이션"
    assert vocabulary.ids("style")[-1] == "claymation"
    assert vocabulary.find("style", "gothic") is None
    assert vocabulary.get("lighting", "neon-lighting").prompt == "neon lighting"
    assert len(vocabulary.entries("style")) == len(packaged.entries("style"))
    assert vocabulary.entries("quality") == packaged.entries("quality")
    assert packaged.get("style", "pixel-art").prompt == "pixel art"


def test_store_reloads_the_override_when_it_changes(tmp_path: Path) -> None:
    store = VocabularyStore(tmp_path)
    assert store.current().find("lighting", "neon-lighting") is None
    write_override(tmp_path, OVERRIDE, mtime=1_700_000_000)
    assert store.current().get("lighting", "neon-lighting").prompt == "neon lighting"
    first = store.current()
    assert store.current() is first  # unchanged file: not re-read

    edited = OVERRIDE.replace('prompt = "neon lighting"', 'prompt = "neon glow"')
    write_override(tmp_path, edited, mtime=1_700_000_100)
    assert store.current().get("lighting", "neon-lighting").prompt == "neon glow"

    (tmp_path / "vocabulary.toml").unlink()
    assert store.current().find("lighting", "neon-lighting") is None
    assert store.current().get("style", "gothic").prompt == "style of gothic"
    assert store.last_error is None


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        ("[[style]\nid = ", "cannot read"),
        ('[[style]]\nid = "x"\nen = "X"\nko = "엑스"\n', "missing field 'prompt'"),
        ('[[mood]]\nid = "x"\nen = "X"\nko = "엑스"\nprompt = "x"\n', "unknown category"),
    ],
)
def test_a_broken_override_keeps_the_last_good_vocabulary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str, complaint: str
) -> None:
    store = VocabularyStore(tmp_path)
    write_override(tmp_path, OVERRIDE, mtime=1_700_000_000)
    good = store.current()
    assert good.find("lighting", "neon-lighting") is not None

    write_override(tmp_path, broken, mtime=1_700_000_100)
    with caplog.at_level(logging.WARNING, logger="pipeline.prompts.vocabulary"):
        assert store.current() is good
    assert store.last_error is not None
    assert complaint in store.last_error
    assert "vocabulary.toml" in store.last_error
    assert any(record.levelno == logging.WARNING for record in caplog.records)

    write_override(tmp_path, OVERRIDE, mtime=1_700_000_200)
    assert store.current().find("lighting", "neon-lighting") is not None
    assert store.last_error is None


def test_a_broken_override_at_start_falls_back_to_the_packaged_vocabulary(tmp_path: Path) -> None:
    write_override(tmp_path, "not toml at all [")
    store = VocabularyStore(tmp_path)
    assert store.current().get("style", "pixel-art").prompt == "pixel art"
    assert store.last_error is not None


ENTRY = 'en = "X"\nko = "엑스"\nprompt = "x"\n'


@pytest.mark.parametrize(
    ("text", "packaged", "complaint"),
    [
        (f'[[style]]\nid = "a"\n{ENTRY}[[style]]\nid = "a"\n{ENTRY}', True, "duplicate id 'a'"),
        (f'[[style]]\nid = "a"\n{ENTRY}[[style]]\nid = "A"\n{ENTRY}', False, "duplicate id 'a'"),
        (f'[[shot]]\nid = "Pixel Art"\n{ENTRY}', True, "not kebab-case"),
        (f'[[shot]]\nid = "a"\n{ENTRY}', True, ""),
        ('[[shot]]\nid = "a"\nen = "X"\nko = ""\nprompt = "x"\n', False, "ko must be"),
        ('[[shot]]\nen = "X"\nko = "엑스"\nprompt = "x"\n', False, "missing field 'id'"),
        (f'[[shot]]\nid = "a"\ngrup = "x"\n{ENTRY}', False, "unknown field 'grup'"),
        ('[[shot]]\nid = "a"\nremove = true\n', True, "cannot remove"),
        ('shot = "wide"\n', False, "array of tables"),
    ],
)
def test_file_validation(tmp_path: Path, text: str, packaged: bool, complaint: str) -> None:
    path = tmp_path / "vocabulary.toml"
    path.write_text(text, encoding="utf-8")
    if not complaint:
        assert [change.id for change in read_vocabulary_file(path, packaged=packaged)] == ["a"]
        return
    with pytest.raises(VocabularyFileError) as raised:
        read_vocabulary_file(path, packaged=packaged)
    message = str(raised.value)
    assert complaint in message
    assert str(path) in message


def test_override_ids_are_normalized(tmp_path: Path) -> None:
    path = write_override(tmp_path, f'[[style]]\nid = "Pixel Art"\n{ENTRY}')
    vocabulary = Vocabulary.load(path)
    assert vocabulary.get("style", "pixel-art").prompt == "x"
    assert vocabulary.ids("style").count("pixel-art") == 1
