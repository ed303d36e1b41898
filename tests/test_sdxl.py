"""SDXL base checkpoints: loaded from a diffusers folder or an A1111 single file, the A1111
prompt language on both text encoders with the pooled embedding, batches equal to each job
alone, img2img, the hires fix and variations, and the weights-free checks of a bot whose
workers hold the weights. All on a tiny random-weight SDXL pipeline built in code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pipeline.batching import BatchMode, BatchShape
from pipeline.engine import Engine
from pipeline.errors import ModelLoadError
from pipeline.families import SDXL
from pipeline.loading import HashCache, LoadedModel, ModelSource, SourceKind, load_model
from pipeline.model_traits import folder_traits, single_file_traits
from pipeline.preparation import prepare_job
from pipeline.prompts.encoding_xl import XLPromptEncoder
from pipeline.request import GenerationRequest, HiresFix, ImageRef, ProgressEvent, ResultStatus
from pipeline.validation import Limits
from tests.ldm_checkpoint import save_single_file
from tests.lora_files import LoraSpec, write_lora
from tests.tiny_models import CPU, build_random_xl_pipeline

pytestmark = pytest.mark.heavy  # started first: see conftest.py

SIZE = 64  # the tiny model's native size (SDXL base: 1024)


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("xl-models") / "stable-diffusion" / "tiny-xl"
    build_random_xl_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def xl_model(xl_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    cache = tmp_path_factory.mktemp("xl-cache")
    source = ModelSource("tiny-xl", SourceKind.DIFFUSERS_FOLDER, str(xl_folder))
    return load_model(source, CPU, cache, HashCache(cache / "hashes.json"))


@pytest.fixture(scope="module")
def xl_engine(xl_model: LoadedModel) -> Engine:
    return Engine(xl_model, batching=BatchShape(BatchMode.FIXED, rows=2))


def request(prompt: str = "a red boat on a lake", **overrides: object) -> GenerationRequest:
    values: dict[str, object] = {
        "prompt": prompt,
        "seeds": (5,),
        "steps": 3,
        "width": SIZE,
        "height": SIZE,
        "sampler": "Euler a",
    }
    values.update(overrides)
    return GenerationRequest(**values)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def image_of(engine: Engine, item: GenerationRequest) -> np.ndarray:
    result = engine.generate(item)
    assert result.status is ResultStatus.DONE, result.error
    return pixels(result.images[0].image)


def test_an_sdxl_folder_loads_as_sdxl_and_generates_repeatably(
    xl_model: LoadedModel, xl_engine: Engine
) -> None:
    assert xl_model.family is SDXL
    assert xl_model.native_size == SIZE
    result = xl_engine.generate(request(seeds=(5, 6)))
    assert result.status is ResultStatus.DONE
    first, second = (pixels(item.image) for item in result.images)
    assert first.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(first, second), "two seeds, two images"
    assert np.array_equal(first, image_of(xl_engine, request())), "a seed gives its image again"
    infotext = result.images[0].infotext
    assert (infotext.model, infotext.seed, infotext.width) == ("tiny-xl", 5, SIZE)


def test_a_plain_prompt_is_encoded_as_diffusers_encodes_it(xl_model: LoadedModel) -> None:
    """For a prompt without weights or breaks, A1111's way and diffusers' own agree: both
    encoders' penultimate layers side by side, the pooled embedding of the second."""
    pipe = xl_model.pipe
    encoder = XLPromptEncoder(pipe, clip_skip=1)
    expected, _, expected_pooled, _ = pipe.encode_prompt(
        "a red boat on a lake", do_classifier_free_guidance=False
    )
    assert torch.allclose(encoder.encode("a red boat on a lake"), expected, atol=1e-6)
    assert torch.allclose(encoder.pooled("a red boat on a lake"), expected_pooled, atol=1e-6)


def test_the_prompt_language_reaches_both_encoders(
    xl_model: LoadedModel, xl_engine: Engine
) -> None:
    encoder = XLPromptEncoder(xl_model.pipe, clip_skip=1)
    plain = encoder.encode("a red boat")
    width = xl_model.pipe.text_encoder.config.hidden_size
    width_2 = xl_model.pipe.text_encoder_2.config.hidden_size
    assert plain.shape == (1, 77, width + width_2)
    assert encoder.encode("a red boat BREAK a lake").shape[1] == 2 * 77
    weighted = encoder.encode("a (red:1.6) boat")
    # Emphasis reaches both halves of the token's embedding.
    assert not torch.allclose(weighted[0, 2, :width], plain[0, 2, :width])
    assert not torch.allclose(weighted[0, 2, width:], plain[0, 2, width:])
    # The pooled embedding is the first chunk's, as in A1111.
    assert torch.equal(encoder.pooled("a red boat BREAK a lake"), encoder.pooled("a red boat"))
    base = image_of(xl_engine, request("a red boat", steps=6))
    for changed in ("a (red:1.6) boat", "a red boat AND a cat", "a [red boat:green forest:0.3]"):
        assert not np.array_equal(image_of(xl_engine, request(changed, steps=6)), base), changed


def test_clip_skip_goes_below_the_penultimate_layer_only_from_3(xl_model: LoadedModel) -> None:
    pipe = xl_model.pipe
    trained = XLPromptEncoder(pipe, clip_skip=1).encode("a red boat")
    assert torch.equal(XLPromptEncoder(pipe, clip_skip=2).encode("a red boat"), trained)
    assert not torch.allclose(XLPromptEncoder(pipe, clip_skip=3).encode("a red boat"), trained)


def test_a_batch_of_sdxl_jobs_equals_each_job_alone(xl_engine: Engine) -> None:
    """The pooled embedding rides with each row: jobs with other prompts, negative prompts and
    AND parts share the UNet calls and each still gets its own image."""
    requests = [
        request("a red boat", seeds=(1, 2)),
        request("a lighthouse AND a storm", negative_prompt="blurry", seeds=(3,)),
        request("a (small:1.3) cabin", cfg_scale=4.0, seeds=(4,)),
    ]
    results = xl_engine.run_batch([xl_engine.prepare(item) for item in requests])
    for item, result in zip(requests, results, strict=True):
        alone = xl_engine.generate(item)
        for batched, single in zip(result.images, alone.images, strict=True):
            assert np.array_equal(pixels(batched.image), pixels(single.image))


def test_img2img_hires_and_variations_run_on_sdxl(xl_engine: Engine, tmp_path: Path) -> None:
    source = tmp_path / "source.png"
    Image.new("RGB", (SIZE, SIZE), (200, 40, 40)).save(source)
    changed = image_of(
        xl_engine, request(init_image=ImageRef(path=str(source)), denoising_strength=0.5)
    )
    assert changed.shape == (SIZE, SIZE, 3)
    assert np.abs(changed - pixels(Image.open(source))).mean() > 0

    hires = xl_engine.generate(request(hires=HiresFix(scale=2.0, upscaler="Latent")))
    assert hires.status is ResultStatus.DONE
    assert hires.images[0].image.size == (2 * SIZE, 2 * SIZE)

    original = image_of(xl_engine, request())
    subtle = image_of(xl_engine, request(variation_seeds=(99,), variation_strength=0.1))
    strong = image_of(xl_engine, request(variation_seeds=(99,), variation_strength=0.9))
    assert 0 < np.abs(subtle - original).mean() < np.abs(strong - original).mean()


def test_an_upscale_with_a_detail_pass_runs_on_sdxl(xl_engine: Engine) -> None:
    """The U buttons' path: Lanczos to twice the size, then img2img from the image's own
    parameters at that size."""
    from pipeline.upscale import upscale_image
    from pipeline.upscale_detail import plan_detail

    made = xl_engine.generate(request()).images[0]
    enlarged, _ = upscale_image(made.image, 2, None, 10**7)
    plan = plan_detail(made.infotext, enlarged, 0.3, 10**7)
    assert plan.request is not None
    detailed = xl_engine.generate(plan.request)
    assert detailed.status is ResultStatus.DONE
    image = detailed.images[0].image
    assert image.size == (2 * SIZE, 2 * SIZE)
    assert detailed.images[0].infotext.prompt == made.infotext.prompt
    assert not np.array_equal(pixels(image), pixels(enlarged)), "the pass changed the pixels"


def test_offline_checks_of_an_sdxl_folder_give_the_engines_answer(
    xl_folder: Path, xl_engine: Engine
) -> None:
    """A bot whose GPU workers hold the weights checks SDXL jobs from the folder's configs and
    tokenizers alone, and resolves them as the engine does."""
    traits = folder_traits(xl_folder)
    assert traits.family is SDXL
    assert traits.native_size == SIZE
    models_dir = xl_folder.parent.parent

    def no_loras(name: str) -> None:
        raise AssertionError(name)

    for item in (
        request(prompt="a boat, " * 60, width=None, height=None),
        request(seeds=(None, None), clip_skip=3),
    ):
        offline = prepare_job(item, traits, Limits(), models_dir, no_loras)
        loaded = xl_engine.prepare(item)
        assert offline.request.width == loaded.request.width == SIZE
        assert offline.request.clip_skip == loaded.request.clip_skip
        assert len(offline.request.seeds) == len(loaded.request.seeds)
        assert offline.prompt == loaded.prompt
    found: list[str] = []
    with_lora = prepare_job(
        request("a boat <lora:style:0.7>"), traits, Limits(), models_dir, found.append
    )
    assert found == ["style"] and [use.name for use in with_lora.loras] == ["style"]


def test_an_a1111_sdxl_single_file_loads_bit_exactly_and_gives_the_folders_images(
    tmp_path: Path, xl_engine: Engine
) -> None:
    """The file as A1111 keeps it (`conditioner.embedders.*`, `label_emb`), its configs read
    off its own tensors: the same weights as the folder, so the same pixels."""
    original = xl_engine.model.pipe
    path = save_single_file(original, tmp_path / "tiny-xl.safetensors", "sdxl")
    source = ModelSource("tiny-xl-single", SourceKind.SINGLE_FILE, str(path))
    traits = single_file_traits(path)
    assert (traits.family, traits.native_size) == (SDXL, 1024)  # SDXL's, from the shipped config
    model = load_model(source, CPU, tmp_path / "cache", HashCache(tmp_path / "hashes.json"))
    assert model.family is SDXL and model.short_hash is not None
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected = getattr(original, part).state_dict()
        loaded = getattr(model.pipe, part).state_dict()
        assert expected.keys() == loaded.keys(), part
        assert all(torch.equal(expected[key], loaded[key]) for key in expected), part
    single = Engine(model, batching=BatchShape(BatchMode.FIXED, rows=2))
    assert np.array_equal(image_of(single, request()), image_of(xl_engine, request()))


def test_the_sdxl_refiner_is_refused_by_name(tmp_path: Path, xl_folder: Path) -> None:
    from pipeline.checkpoint_names import folder_family
    from pipeline.checkpoints import detect_family, read_shapes

    single = tmp_path / "refiner.safetensors"
    save_file(
        {
            "conditioner.embedders.0.model.ln_final.weight": torch.zeros(4),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        },
        single,
    )
    with pytest.raises(ModelLoadError, match="refiner"):
        detect_family(read_shapes(single), single)

    refiner = tmp_path / "refiner"
    refiner.mkdir()
    for part in ("model_index.json", "unet", "text_encoder"):
        source = xl_folder / part
        if source.is_dir():
            (refiner / part).mkdir()
            (refiner / part / "config.json").write_text((source / "config.json").read_text())
        else:
            (refiner / part).write_text(
                source.read_text().replace('"text_encoder": [', '"text_encoder": null, "x": [')
            )
    with pytest.raises(ModelLoadError, match="refiner"):
        folder_family(refiner)


def test_sdxl_previews_use_sdxl_latents(xl_engine: Engine) -> None:
    from pipeline.previews import XL_LATENTS, LinearDecoder

    decoder = xl_engine.preview_maker().decoder
    assert isinstance(decoder, LinearDecoder) and decoder.space is XL_LATENTS
    events: list[ProgressEvent] = []
    result = xl_engine.generate(request(steps=4), on_progress=events.append, preview_every=0.0)
    assert result.status is ResultStatus.DONE
    assert any(event.previews for event in events), "a live preview while it works"


@pytest.fixture(scope="module")
def lora_engine(
    xl_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory, random_sd1: object
) -> Engine:
    """The SDXL engine with a LoRA folder: one LoRA in diffusers' layout and the same weights
    in kohya's (`lora_te1_`, `lora_te2_`), one for the second text encoder alone, and one made
    for SD 1.x."""
    models = tmp_path_factory.mktemp("xl-loras")
    pipe = xl_model.pipe
    same = LoraSpec(seed=3, alphas=(4.0,))  # alpha = rank: kohya's scale is 1, as diffusers'
    write_lora(pipe, models / "lora" / "style.safetensors", same)
    write_lora(pipe, models / "lora" / "style-kohya.safetensors", same, kohya=True)
    second_only = LoraSpec(seed=4, unet=False, text_encoder=False, std=1.0)
    write_lora(pipe, models / "lora" / "second.safetensors", second_only, kohya=True)
    write_lora(random_sd1, models / "lora" / "sd15.safetensors")  # type: ignore[arg-type]
    return Engine(xl_model, batching=BatchShape(BatchMode.FIXED, rows=2), models_dir=models)


def test_sdxl_loras_in_both_layouts_reach_the_unet_and_both_text_encoders(
    lora_engine: Engine,
) -> None:
    plain = image_of(lora_engine, request())
    styled = image_of(lora_engine, request("a red boat on a lake <lora:style:1>"))
    assert not np.array_equal(styled, plain)
    kohya = image_of(lora_engine, request("a red boat on a lake <lora:style-kohya:1>"))
    assert np.abs(kohya - styled).max() <= 1, "the same weights in kohya's layout"
    unused = image_of(lora_engine, request("a red boat on a lake <lora:style:0>"))
    assert np.array_equal(unused, plain)
    second = image_of(lora_engine, request("a red boat on a lake <lora:second:1>"))
    assert not np.array_equal(second, plain), "a LoRA of the second text encoder alone"
    unweighted = image_of(lora_engine, request("a red boat on a lake <lora:second:1:te=0>"))
    assert np.array_equal(unweighted, plain), "te= weighs the second text encoder too"
    assert image_of(lora_engine, request()).tolist() == plain.tolist(), "unloaded after"


def test_an_sd15_lora_on_sdxl_is_refused_by_what_it_does_not_fit(lora_engine: Engine) -> None:
    plain = image_of(lora_engine, request())
    with pytest.raises(ModelLoadError, match="does not fit this model"):
        lora_engine.generate(request("a red boat on a lake <lora:sd15:1>"))
    assert np.array_equal(image_of(lora_engine, request()), plain), "nothing half-loaded stays"


@pytest.mark.usefixtures("dynamo")
def test_a_compiled_sdxl_unet_gives_the_same_images(
    xl_folder: Path, xl_engine: Engine, tmp_path: Path
) -> None:
    """torch.compile through the guidance wrapper with the pooled embedding and the size
    conditioning: a counting backend traces as inductor would and runs the graphs eagerly."""
    from torch._dynamo.testing import CompileCounter

    from pipeline.acceleration import Acceleration, CompileTarget, is_compiled

    counter = CompileCounter()
    source = ModelSource("tiny-xl", SourceKind.DIFFUSERS_FOLDER, str(xl_folder))
    model = load_model(source, CPU, tmp_path, HashCache(tmp_path / "hashes.json"))
    settings = Acceleration(compile=CompileTarget.UNET, backend=counter)
    compiled = Engine(model, batching=BatchShape(BatchMode.FIXED, rows=2), acceleration=settings)
    assert is_compiled(compiled.model.pipe.unet)
    assert compiled.warm_up() is not None
    warmed = counter.frame_count
    assert warmed >= 1
    assert np.array_equal(image_of(compiled, request()), image_of(xl_engine, request()))
    assert counter.frame_count == warmed  # compiled once at the warm-up, reused


def test_an_sdxl_controlnet_steers_the_image(xl_model: LoadedModel, tmp_path: Path) -> None:
    from pipeline.request import ControlUse
    from tests.tiny_models import build_random_controlnet

    build_random_controlnet(xl_model.pipe.unet).save_pretrained(
        tmp_path / "ControlNet" / "xl-canny"
    )
    engine = Engine(xl_model, batching=BatchShape(BatchMode.FIXED, rows=2), models_dir=tmp_path)
    edges = Image.new("RGB", (SIZE, SIZE), "white")
    edges.paste((0, 0, 0), (16, 16, 48, 48))
    use = ControlUse(image=ImageRef.from_image(edges), model="", preprocessor="canny")
    plain = image_of(engine, request())
    controlled = image_of(engine, request(control=use))
    assert np.abs(controlled - plain).mean() > 1
    assert np.array_equal(image_of(engine, request(control=replace(use, weight=0.0))), plain)
