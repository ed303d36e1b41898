"""The UNet compiled with torch.compile inside the engine: the guidance wrapper and LoRA fusing
still work on it, the warm-up compiles what the first job needs, and a switch of checkpoint
starts from no compiled code.

A counting backend stands in for inductor (which takes minutes on a small CPU): dynamo traces
and guards exactly as it would, and the graphs run eagerly, so the images must be bit-identical
to the uncompiled engine's. The model has one layer per block: tracing time grows with the
layers, and one is enough to cover every kind of module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffusers import UNet2DConditionModel
from torch._dynamo.testing import CompileCounter

from pipeline.acceleration import Acceleration, CompileTarget, is_compiled
from pipeline.engine import Engine
from pipeline.loading import HashCache, ModelSource, SourceKind, load_model
from pipeline.lora import LoraUse
from pipeline.request import GenerationRequest
from tests.conftest import TEST_BATCHING
from tests.lora_files import LoraSpec, write_lora
from tests.tiny_models import CPU, TinyShape, build_random_pipeline

pytestmark = pytest.mark.heavy  # started first: see conftest.py

LORA = (LoraUse("style", 0.8, 0.6),)


MICRO = TinyShape(unet_layers=1, text_layers=1, vae_layers=1)


@pytest.fixture(scope="module")
def micro_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the one-layer model and a LoRA for it."""
    root = tmp_path_factory.mktemp("compiled-models")
    pipe = build_random_pipeline("sd1", MICRO)
    pipe.save_pretrained(root / "micro")
    write_lora(pipe, root / "lora" / "style.safetensors", LoraSpec(seed=21), kohya=True)
    return root


def new_engine(models: Path, **settings: Any) -> Engine:
    source = ModelSource("micro", SourceKind.DIFFUSERS_FOLDER, str(models / "micro"))
    model = load_model(source, CPU, models, HashCache(models / "hashes.json"))
    return Engine(
        model, models_dir=models, acceleration=Acceleration(**settings), batching=TEST_BATCHING
    )


def pixels(engine: Engine, loras: tuple[LoraUse, ...] = ()) -> np.ndarray:
    request = GenerationRequest(
        prompt="a red boat", seeds=(5, 6), steps=2, width=64, height=64, loras=loras
    )
    return np.stack([np.asarray(image.image) for image in engine.generate(request).images])


@pytest.mark.usefixtures("dynamo")
def test_a_compiled_unet_and_decoder_give_the_same_images_with_a_lora_fused(
    micro_models: Path,
) -> None:
    eager = new_engine(micro_models)
    counter = CompileCounter()
    compiled = new_engine(micro_models, compile=CompileTarget.UNET_VAE, backend=counter)
    unet = compiled.model.pipe.unet
    assert isinstance(unet, UNet2DConditionModel) and is_compiled(unet)
    assert compiled.model.pipe.vae.decoder._compiled_call_impl is not None
    assert compiled.warm_up() is not None  # the native size, 64x64
    warmed = counter.frame_count
    assert warmed >= 2  # the UNet's forward and the decoder
    # Two seeds in fixed-size calls, through the guidance wrapper and the compiled forward.
    assert np.array_equal(pixels(compiled), pixels(eager))
    assert counter.frame_count == warmed  # compiled at the warm-up, reused
    assert is_compiled(unet)  # the wrapper put the compiled forward back
    # A LoRA set is loaded and fused in place (one recompile: the LoRA layers are new). Its
    # unfusing is the same in-place copy, covered uncompiled by test_lora_fusing.py.
    assert np.array_equal(pixels(compiled, LORA), pixels(eager, LORA))
    assert compiled.loras.fused() == ["style"]
    assert counter.frame_count <= compiled.acceleration.recompile_limit
