"""`easel imagine` takes every prompt flag as an option (--face, --comp/--composition,
--lighting, --aspect too); `easel vocabulary` takes the flags' names for their categories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.cli import generate as cli
from bot.core.options import ImagineOptions


class Loaded(Exception):
    """Raised where the model would load: everything before it was checked."""


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EASEL_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path


def options_of(monkeypatch: pytest.MonkeyPatch, *arguments: str) -> ImagineOptions:
    """The options `easel imagine` parsed, stopped where the model would load."""
    seen: list[ImagineOptions] = []
    parse = cli.options_from_fields

    def recording(*args: Any, **kwargs: Any) -> ImagineOptions:
        seen.append(parse(*args, **kwargs))
        return seen[-1]

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise Loaded

    monkeypatch.setattr(cli, "options_from_fields", recording)
    monkeypatch.setattr(cli, "_load_engine", no_model)
    result = CliRunner().invoke(app, ["imagine", "a lighthouse", *arguments])
    assert isinstance(result.exception, Loaded), (result.output, result.exception)
    return seen[0]


@pytest.mark.parametrize(
    "arguments",
    [
        ("--face", "cute-eyes", "--comp", "portrait", "--lighting", "soft-lighting"),
        ("--face", "cute-eyes", "--composition", "portrait", "--light", "soft-lighting"),
    ],
)
def test_imagine_takes_face_composition_and_lighting(
    here: Path, monkeypatch: pytest.MonkeyPatch, arguments: tuple[str, ...]
) -> None:
    options = options_of(monkeypatch, *arguments, "--aspect", "16:9")
    assert (options.face, options.composition, options.lighting) == (
        "cute-eyes",
        "portrait",
        "soft-lighting",
    )
    assert options.aspect_ratio == (16.0, 9.0)


def test_an_unknown_face_is_refused_before_the_model(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_load_engine", lambda *a, **k: pytest.fail("the model loaded"))
    result = CliRunner().invoke(app, ["imagine", "a lighthouse", "--face", "no-such-face"])
    assert result.exit_code != 0 and "no-such-face" in str(result.exception)


@pytest.mark.parametrize(
    ("name", "title"), [("light", "Lighting"), ("comp", "Light and composition")]
)
def test_vocabulary_takes_the_flag_names(here: Path, name: str, title: str) -> None:
    result = CliRunner().invoke(app, ["vocabulary", name])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output.splitlines()[0].strip() == title


def test_vocabulary_help_names_all_six_categories(here: Path) -> None:
    result = CliRunner().invoke(app, ["vocabulary", "--help"])
    for category in ("quality", "face", "style", "shot", "composition", "lighting"):
        assert category in result.output, category
