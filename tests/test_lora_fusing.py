"""A LoRA set in steady use is fused into the weights, and unfused exactly when the set changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft.tuners.lora import Linear as LoraLinear

from pipeline.engine import Engine
from pipeline.loading import HashCache, ModelSource, SourceKind, load_model
from pipeline.lora import FUSE_AFTER_BATCHES, LoraManager, LoraUse
from pipeline.request import GenerationRequest
from tests.conftest import TEST_BATCHING
from tests.lora_files import LoraSpec, write_lora
from tests.test_lora import render
from tests.tiny_models import CPU, build_random_pipeline

pytestmark = pytest.mark.heavy  # started first: see conftest.py

# A fused layer computes x(W + BA) where an unfused one computes xW + (xA)B: the same numbers
# summed in another order, so the image may differ by float32 rounding, far below one 8-bit level.
FUSED_TOLERANCE = 1e-4  # largest pixel difference, pixels in [0, 1]

A = [LoraUse("a", 0.8, 0.6)]
B = [LoraUse("b")]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, random_sd1: StableDiffusionPipeline) -> Path:
    root = tmp_path_factory.mktemp("fusing")
    write_lora(random_sd1, root / "lora" / "a.safetensors", LoraSpec(seed=11), kohya=True)
    write_lora(random_sd1, root / "lora" / "b.safetensors", LoraSpec(seed=12))
    return root


@pytest.fixture(scope="module")
def fresh(lora_dir: Path) -> dict[str, np.ndarray]:
    """Each set's image from a new pipeline that only ever had that set, activated once."""
    images = {}
    for name, uses in (("plain", []), ("a", A), ("b", B)):
        pipe = build_random_pipeline("sd1")
        LoraManager(pipe, lora_dir).activate(uses)
        images[name] = render(pipe)
    return images


@pytest.fixture
def pipe() -> StableDiffusionPipeline:
    return build_random_pipeline("sd1")


def base_weights(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The model's own weights, whether LoRA layers wrap them or not."""
    return {
        f"{part}.{name.replace('.base_layer', '')}": tensor
        for part in ("unet", "text_encoder")
        for name, tensor in getattr(pipe, part).state_dict().items()
        if ".lora_" not in name
    }


def assert_plain_weights(pipe: StableDiffusionPipeline) -> None:
    plain = base_weights(build_random_pipeline("sd1"))
    now = base_weights(pipe)
    assert now.keys() == plain.keys()
    changed = [name for name in plain if not torch.equal(now[name], plain[name])]
    assert changed == []


def activate_times(manager: LoraManager, uses: list[LoraUse], times: int) -> None:
    for _ in range(times):
        manager.activate(uses)


def count_lora_calls(pipe: StableDiffusionPipeline) -> list[int]:
    """How many times the UNet's LoRA factors run from now on (a one-item list)."""
    calls = [0]
    for name, module in pipe.unet.named_modules():
        if ".lora_A." in name and isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_a_set_is_fused_from_its_first_job_and_runs_no_lora_layers(
    lora_dir: Path,
    pipe: StableDiffusionPipeline,
    fresh: dict[str, np.ndarray],
) -> None:
    manager = LoraManager(pipe, lora_dir)
    manager.activate([LoraUse("a", 0.5, 0.5)])  # loads the adapter, so its layers can be watched
    lora_calls = count_lora_calls(pipe)
    manager.activate(A)
    assert manager.fused() == ["a"]
    fused = render(pipe)
    assert lora_calls[0] == 0  # a fused job costs what a plain job costs
    # Fused from the first job on, whatever ran before: a seed always gives the same image.
    assert np.array_equal(fused, fresh["a"])
    assert not np.allclose(fused, fresh["plain"], atol=0.05)
    manager.unfuse()
    unfused = render(pipe)
    assert lora_calls[0] > 0
    assert np.abs(fused - unfused).max() <= FUSED_TOLERANCE
    manager.activate(A)
    assert manager.fused() == ["a"]
    assert np.array_equal(render(pipe), fused)
    assert manager.memory().fused_copy_bytes > 0


def test_another_set_or_none_after_fusing_gives_a_fresh_pipelines_images(
    lora_dir: Path, pipe: StableDiffusionPipeline, fresh: dict[str, np.ndarray]
) -> None:
    manager = LoraManager(pipe, lora_dir)
    activate_times(manager, A, FUSE_AFTER_BATCHES + 1)
    assert manager.fused() == ["a"]
    manager.activate(B)
    assert manager.fused() == ["b"]
    assert np.array_equal(render(pipe), fresh["b"])
    manager.activate([])
    assert np.array_equal(render(pipe), fresh["plain"])
    manager.activate(A)  # fused again: exactly the fresh pipeline's image
    assert np.array_equal(render(pipe), fresh["a"])
    activate_times(manager, B, FUSE_AFTER_BATCHES + 1)
    assert manager.fused() == ["b"]
    manager.activate([LoraUse("b", 0.0, 0.0)])
    assert manager.fused() == []
    assert np.array_equal(render(pipe), fresh["plain"])
    assert manager.memory().fused_copy_bytes == 0
    manager.pipe.unload_lora_weights()
    assert_plain_weights(pipe)


def test_unfusing_gives_back_every_weight_bit_for_bit(
    lora_dir: Path, pipe: StableDiffusionPipeline
) -> None:
    manager = LoraManager(pipe, lora_dir)
    both = [LoraUse("a", 0.8, 0.6), LoraUse("b", 1.3, 0.9)]
    activate_times(manager, both, FUSE_AFTER_BATCHES + 1)
    assert manager.fused() == ["a", "b"]
    manager.unfuse()
    assert manager.fused() == []
    assert manager.memory().fused_copy_bytes == 0
    pipe.unload_lora_weights()
    assert_plain_weights(pipe)


def test_weight_zero_is_never_fused(
    lora_dir: Path, pipe: StableDiffusionPipeline, fresh: dict[str, np.ndarray]
) -> None:
    manager = LoraManager(pipe, lora_dir)
    activate_times(manager, [LoraUse("a", 0.0, 0.0)], FUSE_AFTER_BATCHES + 2)
    assert manager.fused() == []
    assert np.array_equal(render(pipe), fresh["plain"])
    plain_unet = {
        k: v for k, v in base_weights(build_random_pipeline("sd1")).items() if k.startswith("unet.")
    }
    activate_times(manager, [LoraUse("a", 0.0, 1.0)], FUSE_AFTER_BATCHES + 1)
    assert manager.fused() == ["a"]  # only its text-encoder part: the UNet keeps its weights
    unet = {k: v for k, v in base_weights(pipe).items() if k.startswith("unet.")}
    assert all(torch.equal(unet[name], plain_unet[name]) for name in plain_unet)


def test_a_failure_while_fusing_leaves_the_set_unfused(
    lora_dir: Path,
    pipe: StableDiffusionPipeline,
    fresh: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    merges = [0]
    merge = LoraLinear.merge

    def failing_merge(self: LoraLinear, *args: object, **kwargs: object) -> None:
        merges[0] += 1
        if merges[0] == 5:  # after four layers were merged
            raise torch.OutOfMemoryError("CUDA out of memory.")
        merge(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LoraLinear, "merge", failing_merge)
    manager = LoraManager(pipe, lora_dir)
    activate_times(manager, A, FUSE_AFTER_BATCHES + 1)
    assert merges[0] == 5
    assert manager.fused() == []
    assert manager.memory().fused_copy_bytes == 0
    assert not any(getattr(module, "merged", False) for module in pipe.unet.modules())
    unfused = render(pipe)  # the LoRA layers run: the fused image up to rounding
    assert np.abs(unfused - fresh["a"]).max() <= FUSED_TOLERANCE
    manager.activate(A)  # not tried again for this set
    assert merges[0] == 5
    assert np.array_equal(render(pipe), unfused)
    manager.activate([])
    assert np.array_equal(render(pipe), fresh["plain"])


@pytest.fixture(scope="module")
def engine(lora_dir: Path, random_sd1: StableDiffusionPipeline) -> Engine:
    folder = lora_dir / "stable-diffusion" / "tiny"
    random_sd1.save_pretrained(folder)
    source = ModelSource("tiny", SourceKind.DIFFUSERS_FOLDER, str(folder))
    model = load_model(source, CPU, lora_dir, HashCache(lora_dir / "hashes.json"))
    return Engine(model, models_dir=lora_dir, batching=TEST_BATCHING)


def job_image(engine: Engine, loras: list[LoraUse]) -> np.ndarray:
    request = GenerationRequest(
        prompt="a harbour", steps=2, seeds=(4,), width=64, height=64, loras=tuple(loras)
    )
    return np.asarray(engine.generate(request).images[0].image).astype(int)


def test_jobs_with_loras_run_fused_and_a_plain_job_after_is_exact(engine: Engine) -> None:
    plain = job_image(engine, [])
    fused = job_image(engine, A)
    assert engine.loras.fused() == ["a"]
    assert np.abs(fused - plain).max() > 10
    assert np.array_equal(job_image(engine, [LoraUse("a", 0.0, 0.0)]), plain)
    assert engine.loras.fused() == []
    assert np.array_equal(job_image(engine, A), fused)  # the same image whatever ran before
    assert np.array_equal(job_image(engine, []), plain)
