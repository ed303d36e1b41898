"""Where weights live: Easel's own `models/` layout, or an AUTOMATIC1111 `models/` folder.

| kind        | Easel              | AUTOMATIC1111 also          |
|-------------|--------------------|-----------------------------|
| checkpoints | `stable-diffusion` | `Stable-diffusion`          |
| LoRAs       | `lora`             | `Lora`, `LyCORIS`           |
| upscalers   | `upscale`          | `ESRGAN`, `RealESRGAN`      |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_FOLDERS = ("stable-diffusion", "Stable-diffusion")
LORA_FOLDERS = ("lora", "Lora", "LyCORIS")
UPSCALER_FOLDERS = ("upscale", "ESRGAN", "RealESRGAN")
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors")


@dataclass(frozen=True)
class ModelFolders:
    root: Path

    def _existing(self, names: tuple[str, ...]) -> list[Path]:
        folders: list[Path] = []
        for name in names:
            folder = self.root / name
            # On case-insensitive file systems "lora" and "Lora" are one folder.
            if folder.is_dir() and not any(folder.samefile(seen) for seen in folders):
                folders.append(folder)
        return folders

    @property
    def checkpoints(self) -> list[Path]:
        return self._existing(CHECKPOINT_FOLDERS)

    @property
    def loras(self) -> list[Path]:
        return self._existing(LORA_FOLDERS)

    @property
    def upscalers(self) -> list[Path]:
        return self._existing(UPSCALER_FOLDERS)

    def lora_files(self) -> list[Path]:
        return _files(self.loras, LORA_SUFFIXES)

    def upscaler_files(self) -> list[Path]:
        return _files(self.upscalers, UPSCALER_SUFFIXES)


def _files(folders: list[Path], suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        (path for folder in folders for path in folder.rglob("*") if path.suffix in suffixes),
        key=lambda path: path.name.lower(),
    )
