"""The shipped presets name LoRA files nobody has yet: using one says which preset, which file,
which folder, and where its presets.toml entry says to download it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from bot.cli import main
from pipeline.errors import InvalidRequestError
from pipeline.presets import PresetLoraMissingError, load_presets
from tests.lora_files import write_lora
from tests.tiny_models import build_random_pipeline

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "presets.toml"


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "lora").mkdir(parents=True)
    shutil.copy(SHIPPED, root / "presets.toml")
    return root


def test_every_shipped_preset_says_where_to_get_its_loras() -> None:
    presets = load_presets(SHIPPED.parent)
    assert presets.presets
    for preset in presets.presets:
        for use in preset.loras:
            assert preset.source_of(use.name).startswith("https://")


def test_a_missing_preset_lora_names_preset_file_folder_and_source(models: Path) -> None:
    presets = load_presets(models)
    with pytest.raises(PresetLoraMissingError) as raised:
        presets.usable("Pixel Art")
    message = str(raised.value)
    assert isinstance(raised.value, InvalidRequestError)
    assert "Preset 'pixel-art'" in message
    assert "'pixel-art-v1'" in message
    assert str(models / "lora") in message
    assert "download it yourself from https://civitai.com/" in message
    assert str(models / "lora" / "pixel-art-v1.safetensors") in message
    assert str(models / "presets.toml") in message

    write_lora(build_random_pipeline("sd1"), models / "lora" / "Pixel-Art-V1.safetensors")
    assert presets.usable("pixel-art").id == "pixel-art"  # names ignore case, as lookups do


def test_imagine_with_a_missing_preset_lora_stops_before_the_model_loads(
    models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not load for a request that cannot run")

    monkeypatch.setattr("bot.cli.generate._load_engine", no_load)
    monkeypatch.setattr(sys, "argv", ["easel", "imagine", "a fox", "--preset", "voxel-art"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert "Preset 'voxel-art'" in error and "voxel-art-v1" in error and "civitai" in error

    monkeypatch.setattr(sys, "argv", ["easel", "lora", "list"])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    listing = capsys.readouterr().out
    assert "Missing for preset voxel-art: voxel-art-v1.safetensors in" in listing
    assert "download it yourself from https://civitai.com/" in listing
