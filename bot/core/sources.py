"""The files an operator edits while the bot runs: presets.toml and the vocabulary override.

Both are re-read when they change and may be reloaded on request (`/admin reload`); a file that
cannot be used leaves the last good version in use, and the reload says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.presets import Presets, PresetStore
from pipeline.prompts.vocabulary import Vocabulary, VocabularyStore


@dataclass(frozen=True)
class ReloadReport:
    presets: tuple[str, ...]  # the preset ids in use now
    presets_error: str | None = None  # presets.toml is broken: the previous presets stay
    vocabulary_error: str | None = None  # the override is broken: the previous vocabulary stays


class Sources:
    """The presets and vocabulary of a models folder, for the job service."""

    def __init__(self, models_dir: Path) -> None:
        self._presets = PresetStore(models_dir)
        self._vocabulary = VocabularyStore(models_dir)

    def presets(self) -> Presets:
        return self._presets.current()

    def vocabulary(self) -> Vocabulary:
        return self._vocabulary.current()

    def reload(self) -> ReloadReport:
        presets_error = self._presets.reload()
        vocabulary_error = self._vocabulary.reload()
        return ReloadReport(tuple(self.presets().ids()), presets_error, vocabulary_error)
