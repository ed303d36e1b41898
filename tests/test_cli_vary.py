"""`easel vary` and what the command line prints: strength 0 gives the original back, a
variation keeps its parent's LoRAs (written as prompt tags, read back with `Lora hashes`),
variation seeds and the real output size are printed, and `--hires` works bare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import with_bare_hires
from bot.core.buttons import Action
from bot.core.work import child_work
from bot.store import JobKind
from pipeline.images import Infotext
from pipeline.lora_names import lora_hash, parse_lora_hashes, prompt_with_lora_tags
from pipeline.request import GenerationRequest, LoraUse
from pipeline.variations import request_from_infotext
from tests.lora_files import LoraSpec, write_lora
from tests.test_cli import run_cli
from tests.tiny_models import build_random_pipeline

pytestmark = pytest.mark.heavy  # started first: see conftest.py


@pytest.fixture
def env(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models folder with the tiny checkpoint and one LoRA, `grain`; the outputs folder."""
    models = tmp_path / "models"
    (models / "stable-diffusion").mkdir(parents=True)
    (models / "stable-diffusion" / "tiny-sd1").symlink_to(
        models_dir / "stable-diffusion" / "tiny-sd1"
    )
    write_lora(build_random_pipeline("sd1"), models / "lora" / "grain.safetensors", LoraSpec(3))
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(outputs))
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EASEL_DEVICE", "cpu")
    monkeypatch.delenv("EASEL_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    return models


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def parameters(path: str | Path) -> str:
    with Image.open(path) as image:
        return str(image.info["parameters"])


def _imagine_with_lora(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    code = run_cli(
        monkeypatch,
        *("imagine", "a lighthouse", "--lora", "grain:0.7", "--n", "1", "--seed", "8"),
        *("--steps", "2", "--json"),
    )
    assert code == 0
    return json.loads(capsys.readouterr().out)["images"][0]["path"]


def test_a_subtle_variation_at_strength_0_is_the_original_with_its_lora(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _imagine_with_lora(monkeypatch, capsys)
    written = parameters(source)
    assert written.startswith("a lighthouse <lora:grain:0.7>\n")
    assert f'Lora hashes: "grain: {lora_hash(env / "lora" / "grain.safetensors")}"' in written

    assert run_cli(monkeypatch, "vary", source, "--strength", "0", "--n", "1", "--json") == 0
    captured = capsys.readouterr()
    assert f"Subtle variation of {source} (seed 8, strength 0)" in captured.err
    varied = json.loads(captured.out)["images"][0]["path"]
    assert np.array_equal(pixels(varied), pixels(source))
    assert "<lora:grain:0.7>" in parameters(varied)
    assert "Variation seed strength: 0," in parameters(varied)

    # Without its LoRA the same seed makes other pixels: the LoRA is what kept them.
    assert run_cli(monkeypatch, "imagine", "a lighthouse", "--n", "1", "--seed", "8",
                   "--steps", "2", "--json") == 0  # fmt: skip
    plain = json.loads(capsys.readouterr().out)["images"][0]["path"]
    assert not np.array_equal(pixels(plain), pixels(source))


def test_vary_prints_the_variation_seeds_and_says_what_it_varies(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _imagine_with_lora(monkeypatch, capsys)
    assert run_cli(monkeypatch, "vary", source, "--n", "2") == 0
    captured = capsys.readouterr()
    assert f"Subtle variation of {source} (seed 8, strength 0.25): 2 images." in captured.err
    lines = [line for line in captured.out.splitlines() if "variation seed" in line]
    assert len(lines) == 2
    seeds = {line.split("variation seed ")[1].split(" ")[0] for line in lines}
    assert len(seeds) == 2 and all(line.endswith("(seed 8)") for line in lines)

    assert run_cli(monkeypatch, "vary", source, "--strong", "--n", "1") == 0
    assert f"Strong variation of {source} (denoising 0.65): 1 image." in capsys.readouterr().err


def test_bare_hires_doubles_and_the_summary_gives_the_saved_size(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(monkeypatch, "imagine", "--hires", "a lighthouse", "--n", "1", "--steps", "2")
    assert code == 0
    captured = capsys.readouterr()
    path = captured.out.split()[0]
    with Image.open(path) as image:
        assert image.size == (128, 128)
    assert "1 image(s) at 128x128" in captured.err


def test_hires_takes_an_optional_factor() -> None:
    assert with_bare_hires(["imagine", "x", "--hires"]) == ["imagine", "x", "--hires=2"]
    assert with_bare_hires(["imagine", "--hires", "x"]) == ["imagine", "--hires=2", "x"]
    assert with_bare_hires(["imagine", "x", "--hires", "--n", "1"])[2] == "--hires=2"
    assert with_bare_hires(["imagine", "x", "--hires", "1.5"]) == ["imagine", "x", "--hires", "1.5"]
    assert with_bare_hires(["imagine", "--", "--hires"]) == ["imagine", "--", "--hires"]


def test_lora_hashes_without_tags_come_back_at_weight_1() -> None:
    info = Infotext(
        prompt="a cat <lora:grain:0.5>",
        extra=(("Lora hashes", "grain: 0123456789ab, old-style: ba9876543210"),),
    )
    request = request_from_infotext(info)
    assert request.prompt == "a cat <lora:grain:0.5>"
    assert request.loras == (LoraUse("old-style"),)
    assert parse_lora_hashes("a: 1, b:2, broken") == {"a": "1", "b": "2"}
    assert prompt_with_lora_tags("x", [LoraUse("a", 0.5, 0.25)]) == "x <lora:a:0.25:0.5>"


def test_the_chat_buttons_keep_the_loras_of_their_parent(tmp_path: Path) -> None:
    parent = GenerationRequest(
        prompt="a cat <lora:tagged:0.6>", loras=(LoraUse("flagged", 0.7, 0.7),), seeds=(5, 6)
    )
    for kind in (JobKind.VARY_SUBTLE, JobKind.VARY_STRONG):
        image = tmp_path / "image.png"
        Image.new("RGB", (64, 64)).save(image)
        work = child_work(Action(kind, 1), parent, image, 4, None)
        assert isinstance(work, GenerationRequest)
        assert work.prompt == parent.prompt and work.loras == parent.loras
    rerolled = child_work(Action(JobKind.REROLL), parent, None, 4, None)
    assert isinstance(rerolled, GenerationRequest) and rerolled.loras == parent.loras
