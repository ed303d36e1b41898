"""The vocabulary of the /imagine options: style, shot, lighting and quality fragments.

The entries come from the author's notes (`vocabulary.toml` beside this module). An operator may
put a `vocabulary.toml` of the same format in the models folder: an entry with an existing id
replaces it, a new id adds one, and `remove = true` removes one. `VocabularyStore` re-reads that
file when it changes, so an edit takes effect with no restart.

The notes give prompt words priority by position, so `Vocabulary.compose` keeps the user's own
words first and appends the options after them: style, shot, lighting, then quality.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from pipeline.errors import EaselError, InvalidRequestError
from pipeline.prompts.composable import split_and

log = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = ("quality", "face", "style", "shot", "composition", "lighting")
# The order `compose` appends fragments in, after the user's own words (the subject).
COMPOSE_ORDER: tuple[str, ...] = ("face", "style", "shot", "composition", "lighting", "quality")
STYLE_GROUPS: tuple[str, ...] = ("movement", "studio", "technique")
SHOT_GROUPS: tuple[str, ...] = ("distance", "angle")

PACKAGED_FILE = Path(__file__).with_name("vocabulary.toml")
OVERRIDE_FILE_NAME = "vocabulary.toml"

_KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_REQUIRED_FIELDS: tuple[str, ...] = ("id", "en", "ko", "prompt")
_OPTIONAL_FIELDS: tuple[str, ...] = ("group", "remove")
_MAX_ECHOED_CHARS = 60
# A1111 emphasis around a fragment, "(pixel art:1.2)" or "[pixel art]", ignored when de-duplicating.
_OPENING = "([{"
_CLOSING = ")]}"
_WEIGHT_CHARS = frozenset("0123456789.")


@dataclass(frozen=True)
class Label:
    en: str
    ko: str

    def text(self, locale: str) -> str:
        return self.ko if locale == "ko" else self.en


# Headings for option menus; the Korean ones are the author's own where the notes have them.
CATEGORY_LABELS: Mapping[str, Label] = {
    "quality": Label("Quality", "품질"),
    "face": Label("Face and character", "얼굴과 캐릭터"),
    "style": Label("Style", "화풍"),
    "shot": Label("Shot", "시점"),
    "composition": Label("Light and composition", "빛 및 구도"),
    "lighting": Label("Lighting", "조명"),
}
GROUP_LABELS: Mapping[str, Label] = {
    "movement": Label("Movements", "스타일"),
    "studio": Label("Anime studios and games", "애니메이션"),
    "technique": Label("Painting techniques", "페인팅 기법"),
    "distance": Label("Distance", "거리"),
    "angle": Label("Angle", "각도"),
}


@dataclass(frozen=True)
class VocabularyEntry:
    category: str
    id: str
    en: str
    ko: str
    prompt: str
    group: str | None = None

    def label(self, locale: str) -> str:
        """The Korean label for locale "ko", the English one otherwise."""
        return self.ko if locale == "ko" else self.en


@dataclass(frozen=True)
class VocabularyRemoval:
    """An override file's `remove = true` entry."""

    category: str
    id: str


VocabularyChange: TypeAlias = VocabularyEntry | VocabularyRemoval


class VocabularyFileError(EaselError):
    """A vocabulary file that cannot be used: bad TOML, a missing field, a duplicate id..."""


class UnknownVocabularyId(InvalidRequestError):
    """An option value that is no id of its category."""

    def __init__(self, category: str, given_id: str, suggestion: str | None) -> None:
        self.category = category
        self.given_id = given_id
        self.suggestion = suggestion
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        hint_ko = f" {suggestion!r}을(를) 찾으셨나요?" if suggestion else ""
        super().__init__(
            f"Unknown {category} {_echo(given_id)}.{hint}",
            ko=f"알 수 없는 {category} 값입니다: {_echo(given_id)}.{hint_ko}",
        )


def normalize_id(text: str) -> str:
    """The lookup key of an id: "Pixel Art", "pixel_art" and "PIXEL-ART" are all "pixel-art"."""
    text = text.casefold().replace("'", "").replace("’", "")
    return re.sub(r"[^0-9a-z]+", "-", text).strip("-")


class Vocabulary:
    """Entries by category, in file order; ids are unique within a category."""

    def __init__(self, entries: Iterable[VocabularyEntry]) -> None:
        self._entries: dict[str, dict[str, VocabularyEntry]] = {name: {} for name in CATEGORIES}
        for entry in entries:
            by_id = self._entries[_known_category(entry.category)]
            if entry.id in by_id:
                raise VocabularyFileError(f"Duplicate {entry.category} id {entry.id!r}.")
            by_id[entry.id] = entry

    @classmethod
    def load(cls, override: Path | None = None) -> Vocabulary:
        """The packaged vocabulary, changed by the override file when one is given and exists."""
        entries = list(_packaged_entries())
        if override is not None and override.is_file():
            entries = _apply(entries, read_vocabulary_file(override, packaged=False))
        return cls(entries)

    def entries(self, category: str) -> list[VocabularyEntry]:
        return list(self._entries[_known_category(category)].values())

    def ids(self, category: str) -> list[str]:
        return list(self._entries[_known_category(category)])

    def find(self, category: str, id: str) -> VocabularyEntry | None:
        """By id, or by its English or Korean label (`--style 수채화` works too)."""
        entries = self._entries[_known_category(category)]
        found = entries.get(normalize_id(id))
        if found is not None:
            return found
        label = _label_key(id)
        return next(
            (
                entry
                for entry in entries.values()
                if label in (_label_key(entry.en), _label_key(entry.ko))
            ),
            None,
        )

    def get(self, category: str, id: str) -> VocabularyEntry:
        entry = self.find(category, id)
        if entry is None:
            raise UnknownVocabularyId(category, id, self.closest(category, id))
        return entry

    def closest(self, category: str, id: str) -> str | None:
        """The id most like `id` in the category, or None when none is close."""
        key = normalize_id(id)
        matches = difflib.get_close_matches(key, self.ids(category), n=1, cutoff=0.6)
        return matches[0] if matches else None

    def compose(
        self,
        prompt: str,
        *,
        style: str | None = None,
        shot: str | None = None,
        lighting: str | None = None,
        quality: str | None = None,
        face: str | None = None,
        composition: str | None = None,
    ) -> str:
        """The user's words, then ", fragment" for each option given, in COMPOSE_ORDER: face,
        style, shot, composition, lighting, quality. A fragment the prompt already holds (as a
        comma-separated part) is not repeated.
        """
        chosen = {
            "face": face,
            "style": style,
            "shot": shot,
            "composition": composition,
            "lighting": lighting,
            "quality": quality,
        }
        fragments = [
            self.get(category, chosen[category]).prompt
            for category in COMPOSE_ORDER
            if chosen[category] is not None
        ]
        parts = split_and(prompt)
        if len(parts) == 1:
            return _append_fragments(prompt, fragments)
        # Composable prompts: every part gets the fragments, before its own `:weight`.
        return " AND ".join(
            _append_fragments(part.text, fragments)
            + (f" :{part.weight:g}" if part.weight != 1.0 else "")
            for part in parts
        )


def _label_key(text: str) -> str:
    return "".join(text.casefold().split())


def _known_category(category: str) -> str:
    if category not in CATEGORIES:
        raise ValueError(
            f"Unknown vocabulary category {category!r}; one of {', '.join(CATEGORIES)}."
        )
    return category


def _append_fragments(prompt: str, fragments: list[str]) -> str:
    head = _strip_edge_commas(prompt)
    parts = [head] if head else []
    present = {key for part in parts for key in _fragment_keys(part)}
    for fragment in fragments:
        keys = _fragment_keys(fragment)
        if keys and keys <= present:
            continue
        parts.append(fragment)
        present |= keys
    return ", ".join(parts)


def _is_edge_char(char: str) -> bool:
    return char == "," or char.isspace()


def _strip_edge_commas(text: str) -> str:
    """`text` without leading and trailing commas and whitespace, in one pass."""
    start, end = 0, len(text)
    while start < end and _is_edge_char(text[start]):
        start += 1
    while end > start and _is_edge_char(text[end - 1]):
        end -= 1
    return text[start:end]


def _fragment_keys(text: str) -> set[str]:
    """The comma-separated parts of a prompt, compared without case, spacing or emphasis."""
    keys: set[str] = set()
    for part in text.split(","):
        part = " ".join(part.split()).casefold()
        part = _without_emphasis(part)
        if part:
            keys.add(part)
    return keys


def _without_emphasis(part: str) -> str:
    """`part` without surrounding brackets and a `:weight` inside them: `((red:1.2))` is `red`.

    A single pass over the text (a regular expression for this backtracks quadratically on a
    long run of brackets).
    """
    inner = part.lstrip(_OPENING)
    if len(inner) == len(part):
        return part
    stripped = inner.rstrip(_CLOSING)
    if len(stripped) == len(inner):
        return part
    inner = stripped.rstrip()
    colon = inner.rfind(":")
    weight = inner[colon + 1 :].strip() if colon != -1 else ""
    if weight and all(char in _WEIGHT_CHARS for char in weight):
        inner = inner[:colon]
    return inner.strip()


def _apply(
    entries: list[VocabularyEntry], changes: list[VocabularyChange]
) -> list[VocabularyEntry]:
    """Replaces entries in place, appends new ones and drops removed ones (unknown: no-op)."""
    merged = {(entry.category, entry.id): entry for entry in entries}
    for change in changes:
        if isinstance(change, VocabularyRemoval):
            merged.pop((change.category, change.id), None)
        else:
            merged[(change.category, change.id)] = change
    return list(merged.values())


@functools.cache
def _packaged_entries() -> tuple[VocabularyEntry, ...]:
    changes = read_vocabulary_file(PACKAGED_FILE, packaged=True)
    return tuple(change for change in changes if isinstance(change, VocabularyEntry))


def read_vocabulary_file(path: Path, *, packaged: bool) -> list[VocabularyChange]:
    """Parses and checks a vocabulary file. The packaged file must use kebab-case ids and has no
    removals; an override file's ids are normalized ("Pixel Art" is "pixel-art")."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise VocabularyFileError(f"{path}: cannot read it: {error}") from error
    changes: list[VocabularyChange] = []
    for category, tables in data.items():
        if category not in CATEGORIES:
            raise VocabularyFileError(
                f"{path}: unknown category {category!r}; one of {', '.join(CATEGORIES)}."
            )
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise VocabularyFileError(
                f"{path}: {category} must be an array of tables [[{category}]]."
            )
        changes.extend(_parse_category(path, category, tables, packaged=packaged))
    return changes


def _parse_category(
    path: Path, category: str, tables: list[dict[str, object]], *, packaged: bool
) -> list[VocabularyChange]:
    changes: list[VocabularyChange] = []
    seen: set[str] = set()
    for number, table in enumerate(tables, start=1):
        where = f"{path}: {category} entry {number}"
        change = _parse_entry(where, category, table, packaged=packaged)
        if change.id in seen:
            raise VocabularyFileError(f"{where}: duplicate id {change.id!r}.")
        seen.add(change.id)
        changes.append(change)
    return changes


def _parse_entry(
    where: str, category: str, table: dict[str, object], *, packaged: bool
) -> VocabularyChange:
    unknown = sorted(set(table) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise VocabularyFileError(f"{where}: unknown field {unknown[0]!r}.")
    entry_id = _entry_id(where, table, packaged=packaged)
    where = f"{where} ({entry_id!r})"
    remove = table.get("remove", False)
    if not isinstance(remove, bool):
        raise VocabularyFileError(f"{where}: remove must be true or false.")
    if remove:
        if packaged:
            raise VocabularyFileError(f"{where}: the packaged file cannot remove entries.")
        return VocabularyRemoval(category, entry_id)
    en, ko, prompt = (_text_field(where, table, name) for name in ("en", "ko", "prompt"))
    group = _text_field(where, table, "group") if "group" in table else None
    return VocabularyEntry(category, entry_id, en, ko, " ".join(prompt.split()), group)


def _entry_id(where: str, table: dict[str, object], *, packaged: bool) -> str:
    raw = _text_field(where, table, "id")
    entry_id = raw if packaged else normalize_id(raw)
    if not _KEBAB.match(entry_id):
        raise VocabularyFileError(
            f"{where}: id {raw!r} is not kebab-case (lowercase ASCII letters, digits and dashes)."
        )
    return entry_id


def _text_field(where: str, table: dict[str, object], name: str) -> str:
    value = table.get(name)
    if value is None:
        raise VocabularyFileError(f"{where}: missing field {name!r}.")
    if not isinstance(value, str) or not value.strip():
        raise VocabularyFileError(f"{where}: {name} must be a non-empty string.")
    return value.strip()


def _echo(text: str) -> str:
    """Quote user input for a one-line message: escaped, and cut if it is long."""
    if len(text) > _MAX_ECHOED_CHARS:
        text = text[:_MAX_ECHOED_CHARS] + "..."
    return repr(text)


@dataclass(frozen=True)
class _FileState:
    """What the override file looked like when last read; None fields mean it was absent."""

    mtime_ns: int | None
    size: int | None


def _file_state(path: Path) -> _FileState:
    try:
        stat = path.stat()
    except OSError:
        return _FileState(None, None)
    return _FileState(stat.st_mtime_ns, stat.st_size)


class VocabularyStore:
    """The current vocabulary for a models folder, re-read when its override file changes.

    A broken override file keeps the last good vocabulary (the packaged one at first), logs a
    warning and leaves the error text in `last_error` until the file is fixed or removed.
    """

    def __init__(self, models_dir: Path) -> None:
        self.override_path = models_dir / OVERRIDE_FILE_NAME
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._state: _FileState | None = None
        self._vocabulary = Vocabulary(_packaged_entries())

    def current(self) -> Vocabulary:
        with self._lock:
            state = _file_state(self.override_path)
            if state != self._state:
                self._state = state
                self._reload(present=state.mtime_ns is not None)
            return self._vocabulary

    def reload(self) -> str | None:
        """Read the override file now, changed or not; the error text when it is broken (the
        last good vocabulary stays), else None."""
        with self._lock:
            self._state = _file_state(self.override_path)
            self._reload(present=self._state.mtime_ns is not None)
            return self.last_error

    def _reload(self, *, present: bool) -> None:
        try:
            self._vocabulary = Vocabulary.load(self.override_path if present else None)
        except VocabularyFileError as error:
            self.last_error = str(error)
            log.warning("Keeping the last good vocabulary: %s", error)
            return
        self.last_error = None
        if present:
            log.info("Vocabulary override loaded from %s", self.override_path)
