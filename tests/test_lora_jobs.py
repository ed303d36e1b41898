"""LoRAs through the engine and the options: tags, flags, presets, parameters, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline

from bot.core.options import parse_options
from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError, ModelLoadError
from pipeline.loading import HashCache, ModelSource, SourceKind, load_model
from pipeline.lora import lora_hash
from pipeline.presets import load_presets
from pipeline.prompts.vocabulary import Vocabulary
from pipeline.request import GenerationRequest, LoraUse
from tests.conftest import TEST_BATCHING
from tests.lora_files import LoraSpec, write_lora, write_not_a_lora
from tests.tiny_models import CPU


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, random_sd1: StableDiffusionPipeline) -> Path:
    root = tmp_path_factory.mktemp("lora-models")
    folder = root / "stable-diffusion" / "tiny"
    pipe = random_sd1
    pipe.save_pretrained(folder)
    write_lora(pipe, root / "lora" / "inky.safetensors", LoraSpec(seed=1))
    write_lora(pipe, root / "Lora" / "kohya-style.safetensors", LoraSpec(seed=2), kohya=True)
    write_not_a_lora(root / "lora" / "broken.safetensors")
    (root / "presets.toml").write_text(
        '[presets.ink]\ndescription_en = "Ink"\ndescription_ko = "잉크"\n'
        'loras = [{ name = "inky", unet = 0.9, te = 0.9 }]\ntrigger = "ink drawing"\n'
    )
    return root


@pytest.fixture(scope="module")
def engine(models: Path) -> Engine:
    source = ModelSource(
        "tiny", SourceKind.DIFFUSERS_FOLDER, str(models / "stable-diffusion" / "tiny")
    )
    model = load_model(source, CPU, models, HashCache(models / "hashes.json"))
    return Engine(model, models_dir=models, batching=TEST_BATCHING)


def image(engine: Engine, prompt: str = "a harbour", **overrides: object) -> np.ndarray:
    values: dict[str, object] = {
        "prompt": prompt,
        "steps": 3,
        "seeds": (4,),
        "width": 64,
        "height": 64,
    }
    values.update(overrides)
    result = engine.generate(GenerationRequest(**values))  # type: ignore[arg-type]
    return np.asarray(result.images[0].image)


def test_tags_and_request_loras_change_the_image_and_weight_zero_does_not(engine: Engine) -> None:
    plain = image(engine)
    tagged = image(engine, "a harbour <lora:inky:0.8>")
    assert not np.array_equal(plain, tagged)
    assert np.array_equal(image(engine, loras=(LoraUse("inky", 0.8, 0.8),)), tagged)
    assert np.array_equal(image(engine, "a harbour <lora:inky:0>"), plain)
    assert np.array_equal(image(engine), plain)  # and off again for the next job


def test_presets_switch_and_come_back_to_the_same_pixels(engine: Engine) -> None:
    first = image(engine, "a harbour <lora:inky:1>")
    other = image(engine, "a harbour <lora:kohya-style:1>")
    again = image(engine, "a harbour <lora:inky:1>")
    assert not np.array_equal(first, other)
    assert np.array_equal(first, again)


def test_the_parameters_record_lora_hashes(engine: Engine, models: Path) -> None:
    result = engine.generate(
        GenerationRequest(
            prompt="a harbour <lora:inky:0.5>", steps=2, seeds=(1,), width=64, height=64
        )
    )
    info = result.images[0].infotext
    assert ("Lora hashes", f"inky: {lora_hash(models / 'lora' / 'inky.safetensors')}") in info.extra
    assert info.prompt == "a harbour <lora:inky:0.5>"


def test_unknown_and_broken_loras_fail_that_job_only(engine: Engine) -> None:
    plain = image(engine)
    with pytest.raises(InvalidRequestError, match="Unknown LoRA 'nope'"):
        engine.prepare(GenerationRequest(prompt="x <lora:nope:1>"))
    with pytest.raises(ModelLoadError, match="broken"):
        image(engine, "a harbour <lora:broken:1>")
    assert np.array_equal(image(engine), plain)


def test_a_preset_brings_its_loras_and_trigger_words(engine: Engine, models: Path) -> None:
    options = parse_options("a harbour --preset ink --n 1 --steps 3 --seed 4", Vocabulary.load())
    request = options.to_request(Vocabulary.load(), 64, load_presets(models))
    assert request.prompt == "a harbour, ink drawing"
    assert request.loras == (LoraUse("inky", 0.9, 0.9),)
    assert not np.array_equal(
        image(engine, request.prompt),
        image(engine, **{"prompt": request.prompt, "loras": request.loras}),
    )
