"""Checking jobs without the weights (the bot of a scale-out setup) answers exactly as the
local executor does with the checkpoint loaded: the same resolved request, notes, cost and
batch key, or the same refusal in English and Korean; from a diffusers folder, from a single
file's header, from a folder with no weights in it, and from the hub cache."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from pipeline import checkpoints
from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.executors.local import LocalExecutor
from pipeline.executors.preparer import OfflinePreparer, UnusableCheckpointError
from pipeline.executors.work import PreparedWork, Work
from pipeline.loading import HashCache, ModelSource, SourceKind, load_model
from pipeline.request import (
    RANDOM_SEED,
    GenerationRequest,
    HiresFix,
    ImageRef,
    LoraUse,
    UpscaleRequest,
)
from pipeline.validation import MAX_SEED, Limits
from tests.conftest import TEST_BATCHING
from tests.tiny_models import CPU

pytestmark = pytest.mark.heavy  # started first: see conftest.py

ROOT = Path(__file__).resolve().parent.parent
FOLDER = "tiny-sd1"
SINGLE = "tiny-sd1-single"
# Prompts of more than three 75-token chunks are refused: the limits reach both sides.
LIMITS = Limits(max_prompt_chunks=3)
WEIGHTS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx")


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


LONG = "a red fox, " * 30  # 120 tokens: two chunks
TOO_LONG = "a red fox, " * 80  # five chunks
IMAGE = ImageRef(data=_png(96, 80))

# (id, request fields); every request is checked on both checkpoints, each for itself.
CASES: list[tuple[str, dict[str, object]]] = [
    ("plain", {"prompt": "a castle on a hill"}),
    ("negative", {"prompt": "a castle", "negative_prompt": "blurry, (ugly:1.3)"}),
    ("and", {"prompt": "a castle AND a dragon :0.5"}),
    ("too-many-and", {"prompt": " AND ".join(["a cat"] * 9)}),
    ("break", {"prompt": "a castle BREAK a dragon"}),
    ("long", {"prompt": LONG}),
    ("long-negative", {"prompt": "a fox", "negative_prompt": LONG}),
    ("too-long", {"prompt": TOO_LONG}),
    ("too-long-by-break", {"prompt": "a BREAK b BREAK c BREAK d"}),
    ("prompt-editing", {"prompt": "a [cat:dog:0.5] in a [red|blue] hat", "steps": 6}),
    ("lora-tag", {"prompt": "a harbour <lora:inky:0.5>"}),
    ("lora-case", {"prompt": "a harbour <lora:INKY:1>"}),
    ("lora-list", {"prompt": "a harbour", "loras": (LoraUse("inky", 0.7, 0.4),)}),
    ("lora-zero", {"prompt": "a harbour <lora:inky:0>"}),
    ("lora-unknown", {"prompt": "a harbour <lora:inkk:1>"}),
    ("lora-far-away", {"prompt": "a harbour <lora:far-away:0.8>"}),
    ("hires-latent", {"width": 64, "height": 64, "hires": HiresFix(2.0, None, 0.5, "Latent")}),
    ("hires-lanczos", {"width": 64, "height": 64, "hires": HiresFix(1.5, 4, 0.5, "Lanczos")}),
    ("hires-missing", {"width": 64, "height": 64, "hires": HiresFix(2.0, None, 0.5, "NoSuch")}),
    ("hires-too-big", {"width": 768, "height": 768, "hires": HiresFix(2.0, None, 0.5)}),
    ("img2img", {"init_image": IMAGE, "denoising_strength": 0.5}),
    ("img2img-sized", {"init_image": IMAGE, "width": 72, "height": 64}),
    ("img2img-no-steps", {"init_image": IMAGE, "steps": 2, "denoising_strength": 0.2}),
    ("img2img-hires", {"init_image": IMAGE, "hires": HiresFix(2.0)}),
    ("img2img-not-an-image", {"init_image": ImageRef(data=b"no picture here")}),
    ("clip-skip-2", {"clip_skip": 2}),
    ("clip-skip-too-large", {"clip_skip": 3}),
    ("sampler-unknown", {"sampler": "Eulr a"}),
    ("sampler-karras", {"sampler": "DPM++ 2M", "schedule_type": "Karras"}),
    ("sampler-no-karras", {"sampler": "Euler a", "schedule_type": "Karras"}),
    ("lcm", {"sampler": "LCM", "steps": 4, "cfg_scale": 1.5}),
    ("lcm-too-many-steps", {"sampler": "LCM", "steps": 60}),
    ("ddim-unguided", {"sampler": "DDIM", "cfg_scale": 1.0}),
    ("size-rounded", {"width": 100, "height": 70}),
    ("size-small", {"width": 20, "height": 30}),
    ("size-too-large", {"width": 2048, "height": 2048}),
    ("size-negative", {"width": -8, "height": 64}),
    ("steps-out-of-range", {"steps": 500}),
    ("tiling", {"tiling": True, "width": 64, "height": 64}),
    ("random-seeds", {"seeds": (RANDOM_SEED, 7, None), "width": 64, "height": 64}),
    (
        "variation-seeds",
        {
            "seeds": (3, RANDOM_SEED),
            "variation_seeds": (RANDOM_SEED, 11),
            "variation_strength": 0.3,
        },
    ),
]


def _request(model: str, fields: dict[str, object]) -> GenerationRequest:
    values: dict[str, object] = {"prompt": "a lighthouse", "steps": 8, "seeds": (5,), **fields}
    return GenerationRequest(model=model, **values)  # type: ignore[arg-type]


Answer = PreparedWork | tuple[str, str, str | None]
Prepare = Callable[[Work], object]


def _answer(prepare: Prepare, work: Work) -> Answer:
    try:
        prepared = asyncio.run(prepare(work))  # type: ignore[arg-type]
    except InvalidRequestError as error:
        return (type(error).__name__, str(error), error.ko)
    assert isinstance(prepared, PreparedWork)
    return prepared


def _seeds_kept(asked: tuple[int | None, ...], drawn: tuple[int | None, ...]) -> None:
    assert len(drawn) == len(asked)
    for wanted, seed in zip(asked, drawn, strict=True):
        assert isinstance(seed, int) and 0 <= seed <= MAX_SEED
        if wanted is not None and wanted != RANDOM_SEED:
            assert seed == wanted


def assert_same_answer(work: Work, local: Answer, offline: Answer) -> None:
    """Equal answers; seeds drawn at random are compared for being drawn, not by value."""
    if isinstance(local, tuple) or isinstance(offline, tuple):
        assert offline == local
        return
    assert isinstance(work, GenerationRequest)
    for answer in (local, offline):
        assert isinstance(answer.work, GenerationRequest)
        _seeds_kept(work.seeds, answer.work.seeds)
        _seeds_kept(work.variation_seeds, answer.work.variation_seeds)
    assert isinstance(local.work, GenerationRequest) and isinstance(offline.work, GenerationRequest)
    drawn = {"seeds": local.work.seeds, "variation_seeds": local.work.variation_seeds}
    assert replace(offline, work=replace(offline.work, **drawn)) == local


# ------------------------------------------------------------------------------------ fixtures


def _models_folder(root: Path, checkpoints_from: Path, loras: tuple[str, ...]) -> Path:
    """A models folder with the session's checkpoints (linked, not copied) and LoRA files
    of its own (a LoRA's contents are read when a job runs, never when it is checked)."""
    root.mkdir(parents=True)
    (root / "stable-diffusion").symlink_to(checkpoints_from, target_is_directory=True)
    for name in loras:
        path = root / "lora" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"read when a job runs")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("offline") / "models"
    return _models_folder(root, models_dir / "stable-diffusion", ("inky", "far-away"))


@pytest.fixture(scope="module")
def folder_engine(models_dir: Path, cache_dir: Path, models: Path) -> Engine:
    # Loaded here, not the session's tiny model: other tests' runs swap that pipeline's
    # scheduler, and the engine reads the checkpoint's own from the pipeline it is given.
    path = models_dir / "stable-diffusion" / FOLDER
    source = ModelSource(FOLDER, SourceKind.DIFFUSERS_FOLDER, str(path))
    model = load_model(source, CPU, cache_dir, HashCache(cache_dir / "hashes.json"))
    return Engine(model, limits=LIMITS, models_dir=models, batching=TEST_BATCHING)


@pytest.fixture(scope="module")
def single_engine(models_dir: Path, cache_dir: Path, models: Path) -> Engine:
    path = models_dir / "stable-diffusion" / f"{SINGLE}.safetensors"
    source = ModelSource(SINGLE, SourceKind.SINGLE_FILE, str(path))
    model = load_model(source, CPU, cache_dir, HashCache(cache_dir / "hashes.json"))
    return Engine(model, limits=LIMITS, models_dir=models, batching=TEST_BATCHING)


@pytest.fixture(scope="module")
def engines(folder_engine: Engine, single_engine: Engine) -> dict[str, Engine]:
    return {FOLDER: folder_engine, SINGLE: single_engine}


@pytest.fixture(scope="module")
def preparer(models: Path) -> OfflinePreparer:
    return OfflinePreparer(models, LIMITS)


def _local(engine: Engine) -> Prepare:
    return LocalExecutor(engine, engine.models_dir or Path("models")).prepare


# ----------------------------------------------------------------------------------- the table


@pytest.mark.parametrize("model", [FOLDER, SINGLE])
@pytest.mark.parametrize(("case", "fields"), CASES, ids=[case for case, _ in CASES])
def test_the_weights_free_answer_is_the_local_executors(
    engines: dict[str, Engine],
    preparer: OfflinePreparer,
    model: str,
    case: str,
    fields: dict[str, object],
) -> None:
    work = _request(model, fields)
    local = _answer(_local(engines[model]), work)
    assert_same_answer(work, local, _answer(preparer.prepare, work))


def test_the_table_covers_acceptances_and_refusals(
    engines: dict[str, Engine], preparer: OfflinePreparer
) -> None:
    """The table is not all refusals: what a user would notice differs between its rows."""
    answers = {case: _answer(preparer.prepare, _request(FOLDER, fields)) for case, fields in CASES}
    refused = {case for case, answer in answers.items() if isinstance(answer, tuple)}
    assert refused == {
        "too-many-and",
        "too-long",
        "too-long-by-break",
        "lora-unknown",
        "hires-missing",
        "hires-too-big",
        "img2img-no-steps",
        "img2img-hires",
        "img2img-not-an-image",
        "clip-skip-too-large",
        "sampler-unknown",
        "sampler-no-karras",
        "lcm-too-many-steps",
        "size-too-large",
        "size-negative",
        "steps-out-of-range",
    }
    costs = {case: answer.cost for case, answer in answers.items() if case not in refused}
    assert costs["plain"] == 1.0 and costs["long"] == 2.0 and costs["and"] == 1.5  # type: ignore[union-attr]
    assert answers["size-rounded"].notes == (  # type: ignore[union-attr]
        "Size 100x70 was rounded to 96x72 (sides are multiples of 8, at least 64).",
    )
    keys = {answers[case].batch_key for case in ("plain", "lora-tag", "lcm", "tiling")}  # type: ignore[union-attr]
    assert len(keys) == 4
    # The two checkpoints differ in their native size: the preparer tells them apart.
    sizes = {
        model: _answer(preparer.prepare, _request(model, {})).work.width  # type: ignore[union-attr]
        for model in (FOLDER, SINGLE)
    }
    assert sizes == {model: engine.model.native_size for model, engine in engines.items()}
    assert sizes[FOLDER] != sizes[SINGLE]


@pytest.mark.parametrize("model", [FOLDER, SINGLE])
def test_korean_refusals_match(
    engines: dict[str, Engine], preparer: OfflinePreparer, model: str
) -> None:
    work = _request(model, {"prompt": TOO_LONG})
    local, offline = _answer(_local(engines[model]), work), _answer(preparer.prepare, work)
    assert isinstance(offline, tuple) and offline == local
    assert offline[2] is not None and "75토큰" in offline[2]


UPSCALES: list[tuple[str, UpscaleRequest]] = [
    ("upscale", UpscaleRequest(image=ImageRef(data=_png(40, 30)), scale=2)),
    ("upscale-4x-model", UpscaleRequest(image=ImageRef(data=_png(40, 30)), scale=4, upscaler="x")),
    ("upscale-scale-3", UpscaleRequest(image=ImageRef(data=_png(40, 30)), scale=3)),
    ("upscale-not-an-image", UpscaleRequest(image=ImageRef(data=b"nothing"), scale=2)),
    ("upscale-gone", UpscaleRequest(image=ImageRef(path="/nowhere/gone.png"), scale=2)),
    ("upscale-too-large", UpscaleRequest(image=ImageRef(data=_png(3000, 3000)), scale=2)),
]


@pytest.mark.parametrize(("case", "work"), UPSCALES, ids=[case for case, _ in UPSCALES])
def test_upscales_are_checked_alike(
    folder_engine: Engine, preparer: OfflinePreparer, case: str, work: UpscaleRequest
) -> None:
    local = _answer(_local(folder_engine), work)
    assert _answer(preparer.prepare, work) == local
    accepted = case in ("upscale", "upscale-4x-model")
    assert isinstance(local, PreparedWork) == accepted
    if accepted:
        assert local == PreparedWork(work=work, batch_key=None, cost=1.0)


# ------------------------------------------------------------------------- LoRAs on workers


def test_a_lora_a_worker_announced_is_valid_without_its_file(
    tmp_path: Path, models_dir: Path, folder_engine: Engine
) -> None:
    """The engine's folder has `far-away`; the bot's has only `inky`, and a worker announces
    `far-away`: the answers are the engine's, and a typo lists both."""
    bot_models = _models_folder(tmp_path / "models", models_dir / "stable-diffusion", ("inky",))
    announced: list[str] = []
    preparer = OfflinePreparer(bot_models, LIMITS, remote_loras=lambda: announced)
    far_away = _request(FOLDER, {"prompt": "a harbour <lora:far-away:0.8> <lora:inky:0.2>"})
    refused = _answer(preparer.prepare, far_away)
    assert isinstance(refused, tuple) and refused[0] == "UnknownLoraError"
    assert "Available LoRAs: inky." in refused[1]

    announced.append("Far-Away")  # asked afresh for each job, matched as files are
    local = _answer(_local(folder_engine), far_away)
    assert_same_answer(far_away, local, _answer(preparer.prepare, far_away))

    typo = _request(FOLDER, {"prompt": "a harbour <lora:far-awya:1>"})
    told = _answer(preparer.prepare, typo)
    assert isinstance(told, tuple)
    assert "Did you mean 'Far-Away'?" in told[1] and "Available LoRAs: Far-Away, inky." in told[1]


# ----------------------------------------------------------------------- without the weights


def _without_weights(source: Path, destination: Path) -> Path:
    """A copy of a diffusers folder with its configs and tokenizer only."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(*(f"*{s}" for s in WEIGHTS)))
    assert not [path for path in destination.rglob("*") if path.suffix in WEIGHTS]
    return destination


CHECKED = ["plain", "long", "too-long", "lora-unknown", "img2img", "hires-lanczos"]
CHECKED += ["clip-skip-too-large", "lcm-too-many-steps", "random-seeds"]


def _same_on(preparer: OfflinePreparer, engine: Engine, model: str) -> None:
    for case, fields in CASES:
        if case in CHECKED:
            work = _request(model, fields)
            local = _answer(_local(engine), work)
            assert_same_answer(work, local, _answer(preparer.prepare, work))


def test_a_folder_without_weights_gives_the_same_answers(
    tmp_path: Path, models_dir: Path, models: Path, folder_engine: Engine
) -> None:
    root = tmp_path / "models"
    _without_weights(models_dir / "stable-diffusion" / FOLDER, root / "stable-diffusion" / FOLDER)
    shutil.copytree(models / "lora", root / "lora")
    _same_on(OfflinePreparer(root, LIMITS), folder_engine, FOLDER)


def _header_only_copy(source: Path, destination: Path) -> Path:
    """The file with every tensor's bytes overwritten (NaN floats): only its header is true."""
    data = bytearray(source.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = b"\xff" * (len(data) - start)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(bytes(data))
    return destination


def test_a_single_file_is_read_from_its_header_alone(
    tmp_path: Path,
    models_dir: Path,
    models: Path,
    single_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """safetensors refuses a file cut after its header, so the tensors are spoiled instead,
    and reading them fails the test."""

    def no_tensors(*args: object, **kwargs: object) -> None:
        raise AssertionError("checking a job must not read a checkpoint's tensors")

    monkeypatch.setattr(checkpoints, "read_checkpoint", no_tensors)
    monkeypatch.setattr("safetensors.torch.load_file", no_tensors)
    root = tmp_path / "models"
    original = models_dir / "stable-diffusion" / f"{SINGLE}.safetensors"
    _header_only_copy(original, root / "stable-diffusion" / f"{SINGLE}.safetensors")
    shutil.copytree(models / "lora", root / "lora")
    _same_on(OfflinePreparer(root, LIMITS), single_engine, SINGLE)


def test_reading_traits_imports_no_torch(
    models_dir: Path, folder_engine: Engine, single_engine: Engine
) -> None:
    """The bot's start: the preparer and the traits of both kinds of checkpoint, without
    torch or diffusers (transformers comes with the tokenizer)."""
    code = f"""
import json, sys
from pathlib import Path
from pipeline.executors.preparer import OfflinePreparer
early = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
preparer = OfflinePreparer(Path({str(models_dir)!r}))
traits = {{}}
for name in ({FOLDER!r}, {SINGLE!r}):
    t = preparer.traits(name)
    traits[name] = [t.family.id, t.native_size, t.max_clip_skip, t.embeds_guidance]
late = [m for m in ("torch", "diffusers") if m in sys.modules]
print(json.dumps([early, late, traits]))
"""
    finished = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    early, late, traits = json.loads(finished.stdout.splitlines()[-1])
    assert early == [] and late == []
    for name, engine in ((FOLDER, folder_engine), (SINGLE, single_engine)):
        want = engine.traits
        assert traits[name] == [
            want.family.id,
            want.native_size,
            want.max_clip_skip,
            want.embeds_guidance,
        ]


# ---------------------------------------------------------------------- names and the hub


def test_a_checkpoint_it_cannot_read_is_a_clear_refusal(
    models: Path, preparer: OfflinePreparer
) -> None:
    for name in ("no-such-model", "someone/not-downloaded"):
        answer = _answer(preparer.prepare, _request(name, {}))
        assert isinstance(answer, tuple) and answer[0] == UnusableCheckpointError.__name__
        assert answer[1].startswith(f"The checkpoint {name!r} cannot be used")
        assert answer[2] is not None and "이유:" in answer[2]
    hub = _answer(preparer.prepare, _request("someone/not-downloaded", {}))
    assert "not in this machine's hub cache" in hub[1]  # type: ignore[index]
    # Work that names no checkpoint takes the default one.
    work = replace(_request(FOLDER, {}), model=None)
    assert isinstance(
        _answer(OfflinePreparer(models, LIMITS, default_model=FOLDER).prepare, work), PreparedWork
    )
    assert isinstance(_answer(preparer.prepare, work), tuple)


def test_a_hub_repo_is_read_from_the_hub_cache(
    tmp_path: Path,
    models_dir: Path,
    models: Path,
    folder_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny"
    commit = "0" * 40
    _without_weights(models_dir / "stable-diffusion" / FOLDER, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    preparer = OfflinePreparer(models, LIMITS)
    for fields in ({}, {"prompt": LONG}, {"clip_skip": 3}):
        work = _request("someone/tiny", fields)
        local = _answer(_local(folder_engine), work)
        assert_same_answer(work, local, _answer(preparer.prepare, work))


@pytest.mark.parametrize("model", [FOLDER, SINGLE])
def test_the_scheduler_config_is_the_loaded_pipelines(
    engines: dict[str, Engine], preparer: OfflinePreparer, model: str
) -> None:
    """Whether a sampler can run a number of steps is asked of a scheduler built from it."""
    assert dict(preparer.traits(model).scheduler_config()) == engines[model]._scheduler_config
