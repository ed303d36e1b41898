"""LoRA names, files and A1111's short hashes: what options, presets, the chat core and the
command line need, without torch, diffusers or peft (those load only with `pipeline.lora`).
"""

from __future__ import annotations

import difflib
import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InvalidRequestError, ModelLoadError, first_line
from pipeline.folders import ModelFolders
from pipeline.prompts.extra_networks import extract_loras
from pipeline.request import GenerationRequest, LoraUse  # what a job asks for

HASH_DIGITS = 12  # A1111's "Lora hashes" use the first 12 hex digits


def requested_loras(request: GenerationRequest) -> tuple[LoraUse, ...]:
    """Every LoRA a request asks for: its `<lora:…>` tags, then its own list, in that order."""
    _, tags = extract_loras(request.prompt)
    tagged = (LoraUse(tag.name, tag.unet_weight, tag.te_weight) for tag in tags)
    return (*tagged, *request.loras)


def lora_set(uses: Iterable[LoraUse]) -> tuple[LoraUse, ...]:
    """The LoRAs to load for these uses: weight-zero ones dropped, in a fixed order, so jobs
    that ask for the same set in any order share a batch and the same pixels."""
    active = (use for use in uses if not use.is_zero)
    return tuple(sorted(active, key=lambda use: (use.name, use.unet_weight, use.te_weight)))


@dataclass(frozen=True)
class LoraFile:
    name: str  # the file stem, what prompts and presets call it
    path: Path


@dataclass(frozen=True)
class ActiveLora:
    name: str
    unet_weight: float
    te_weight: float
    short_hash: str


@dataclass(frozen=True)
class ActiveLoras:
    """The LoRAs a generation ran with, for its infotext."""

    loras: tuple[ActiveLora, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lora.name for lora in self.loras)

    def hashes_infotext(self) -> str | None:
        """A1111's `Lora hashes` value ("name: 0123456789ab, other: ..."), None without LoRAs."""
        if not self.loras:
            return None
        return ", ".join(f"{lora.name}: {lora.short_hash}" for lora in self.loras)


# ----- finding files


def find_loras(models_dir: Path) -> list[LoraFile]:
    """LoRA files in models/lora (and A1111's Lora and LyCORIS), sorted by name."""
    return [LoraFile(path.stem, path) for path in ModelFolders(models_dir).lora_files()]


def lookup_lora(files: Sequence[LoraFile], name: str) -> LoraFile:
    """The file called `name`, matched exactly first, then ignoring case."""
    matches = [file for file in files if file.name == name]
    if not matches:
        matches = [file for file in files if file.name.casefold() == name.casefold()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        paths = ", ".join(f"{file.path.parent.name}/{file.path.name}" for file in matches)
        raise InvalidRequestError(
            f"Several LoRA files are called {name!r} ({paths}); rename one.",
            ko=f"이름이 {name!r}인 LoRA 파일이 여러 개입니다({paths}). 하나의 이름을 바꾸세요.",
        )
    raise unknown_lora(files, name)


class UnknownLoraError(InvalidRequestError):
    """A LoRA name with no file; `suggestion` is the closest name, `available` all of them."""

    def __init__(self, name: str, suggestion: str | None, available: list[str]) -> None:
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        known = (
            ", ".join(available) if available else "none (put .safetensors files in models/lora)"
        )
        hint_ko = f" {suggestion!r}을(를) 찾으셨나요?" if suggestion else ""
        known_ko = (
            ", ".join(available)
            if available
            else "없음(models/lora에 .safetensors 파일을 넣으세요)"
        )
        super().__init__(
            f"Unknown LoRA {name[:60]!r}.{hint} Available LoRAs: {known}.",
            ko=f"알 수 없는 LoRA입니다: {name[:60]!r}.{hint_ko} 쓸 수 있는 LoRA: {known_ko}.",
        )
        self.name = name[:60]
        self.suggestion = suggestion
        self.available = available


def unknown_lora(files: Sequence[LoraFile], name: str) -> UnknownLoraError:
    return unknown_lora_name([file.name for file in files], name)


def unknown_lora_name(names: Sequence[str], name: str) -> UnknownLoraError:
    """The error for `name` among the LoRAs called `names`, with the closest as a hint."""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return UnknownLoraError(name, close[0] if close else None, list(names))


def names_lora(names: Iterable[str], name: str) -> bool:
    """Whether `name` is one of `names`, matched as `lookup_lora` matches files (case ignored
    where the exact name is not there)."""
    folded = name.casefold()
    return any(known == name or known.casefold() == folded for known in names)


class LoraFolder:
    """The LoRA files of a models folder, listed once and listed again whenever a name is not
    among them (a file added since), as the engine and the bot's checks look them up."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._files: list[LoraFile] = []

    def files(self) -> list[LoraFile]:
        self._files = find_loras(self.models_dir)
        return list(self._files)

    def lookup(self, name: str) -> LoraFile:
        """The file called `name`; the folders are scanned again when it is not known yet."""
        try:
            return lookup_lora(self._files, name)
        except InvalidRequestError:
            return lookup_lora(self.files(), name)


# ----- hashes


@dataclass(frozen=True)
class FileStamp:
    """A file as it is now: a changed size or mtime means changed contents."""

    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        try:
            stat = path.stat()
        except OSError as error:
            raise ModelLoadError(
                f"LoRA file {path.name} cannot be read: {first_line(error)}"
            ) from error
        return cls(path.resolve(), stat.st_size, stat.st_mtime_ns)


_hashes: dict[FileStamp, str] = {}
_hashes_lock = threading.Lock()


def lora_hash(path: Path) -> str:
    """A1111's short LoRA hash: sha256 of a .safetensors file's tensor data (the bytes after its
    header), or of the whole file for other formats; first 12 hex digits. Computed once."""
    stamp = FileStamp.of(path)
    with _hashes_lock:
        cached = _hashes.get(stamp)
    if cached is not None:
        return cached
    short = _data_sha256(path)[:HASH_DIGITS]
    with _hashes_lock:
        _hashes[stamp] = short
    return short


def _data_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if path.suffix == ".safetensors":
            header_length = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + header_length)
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----- LoRAs in the infotext


def lora_tag(use: LoraUse) -> str:
    """A1111's prompt tag for a LoRA use: `<lora:name:w>`, or `<lora:name:te:unet>`."""
    if use.te_weight == use.unet_weight:
        return f"<lora:{use.name}:{use.unet_weight:g}>"
    return f"<lora:{use.name}:{use.te_weight:g}:{use.unet_weight:g}>"


def prompt_with_lora_tags(prompt: str, loras: Sequence[LoraUse]) -> str:
    """The prompt as A1111 would have it: LoRAs given outside the prompt (--lora, presets)
    written as tags after it, so that the image's parameters bring them back."""
    tags = " ".join(lora_tag(use) for use in loras)
    if not tags:
        return prompt
    return f"{prompt.rstrip()} {tags}" if prompt.strip() else tags


def parse_lora_hashes(value: str) -> dict[str, str]:
    """A1111's `Lora hashes` value ("name: 0123456789ab, other: ...") as name -> hash."""
    hashes: dict[str, str] = {}
    for part in value.split(","):
        name, colon, short = part.rpartition(":")
        if colon and name.strip() and short.strip():
            hashes[name.strip()] = short.strip()
    return hashes
