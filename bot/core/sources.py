"""The files an operator edits while the bot runs: presets.toml and the vocabulary override.

Both are re-read when they change and may be reloaded on request (`/admin reload`); a file that
cannot be used leaves the last good version in use, and the reload says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline.folders import ModelFolders
from pipeline.lora_names import find_loras
from pipeline.presets import (
    PRESETS_FILE_NAME,
    Preset,
    PresetFileError,
    Presets,
    PresetStore,
    read_presets_file,
)
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


# What `easel presets list` and `easel presets check` show, without a running bot.


@dataclass(frozen=True)
class PresetLora:
    name: str
    unet: float
    te: float
    present: bool  # a file of that name is in the models folder's LoRA folders
    source: str = ""  # where presets.toml says to download it


@dataclass(frozen=True)
class PresetEntry:
    id: str
    description_en: str
    description_ko: str
    loras: tuple[PresetLora, ...]
    trigger: str
    negative: str

    @property
    def complete(self) -> bool:
        """Every LoRA file the preset names is present."""
        return all(lora.present for lora in self.loras)


class ProblemKind(StrEnum):
    PRESETS_FILE = "presets_file"  # presets.toml cannot be read or used
    MISSING_LORA = "missing_lora"  # a preset names a LoRA file that is not there
    VOCABULARY = "vocabulary"  # the vocabulary override cannot be used


@dataclass(frozen=True)
class SourcesProblem:
    kind: ProblemKind
    message: str
    preset: str | None = None
    lora: str | None = None


@dataclass(frozen=True)
class SourcesCheck:
    presets_file: Path
    exists: bool
    presets: tuple[PresetEntry, ...]
    problems: tuple[SourcesProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_sources(models_dir: Path) -> SourcesCheck:
    """presets.toml and the vocabulary override of a models folder, read the way the bot
    reads them: the presets with their LoRA files looked up, and everything wrong."""
    path = models_dir / PRESETS_FILE_NAME
    problems: list[SourcesProblem] = []
    presets = Presets()
    if path.is_file():
        try:
            presets = read_presets_file(path)
        except PresetFileError as error:
            problems.append(SourcesProblem(ProblemKind.PRESETS_FILE, str(error)))
    present = {file.name.casefold() for file in find_loras(models_dir)}
    folder = (ModelFolders(models_dir).loras or [models_dir / "lora"])[0]
    entries = tuple(_entry(preset, present) for preset in presets.presets)
    for entry in entries:
        for lora in entry.loras:
            if not lora.present:
                where = f"download it from {lora.source}" if lora.source else "no source given"
                message = (
                    f"Preset {entry.id!r} needs {lora.name}.safetensors in {folder} ({where})."
                )
                problems.append(
                    SourcesProblem(ProblemKind.MISSING_LORA, message, entry.id, lora.name)
                )
    vocabulary = VocabularyStore(models_dir)
    vocabulary.current()
    if vocabulary.last_error:
        problems.append(SourcesProblem(ProblemKind.VOCABULARY, vocabulary.last_error))
    return SourcesCheck(path, path.is_file(), entries, tuple(problems))


def _entry(preset: Preset, present: set[str]) -> PresetEntry:
    loras = tuple(
        PresetLora(
            use.name,
            use.unet_weight,
            use.te_weight,
            use.name.casefold() in present,
            preset.source_of(use.name),
        )
        for use in preset.loras
    )
    return PresetEntry(
        preset.id,
        preset.description_en,
        preset.description_ko,
        loras,
        preset.trigger,
        preset.negative,
    )
