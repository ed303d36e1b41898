"""A faster step: settings, CPU threads, SDPA attention, channels-last, the VAE in tiles above an
area, and the bound on torch.compile's compiled variants (the UNet compiled with an engine is
in tests/test_acceleration_compile.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from pydantic import ValidationError
from torch import nn

import pipeline.acceleration as acceleration
from bot.settings import Settings, settings_problems
from pipeline.acceleration import (
    Acceleration,
    CompileTarget,
    accelerate,
    apply_cpu_threads,
    bound_recompiles,
    compile_unet,
    core_of,
    fitted_threads,
    use_sdpa,
    warm_up,
)
from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.loading import (
    HashCache,
    LoadedModel,
    ModelLoader,
    ModelSource,
    SourceKind,
    load_model,
)
from pipeline.request import GenerationRequest
from tests.tiny_models import CPU

# Channels-last runs the same convolutions with the numbers summed in another order: float32
# rounding (about 1e-6 on a UNet output here) that can move a pixel to the next 8-bit level,
# never further.
CHANNELS_LAST_LEVELS = 1

# --- settings


def settings_error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> list[str]:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    return settings_problems(caught.value)


def test_settings_default_to_plain_diffusers_with_tiling_above_1536_squared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("COMPILE", "CHANNELS_LAST", "VAE_TILE_AREA", "CPU_THREADS", "WARMUP_SIZES"):
        monkeypatch.delenv(f"EASEL_{name}", raising=False)
    settings = Settings(_env_file=None)
    assert settings.acceleration() == Acceleration(
        compile=CompileTarget.OFF, channels_last=None, vae_tile_area=1536 * 1536
    )
    assert settings.cpu_threads is None
    assert settings.warmup_size_list() == ()


def test_settings_are_read_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_COMPILE", " UNet+VAE ")
    monkeypatch.setenv("EASEL_CHANNELS_LAST", "false")
    monkeypatch.setenv("EASEL_VAE_TILE_AREA", "0")
    monkeypatch.setenv("EASEL_CPU_THREADS", "3")
    monkeypatch.setenv("EASEL_WARMUP_SIZES", "512x768, 768X512,512x768")
    settings = Settings(_env_file=None)
    assert settings.acceleration() == Acceleration(
        compile=CompileTarget.UNET_VAE, channels_last=False, vae_tile_area=None
    )
    assert settings.cpu_threads == 3
    assert settings.warmup_size_list() == ((512, 768), (768, 512))


def test_bad_values_are_refused_naming_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = settings_error(
        monkeypatch,
        EASEL_COMPILE="fast",
        EASEL_CHANNELS_LAST="maybe",
        EASEL_VAE_TILE_AREA="-1",
        EASEL_CPU_THREADS="0",
        EASEL_WARMUP_SIZES="512x512,big",
    )
    assert sorted(problems) == [
        "EASEL_CHANNELS_LAST: Input should be a valid boolean, unable to interpret input "
        "(got 'maybe')",
        "EASEL_COMPILE: one of off, unet, unet+vae, not 'fast'",
        "EASEL_CPU_THREADS: Input should be greater than or equal to 1 (got '0')",
        "EASEL_VAE_TILE_AREA: Input should be greater than or equal to 0 (got '-1')",
        "EASEL_WARMUP_SIZES: 'big' is not WIDTHxHEIGHT (e.g. 512x768,768x512)",
    ]


def test_a_warm_up_size_the_model_cannot_make_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = settings_error(monkeypatch, EASEL_WARMUP_SIZES="512x500")
    assert problems == ["EASEL_WARMUP_SIZES: '512x500': each side is a multiple of 8, at least 64"]


# --- CPU threads

HYPERTHREADED = {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)}  # 2 cores, 2 threads each


def test_threads_are_one_per_physical_core_the_process_may_use() -> None:
    assert fitted_threads({0, 1, 2, 3}, HYPERTHREADED.get) == 2
    assert fitted_threads({0, 2}, HYPERTHREADED.get) == 1  # affinity: both threads of core 0
    assert fitted_threads({1, 2}, HYPERTHREADED.get) == 2
    two_packages = {0: (0, 0), 1: (1, 0)}  # core 0 of each of two sockets
    assert fitted_threads({0, 1}, two_packages.get) == 2
    assert fitted_threads({0, 1, 5}, lambda cpu: None) == 3  # no topology: each CPU counts
    assert fitted_threads(set(), HYPERTHREADED.get) == 1


def test_a_cpus_core_is_read_from_sysfs(tmp_path: Path) -> None:
    topology = tmp_path / "cpu3" / "topology"
    topology.mkdir(parents=True)
    (topology / "physical_package_id").write_text("1\n")
    (topology / "core_id").write_text("7\n")
    assert core_of(3, tmp_path) == (1, 7)
    assert core_of(4, tmp_path) is None


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("threads")
def test_cpu_threads_come_from_the_setting_then_omp_then_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(acceleration, "allowed_cpus", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(acceleration, "core_of", HYPERTHREADED.get)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert apply_cpu_threads(None, cpu) is None  # the user's OMP_NUM_THREADS stays
    assert torch.get_num_threads() == 1
    assert apply_cpu_threads(3, cpu) == 3  # EASEL_CPU_THREADS wins
    assert torch.get_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert apply_cpu_threads(None, cpu) == 2
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert apply_cpu_threads(4, cuda) is None  # a GPU run leaves torch's threads alone
    assert torch.get_num_threads() == 1


# --- the model's layers


def load_tiny(models_dir: Path, cache_dir: Path) -> LoadedModel:
    """A model of its own: acceleration changes a pipeline in place."""
    folder = models_dir / "stable-diffusion" / "tiny-sd1"
    source = ModelSource("tiny-sd1", SourceKind.DIFFUSERS_FOLDER, str(folder))
    return load_model(source, CPU, cache_dir, HashCache(cache_dir / "hashes.json"))


def pixels(engine: Engine, size: int = 64, **options: Any) -> np.ndarray:
    request = GenerationRequest(
        prompt="a red boat", seeds=(5,), steps=2, width=size, height=size, **options
    )
    return np.asarray(engine.generate(request).images[0].image).astype(int)


def test_the_loaded_models_attention_is_torchs_sdpa(tiny_model: LoadedModel) -> None:
    for part in (tiny_model.pipe.unet, tiny_model.pipe.vae):
        kinds = {type(processor) for processor in part.attn_processors.values()}
        assert kinds == {AttnProcessor2_0}


def test_layers_left_on_plain_attention_are_switched_to_sdpa(
    models_dir: Path, cache_dir: Path
) -> None:
    model = load_tiny(models_dir, cache_dir)
    unet = model.pipe.unet
    names = list(unet.attn_processors)
    unet.set_attn_processor({name: AttnProcessor() for name in names})
    assert use_sdpa(unet) == len(names)
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
    assert use_sdpa(unet) == 0


def test_channels_last_is_off_on_the_cpu_by_default_and_on_for_cuda() -> None:
    assert not Acceleration().wants_channels_last(torch.device("cpu"))
    assert Acceleration().wants_channels_last(torch.device("cuda"))
    assert Acceleration(channels_last=True).wants_channels_last(torch.device("cpu"))
    assert not Acceleration(channels_last=False).wants_channels_last(torch.device("cuda"))


def test_channels_last_changes_the_layout_and_the_image_only_by_rounding(
    models_dir: Path, cache_dir: Path, engine: Engine
) -> None:
    model = load_tiny(models_dir, cache_dir)
    conv = model.pipe.unet.conv_in.weight
    assert conv.is_contiguous()
    faster = Engine(model, acceleration=Acceleration(channels_last=True))
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    vae_conv = model.pipe.vae.decoder.conv_in.weight
    assert vae_conv.is_contiguous(memory_format=torch.channels_last)
    difference = np.abs(pixels(faster) - pixels(engine))
    assert difference.max() <= CHANNELS_LAST_LEVELS


def test_the_vae_decodes_in_tiles_only_above_the_area(
    models_dir: Path, cache_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_tiny(models_dir, cache_dir)
    vae = model.pipe.vae
    tiled: list[tuple[int, ...]] = []
    tiled_decode = vae.tiled_decode

    def spy(z: torch.Tensor, return_dict: bool = True) -> Any:
        tiled.append(tuple(z.shape))
        return tiled_decode(z, return_dict=return_dict)

    monkeypatch.setattr(vae, "tiled_decode", spy)
    at_limit = Engine(model, acceleration=Acceleration(vae_tile_area=64 * 64))
    plain = pixels(engine)
    assert np.array_equal(pixels(at_limit), plain)  # 64x64 is not above 64x64: as before
    assert tiled == []
    above = Engine(model, acceleration=Acceleration(vae_tile_area=64 * 64 - 1))
    image = pixels(above)
    assert tiled == [(1, 4, 8, 8)]
    assert image.shape == plain.shape and not np.array_equal(image, plain)
    Engine(model, acceleration=Acceleration(vae_tile_area=None))
    assert "_decode" not in vae.__dict__  # never: diffusers' own decode, untouched


def test_the_vae_encodes_in_tiles_above_the_area(models_dir: Path, cache_dir: Path) -> None:
    vae = load_tiny(models_dir, cache_dir).pipe.vae
    picture = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(picture).latent_dist.mean
        acceleration.tile_vae_above(vae, 64 * 64)
        assert torch.equal(vae.encode(picture).latent_dist.mean, whole)
        acceleration.tile_vae_above(vae, 32 * 32)
        tiled = vae.encode(picture).latent_dist.mean
    assert tiled.shape == whole.shape and not torch.equal(tiled, whole)


# --- compile's bound and the warm-up


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + 1


@pytest.mark.usefixtures("dynamo")
def test_past_the_limit_new_shapes_run_uncompiled_instead_of_failing() -> None:
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    module = Scale()
    bound_recompiles(2)
    compile_unet(module, counter, enabled=True)
    for length in (1, 2, 3, 4, 2):
        x = torch.arange(float(length))
        with torch.no_grad():
            assert torch.equal(module(x), x * 2 + 1)
    assert counter.frame_count == 2  # lengths 1 and 2 compiled; 3 and 4 ran eagerly
    compile_unet(module, counter, enabled=False)
    assert "forward" not in module.__dict__


def test_warm_up_runs_each_size_at_each_image_count_once(caplog: pytest.LogCaptureFixture) -> None:
    asked: list[GenerationRequest] = []
    with caplog.at_level(logging.INFO, logger="pipeline.acceleration"):
        report = warm_up(asked.append, [(64, 64), (64, 96), (64, 64)], (1, 2))
    assert [(r.width, r.height, r.image_count, r.steps) for r in asked] == [
        (64, 64, 1, 2),
        (64, 64, 2, 2),
        (64, 96, 1, 2),
        (64, 96, 2, 2),
    ]
    assert report.shapes == ((64, 64, 1), (64, 64, 2), (64, 96, 1), (64, 96, 2))
    assert "Compiled and warmed up 64x64 x1, 64x64 x2, 64x96 x1, 64x96 x2 in" in caplog.text


def test_warm_up_warns_when_the_shapes_outnumber_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.acceleration"):
        warm_up(lambda request: None, [(64, 64), (64, 72), (64, 80)], (1,), recompile_limit=2)
    assert "Warming up 3 shapes with room for 2 compiled variants" in caplog.text


def test_a_warm_up_size_the_limits_refuse_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def generate(request: GenerationRequest) -> None:
        if request.width == 2048:
            raise InvalidRequestError("The image is too large: 2048x2048 is above 1024x1024.")

    with caplog.at_level(logging.INFO, logger="pipeline.acceleration"):
        report = warm_up(generate, [(64, 64), (2048, 2048)])
    assert report.shapes == ((64, 64, 1),)
    assert "Not warming up 2048x2048 x1: The image is too large" in caplog.text
    assert "Compiled and warmed up 64x64 x1 in" in caplog.text


def test_without_compile_the_engine_warms_nothing_up(engine: Engine) -> None:
    assert engine.warm_up([(64, 64)]) is None


def test_applying_twice_replaces_the_first(models_dir: Path, cache_dir: Path) -> None:
    model = load_tiny(models_dir, cache_dir)
    accelerate(model.pipe, Acceleration(vae_tile_area=100))
    accelerate(model.pipe, Acceleration(vae_tile_area=None))
    assert "_decode" not in model.pipe.vae.__dict__ and "_encode" not in model.pipe.vae.__dict__


@pytest.mark.usefixtures("threads")
def test_the_bots_engine_gets_the_configured_acceleration(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.cli.common import _load_engine

    for name, value in {
        "EASEL_MODELS_DIR": str(models_dir),
        "EASEL_MODEL": "tiny-sd1",
        "EASEL_CACHE_DIR": str(tmp_path),
        "EASEL_DEVICE": "cpu",
        "EASEL_CHANNELS_LAST": "true",
        "EASEL_VAE_TILE_AREA": "4096",
        "EASEL_CPU_THREADS": "2",
    }.items():
        monkeypatch.setenv(name, value)
    torch.set_num_threads(1)
    engine = _load_engine(Settings(_env_file=None), None, quiet=True, warm_up=True)
    assert engine.acceleration == Acceleration(channels_last=True, vae_tile_area=4096)
    assert engine.model.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert "_decode" in engine.model.pipe.vae.__dict__
    assert torch.get_num_threads() == 2


def test_a_checkpoint_switch_accelerates_the_new_checkpoint(
    models_dir: Path, cache_dir: Path
) -> None:
    loader = ModelLoader(models_dir, CPU, cache_dir, HashCache(cache_dir / "hashes.json"))
    settings = Acceleration(channels_last=True, vae_tile_area=4096)
    engine = Engine(load_tiny(models_dir, cache_dir), loader=loader, acceleration=settings)
    assert engine.use_model("tiny-sd1-single")
    pipe = engine.model.pipe
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert "_decode" in pipe.vae.__dict__
