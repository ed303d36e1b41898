"""Presets: a named look made of LoRAs and the words that trigger them, from `presets.toml` in the
models folder.

    [presets.pixel-art]
    description_en = "Pixel art"
    description_ko = "픽셀 아트"
    loras = [{ name = "pixel-art-v1", unet = 0.8, te = 0.8,      # unet and te default to 1
               source = "https://civitai.com/..." }]             # where to download it (optional)
    trigger = "pixel art, 8-bit"                                 # added after the user's words
    negative = "blurry"                                          # optional, added to the negative

Ids are looked up ignoring case, spaces and underscores ("Pixel Art" is "pixel-art"). A missing
file means no presets; a file that cannot be used is a PresetFileError naming the file and entry.
The LoRA names are checked when a preset is used, against the files present then; a missing
file is a PresetLoraMissingError naming the preset, the file, the folder and the entry's source.
"""

from __future__ import annotations

import difflib
import logging
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import EaselError, InvalidRequestError
from pipeline.folders import ModelFolders
from pipeline.lora_names import find_loras
from pipeline.prompts.composable import split_and
from pipeline.prompts.vocabulary import normalize_id
from pipeline.request import LoraUse

log = logging.getLogger(__name__)
PRESETS_FILE_NAME = "presets.toml"
_FIELDS = ("description_en", "description_ko", "loras", "trigger", "negative")
_LORA_FIELDS = ("name", "unet", "te", "source")


class PresetFileError(EaselError):
    """A presets file that cannot be used: bad TOML, a missing or mistyped field..."""


class UnknownPresetError(InvalidRequestError):
    def __init__(self, given_id: str, suggestion: str | None, known: list[str]) -> None:
        self.given_id = given_id
        self.suggestion = suggestion
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        hint_ko = f" {suggestion!r}을(를) 찾으셨나요?" if suggestion else ""
        listed = ", ".join(known) if known else f"none ({PRESETS_FILE_NAME} defines none)"
        listed_ko = ", ".join(known) if known else f"없음({PRESETS_FILE_NAME}에 정의된 것이 없음)"
        super().__init__(
            f"Unknown preset {given_id[:60]!r}.{hint} Presets: {listed}.",
            ko=f"알 수 없는 프리셋입니다: {given_id[:60]!r}.{hint_ko} 프리셋: {listed_ko}.",
        )


class PresetLoraMissingError(InvalidRequestError):
    """A preset names a LoRA file that is not in the models folder."""

    def __init__(self, preset: Preset, missing: list[LoraUse], models_dir: Path) -> None:
        self.preset_id = preset.id
        self.missing = [use.name for use in missing]
        folders = ModelFolders(models_dir).loras or [models_dir / "lora"]
        looked = ", ".join(str(folder) for folder in folders)
        parts = []
        parts_ko = []
        for use in missing:
            source = preset.source_of(use.name)
            where = f"download it yourself from {source}" if source else "find it yourself"
            where_ko = f"{source}에서 직접 내려받으세요" if source else "직접 구하세요"
            parts.append(f"{use.name!r} ({where})")
            parts_ko.append(f"{use.name!r}({where_ko})")
        target = folders[0] / f"{missing[0].name}.safetensors"
        presets_file = models_dir / PRESETS_FILE_NAME
        super().__init__(
            f"Preset {preset.id!r} needs LoRA file(s) that are not in {looked}: "
            f"{', '.join(parts)}. Save the file as {target}, or change the preset's `name` "
            f"(and `source`) in {presets_file}.",
            ko=f"프리셋 {preset.id!r}에 필요한 LoRA 파일이 {looked}에 없습니다: "
            f"{', '.join(parts_ko)}. 파일을 {target}(으)로 저장하거나 {presets_file}에서 "
            "프리셋의 `name`(과 `source`)을 바꾸세요.",
        )


@dataclass(frozen=True)
class Preset:
    id: str
    description_en: str
    description_ko: str
    loras: tuple[LoraUse, ...] = ()
    trigger: str = ""
    negative: str = ""
    sources: tuple[tuple[str, str], ...] = ()  # (LoRA name, where to download it)

    def description(self, locale: str) -> str:
        return self.description_ko if locale == "ko" else self.description_en

    def source_of(self, lora_name: str) -> str:
        """Where the preset's file says to get a LoRA; "" when it does not say."""
        return dict(self.sources).get(lora_name, "")

    def missing_loras(self, models_dir: Path) -> list[LoraUse]:
        """The preset's LoRAs that have no file in the models folder (names ignore case)."""
        present = {file.name.casefold() for file in find_loras(models_dir)}
        return [use for use in self.loras if use.name.casefold() not in present]

    def apply(self, prompt: str, negative: str) -> tuple[str, str]:
        """The prompt with the trigger words after the user's own (in every `AND` part), and
        the negative with the preset's extra negative; words already there are not repeated."""
        parts = split_and(prompt)
        if len(parts) == 1:
            prompt = _add_words(prompt, self.trigger)
        else:
            prompt = " AND ".join(
                _add_words(part.text, self.trigger)
                + (f" :{part.weight:g}" if part.weight != 1.0 else "")
                for part in parts
            )
        return prompt, _add_words(negative, self.negative)


@dataclass(frozen=True)
class Presets:
    presets: tuple[Preset, ...] = ()
    source: Path | None = None

    def ids(self) -> list[str]:
        return [preset.id for preset in self.presets]

    def find(self, preset_id: str) -> Preset | None:
        key = normalize_id(preset_id)
        return next((p for p in self.presets if normalize_id(p.id) == key), None)

    def get(self, preset_id: str) -> Preset:
        """The preset called `preset_id` (UnknownPresetError with a suggestion if none)."""
        preset = self.find(preset_id)
        if preset is None:
            raise UnknownPresetError(preset_id, self.closest(preset_id), self.ids())
        return preset

    def usable(self, preset_id: str) -> Preset:
        """The preset, with its LoRA files checked when the presets came from a models folder:
        what a job that uses it needs."""
        preset = self.get(preset_id)
        if self.source is not None:
            missing = preset.missing_loras(self.source.parent)
            if missing:
                raise PresetLoraMissingError(preset, missing, self.source.parent)
        return preset

    def closest(self, preset_id: str) -> str | None:
        by_key = {normalize_id(preset.id): preset.id for preset in self.presets}
        matches = difflib.get_close_matches(normalize_id(preset_id), list(by_key), n=1, cutoff=0.6)
        return by_key[matches[0]] if matches else None


def load_presets(models_dir: Path) -> Presets:
    """The presets of `models_dir/presets.toml`; none when the file does not exist."""
    path = models_dir / PRESETS_FILE_NAME
    if not path.is_file():
        return Presets()
    return read_presets_file(path)


class PresetStore:
    """The current presets of a models folder, re-read when `presets.toml` changes.

    A broken file keeps the last good presets (none at first), logs a warning and leaves the
    error text in `last_error` until the file is fixed or removed; `reload` reads it now."""

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / PRESETS_FILE_NAME
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._state: tuple[int, int] | None = None
        self._presets = Presets()

    def current(self) -> Presets:
        with self._lock:
            if self._file_state() != self._state:
                self._read()
            return self._presets

    def reload(self) -> str | None:
        """Read the file now, changed or not; the error text when it is broken (the last
        good presets stay), else None."""
        with self._lock:
            self._read()
            return self.last_error

    def _file_state(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _read(self) -> None:
        self._state = self._file_state()
        try:
            self._presets = load_presets(self.path.parent)
        except PresetFileError as error:
            self.last_error = str(error)
            log.warning("Keeping the last good presets: %s", error)
            return
        self.last_error = None


def read_presets_file(path: Path) -> Presets:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PresetFileError(f"{path}: cannot read it: {error}") from error
    unknown = sorted(set(data) - {"presets"})
    if unknown:
        raise PresetFileError(f"{path}: unknown table {unknown[0]!r}; write [presets.<id>].")
    tables = data.get("presets", {})
    if not isinstance(tables, dict):
        raise PresetFileError(f"{path}: presets must be tables, [presets.<id>].")
    presets: list[Preset] = []
    for preset_id, table in tables.items():
        preset = _parse_preset(f"{path}: preset {preset_id!r}", preset_id, table)
        if any(normalize_id(other.id) == normalize_id(preset_id) for other in presets):
            raise PresetFileError(f"{path}: preset {preset_id!r} is defined twice.")
        presets.append(preset)
    return Presets(tuple(presets), path)


def _parse_preset(where: str, preset_id: str, table: object) -> Preset:
    if not isinstance(table, dict):
        raise PresetFileError(f"{where}: must be a table, [presets.{preset_id}].")
    if not normalize_id(preset_id):
        raise PresetFileError(f"{where}: the id needs letters or digits.")
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise PresetFileError(f"{where}: unknown field {unknown[0]!r}.")
    loras = table.get("loras", [])
    if not isinstance(loras, list):
        raise PresetFileError(f'{where}: loras must be a list, [{{ name = "...", unet = 1 }}].')
    parsed = [_parse_lora(f"{where}, LoRA {n}", item) for n, item in enumerate(loras, 1)]
    return Preset(
        id=preset_id,
        description_en=_text(where, table, "description_en", required=True),
        description_ko=_text(where, table, "description_ko", required=True),
        loras=tuple(use for use, _ in parsed),
        trigger=_text(where, table, "trigger"),
        negative=_text(where, table, "negative"),
        sources=tuple((use.name, source) for use, source in parsed if source),
    )


def _parse_lora(where: str, item: object) -> tuple[LoraUse, str]:
    """The LoRA use and where to download its file ("" when not given)."""
    if not isinstance(item, dict):
        raise PresetFileError(f'{where}: must be a table, {{ name = "...", unet = 1, te = 1 }}.')
    unknown = sorted(set(item) - set(_LORA_FIELDS))
    if unknown:
        raise PresetFileError(f"{where}: unknown field {unknown[0]!r} (name, unet, te, source).")
    name = _text(where, item, "name", required=True)
    use = LoraUse(name, _weight(where, item, "unet"), _weight(where, item, "te"))
    return use, _text(where, item, "source")


def _text(where: str, table: dict[str, object], name: str, required: bool = False) -> str:
    value = table.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        state = "missing" if value is None else "not a non-empty string"
        raise PresetFileError(f"{where}: field {name!r} is {state}.")
    return " ".join(value.split())


def _weight(where: str, table: dict[str, object], name: str) -> float:
    value = table.get(name, 1.0)
    # bool is an int in Python; `unet = true` is a mistake, not a weight of 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PresetFileError(f"{where}: {name} must be a number, not {value!r}.")
    return float(value)


def _add_words(text: str, words: str) -> str:
    """`text, words`, leaving out the comma-separated parts of `words` that `text` has."""
    present = {_key(part) for part in text.split(",")}
    new = [part.strip() for part in words.split(",") if part.strip()]
    new = [part for part in new if _key(part) not in present]
    if not new:
        return text
    head = text.strip().strip(",").strip()
    return ", ".join([head, *new] if head else new)


def _key(part: str) -> str:
    return " ".join(part.split()).casefold()
