"""Shared fixtures: tiny random-weight models saved to disk and loaded the way users load them."""

from __future__ import annotations

import gc
import os

# Tests never reach the network: the hub library refuses instead of hanging.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# One intra-op thread, here and in the `easel` processes tests start: the test models are tiny,
# and on a machine busy with other work torch's spinning worker threads make a step ten or more
# times slower than one thread does.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# UNet calls of one image (its prompt and negative rows) in the bots tests start: the cheapest
# fixed shape. The batching tests run the default of 8 rows on their own engines.
os.environ.setdefault("EASEL_BATCH_ROWS", "2")

# Tables are as wide as each test asks (COLUMNS) or the command line's default when piped;
# pytest-xdist's workers inherit COLUMNS=80 from it, which the command line's console would
# keep for the whole run.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from pipeline.batching import BatchMode, BatchShape

if TYPE_CHECKING:  # torch and diffusers load in the processes that run tests (see below)
    from diffusers import StableDiffusionPipeline

    from pipeline.engine import Engine
    from pipeline.loading import LoadedModel

pytest_plugins = ["tests.services"]  # Redis and PostgreSQL for the scale-out tests

# Property tests: enough examples to find the usual slips in every run of the suite, no
# per-example time limit (a busy machine is not a failing test). EASEL_HYPOTHESIS=thorough
# searches ten times as long.
settings.register_profile("easel", max_examples=60, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("EASEL_HYPOTHESIS", "easel"))


@pytest.fixture(scope="session")
def random_sd1() -> StableDiffusionPipeline:
    """The tiny random SD 1.x pipeline (seed 0), built once, for tests that only read it (save
    it, write LoRAs for its shapes, compare weights). A test that changes a pipeline (loads a
    LoRA, swaps its scheduler) builds its own with `build_random_pipeline`."""
    from tests.tiny_models import build_random_pipeline

    return build_random_pipeline("sd1")


@pytest.fixture(scope="session")
def random_sd2() -> StableDiffusionPipeline:
    """The tiny random SD 2.x pipeline (seed 0), built once, read only as `random_sd1`."""
    from tests.tiny_models import build_random_pipeline

    return build_random_pipeline("sd2")


@pytest.fixture(scope="session")
def models_dir(
    tmp_path_factory: pytest.TempPathFactory, random_sd1: StableDiffusionPipeline
) -> Path:
    """A models folder holding a tiny SD 1.x diffusers folder and the same model as one file."""
    from tests.ldm_checkpoint import save_single_file

    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "stable-diffusion"
    checkpoints.mkdir()
    pipe = random_sd1
    pipe.save_pretrained(checkpoints / "tiny-sd1")
    save_single_file(pipe, checkpoints / "tiny-sd1-single.safetensors", "sd1")
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path, cache_dir: Path) -> LoadedModel:
    from pipeline.loading import HashCache, ModelSource, SourceKind, load_model
    from tests.tiny_models import CPU

    source = ModelSource(
        "tiny-sd1", SourceKind.DIFFUSERS_FOLDER, str(models_dir / "stable-diffusion" / "tiny-sd1")
    )
    return load_model(source, CPU, cache_dir, HashCache(cache_dir / "hashes.json"))


# See EASEL_BATCH_ROWS above: the shared engine pads nothing for a one-image job.
TEST_BATCHING = BatchShape(BatchMode.FIXED, rows=2)


@pytest.fixture(scope="session")
def engine(tiny_model: LoadedModel) -> Iterator[Engine]:
    from pipeline.engine import Engine

    yield Engine(tiny_model, batching=TEST_BATCHING)


@pytest.fixture
def unet_rows(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The row count of every UNet forward call of `engine` (the test module's own, where it
    has one) and of every engine on the same weights."""
    import torch

    unet = engine.pipelines[0].unet
    original = unet.forward
    rows: list[int] = []

    def counting(sample: torch.Tensor, *args: object, **kwargs: object) -> object:
        rows.append(sample.shape[0])
        return original(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", counting)
    yield rows


@pytest.fixture
def dynamo() -> Iterator[None]:
    """torch.compile's global state put back after the test: its recompile limit, its caches."""
    import torch._dynamo

    limit = torch._dynamo.config.recompile_limit
    yield
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.reset()


def pytest_collection_finish(session: pytest.Session) -> None:
    """What is loaded by now (torch, diffusers, every test module) lives to the end of the run:
    it is frozen out of the garbage collector, whose full collections (automatic ones, and the
    engine's after a checkpoint switch) would otherwise walk it each time, 0.6 s a walk.
    What the tests load and keep later (libraries imported on first use, the shared models)
    still makes a full collection cost a few tenths of a second, so the automatic ones come
    ten times less often (the young generations are collected as before)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 100)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked `heavy` (ten seconds or more: processes, compiling, many generations) run
    first, the rest in their usual order after them. `make test` runs the suite in one process
    per core, handing out whole modules in this order, so the short ones at the end fill the
    gaps and the processes finish together."""
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    light = [item for item in items if not item.get_closest_marker("heavy")]
    items[:] = heavy + light
