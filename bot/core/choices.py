"""Pickable values for /imagine options: vocabulary entries, presets and samplers.

A front end that offers a picker (Discord's autocomplete, a Telegram keyboard) asks for the
choices that match what the user typed so far, labelled in the user's language. Every value
is one the core's option parser accepts (`--style <value>`), and labels and values fit the
platforms' limits (at most 100 characters; Discord shows at most 25 choices).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bot.core.messages import normalise_locale
from pipeline.control_names import PREPROCESSORS, find_controlnets
from pipeline.presets import Presets
from pipeline.prompts.vocabulary import Vocabulary, normalize_id
from pipeline.sampler_names import ALL_NAMES, normalize_sampler

MAX_CHOICES = 25
MAX_LABEL = 100
MAX_VALUE = 100
# The /imagine options that take a vocabulary id, and the category each one picks from.
VOCABULARY_OPTIONS = {
    "style": "style",
    "shot": "shot",
    "lighting": "lighting",
    "quality": "quality",
}


@dataclass(frozen=True)
class Choice:
    """One pickable value: `label` is what the user sees, `value` what the parser gets."""

    label: str
    value: str


@dataclass(frozen=True)
class _Candidate:
    choice: Choice
    texts: tuple[str, ...]  # what the typed text is matched against
    id: str = ""  # a vocabulary or preset id, also matched as an id ("pixel art": pixel-art)


def vocabulary_choices(
    vocabulary: Vocabulary,
    category: str,
    typed: str,
    locale: str,
    limit: int = MAX_CHOICES,
) -> list[Choice]:
    """The category's entries whose id, English or Korean label holds `typed`, labelled in
    `locale`; entries that start with it come first, then file order."""
    language = normalise_locale(locale)
    candidates = (
        _Candidate(Choice(_cut(entry.label(language)), entry.id), (entry.en, entry.ko), entry.id)
        for entry in vocabulary.entries(category)
    )
    return _matching(candidates, typed, limit)


def preset_choices(
    presets: Presets, typed: str, locale: str, limit: int = MAX_CHOICES
) -> list[Choice]:
    """Presets whose id or description holds `typed`: "id: description" in `locale`."""
    language = normalise_locale(locale)
    candidates = (
        _Candidate(
            Choice(_cut(f"{preset.id}: {preset.description(language)}"), preset.id),
            (preset.description_en, preset.description_ko),
            normalize_id(preset.id),
        )
        for preset in presets.presets
        if len(preset.id) <= MAX_VALUE
    )
    return _matching(candidates, typed, limit)


def sampler_choices(typed: str, limit: int = MAX_CHOICES) -> list[Choice]:
    """Sampler names (A1111's, then the other Karras pairings) that hold `typed`."""
    candidates = (_Candidate(Choice(name, name), (name,)) for name in ALL_NAMES)
    return _matching(candidates, typed, limit)


def control_choices(models_dir: Path, typed: str, limit: int = MAX_CHOICES) -> list[Choice]:
    """ControlNet preprocessors (the model is picked for the checkpoint), then the models in
    models/ControlNet by name (a ready-made map), that hold `typed`."""
    names = [*PREPROCESSORS, *(file.name for file in find_controlnets(models_dir))]
    candidates = (
        _Candidate(Choice(name, name), (name,)) for name in names if len(name) <= MAX_VALUE
    )
    return _matching(candidates, typed, limit)


def _matching(candidates: Iterable[_Candidate], typed: str, limit: int) -> list[Choice]:
    wanted = normalize_sampler(typed)  # case and runs of spaces ignored
    starting: list[Choice] = []
    containing: list[Choice] = []
    for candidate in candidates:
        rank = _rank(wanted, candidate)
        if rank == 0:
            starting.append(candidate.choice)
        elif rank == 1:
            containing.append(candidate.choice)
    return (starting + containing)[: max(0, limit)]


def _rank(wanted: str, candidate: _Candidate) -> int | None:
    """0: a text or the id starts with what was typed; 1: one holds it; None: no match.
    Texts match ignoring case and spacing; ids match "pixel art" and "Pixel_Art" alike."""
    if not wanted:
        return 0
    keys = [normalize_sampler(text) for text in candidate.texts]
    as_id = normalize_id(wanted) if candidate.id else ""
    if any(key.startswith(wanted) for key in keys) or (as_id and candidate.id.startswith(as_id)):
        return 0
    if any(wanted in key for key in keys) or (as_id and as_id in candidate.id):
        return 1
    return None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"
