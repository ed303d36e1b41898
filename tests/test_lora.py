"""LoRA loading and switching on the tiny pipeline, A1111's LoRA hash, and presets."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft.tuners.lora import LoraLayer

import pipeline.lora as lora_module
import pipeline.lora_names as lora_names_module
from pipeline.engine import Engine
from pipeline.errors import EaselError, InvalidRequestError, ModelLoadError
from pipeline.loading import LoadedModel
from pipeline.lora import (
    ActiveLora,
    ActiveLoras,
    LoraManager,
    LoraUse,
    find_loras,
    lookup_lora,
    lora_hash,
)
from pipeline.presets import (
    PresetFileError,
    Presets,
    UnknownPresetError,
    load_presets,
    read_presets_file,
)
from pipeline.request import GenerationRequest
from tests.conftest import TEST_BATCHING
from tests.lora_files import (
    LoraSpec,
    expected_delta,
    random_pairs,
    write_foreign_lora,
    write_lora,
    write_not_a_lora,
    write_wrong_size_lora,
)
from tests.tiny_models import build_random_pipeline

pytestmark = pytest.mark.heavy  # started first: see conftest.py

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
SPECS = {
    "kohya-a": (LoraSpec(seed=1), True),
    "diffusers-b": (LoraSpec(seed=2), False),
    "c": (LoraSpec(seed=3), False),
    "te-only": (LoraSpec(seed=4, unet=False), True),
    "half": (LoraSpec(seed=5), False),  # an attribute of torch modules, as an adapter name
}
BAD = ("not-a-lora", "flux-lora", "wide-text-encoder")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, random_sd1: StableDiffusionPipeline) -> Path:
    """lora/, Lora/ and LyCORIS/ (A1111's folders), with good and bad files."""
    root = tmp_path_factory.mktemp("lora-models")
    pipe = random_sd1
    folders = {"c": "Lora", "te-only": "LyCORIS"}
    for name, (spec, kohya) in SPECS.items():
        write_lora(pipe, root / folders.get(name, "lora") / f"{name}.safetensors", spec, kohya)
    write_not_a_lora(root / "lora" / "not-a-lora.safetensors")
    write_foreign_lora(root / "lora" / "flux-lora.safetensors")
    write_wrong_size_lora(pipe, root / "lora" / "wide-text-encoder.safetensors")
    return root


@pytest.fixture
def pipe() -> StableDiffusionPipeline:
    return build_random_pipeline("sd1")


def render(pipe: StableDiffusionPipeline, seed: int = 7) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    output = pipe(
        "a castle on a hill",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=generator,
        output_type="np",
    )
    return np.asarray(output.images[0])


def encode(pipe: StableDiffusionPipeline) -> torch.Tensor:
    ids = pipe.tokenizer(
        "a castle on a hill", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def fresh_render(lora_dir: Path, uses: list[LoraUse]) -> np.ndarray:
    """The image from a new pipeline with only these LoRAs ever loaded."""
    pipe = build_random_pipeline("sd1")
    LoraManager(pipe, lora_dir).activate(uses)
    return render(pipe)


def adapters(pipe: StableDiffusionPipeline) -> dict[str, list[str]]:
    return {part: names for part, names in pipe.get_list_adapters().items() if names}


# ----- finding files and hashes


def test_find_loras_covers_a1111_folders_and_looks_up_without_case(lora_dir: Path) -> None:
    files = find_loras(lora_dir)
    assert {file.name for file in files} == set(SPECS) | set(BAD)
    assert lookup_lora(files, "TE-ONLY").path == lora_dir / "LyCORIS" / "te-only.safetensors"
    assert lookup_lora(files, "c").path.parent.name == "Lora"
    with pytest.raises(InvalidRequestError, match=r"Did you mean 'kohya-a'.*diffusers-b"):
        lookup_lora(files, "kohya-x")


def test_lora_hash_is_sha256_of_the_tensor_data_after_the_header(lora_dir: Path) -> None:
    path = lora_dir / "lora" / "kohya-a.safetensors"
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    expected = hashlib.sha256(data[8 + header :]).hexdigest()[:12]
    assert lora_hash(path) == expected
    assert expected != hashlib.sha256(data).hexdigest()[:12]


def test_lora_hash_is_computed_once_per_file_version(
    tmp_path: Path, pipe: StableDiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_lora(pipe, tmp_path / "x.safetensors", LoraSpec(seed=9))
    counted = counting(monkeypatch, "_data_sha256")
    first = lora_hash(path)
    assert lora_hash(path) == first
    assert sum(counted.values()) == 1
    write_lora(pipe, path, LoraSpec(seed=9, rank=2))  # another size: another version
    assert lora_hash(path) != first
    assert sum(counted.values()) == 2


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> Counter[str]:
    """Replaces pipeline.lora.<name> (or pipeline.lora_names.<name>, where hashing lives)
    with a wrapper counting calls by file stem."""
    calls: Counter[str] = Counter()
    module = lora_module if hasattr(lora_module, name) else lora_names_module
    original: Callable[..., object] = getattr(module, name)

    def wrapper(path: Path, *args: object) -> object:
        calls[path.stem] += 1
        return original(path, *args)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# ----- loading


@pytest.mark.parametrize("name", ["kohya-a", "diffusers-b"])
def test_every_layer_gets_exactly_the_files_change(
    lora_dir: Path, pipe: StableDiffusionPipeline, name: str
) -> None:
    """kohya: alpha/rank per layer (the alphas differ between layers); diffusers: up @ down.
    Text-encoder layers included: transformers 5's CLIPTextModel has no `text_model` level."""
    spec, kohya = SPECS[name]
    pairs = random_pairs(pipe, spec)
    LoraManager(pipe, lora_dir).activate([LoraUse(name)])
    (adapter,) = pipe.get_list_adapters()["unet"]
    assert {pair.target.component for pair in pairs} == {"unet", "text_encoder"}
    for pair in pairs:
        layer = getattr(pipe, pair.target.component).get_submodule(pair.target.module)
        assert isinstance(layer, LoraLayer), pair.target
        torch.testing.assert_close(layer.get_delta_weight(adapter), expected_delta(pair, kohya))


def test_diffusers_file_metadata_alpha_is_applied(
    tmp_path: Path, pipe: StableDiffusionPipeline
) -> None:
    metadata = {"unet.lora_alpha": 8, "unet.r": 4, "text_encoder.lora_alpha": 2}
    spec = LoraSpec(seed=6)
    header = {"format": "pt", "lora_adapter_metadata": json.dumps(metadata)}
    write_lora(pipe, tmp_path / "lora" / "meta.safetensors", spec, metadata=header)
    LoraManager(pipe, tmp_path).activate([LoraUse("meta")])
    (adapter,) = pipe.get_list_adapters()["unet"]
    scales = {"unet": 2.0, "text_encoder": 0.5}
    for pair in random_pairs(pipe, spec):
        layer = getattr(pipe, pair.target.component).get_submodule(pair.target.module)
        expected = scales[pair.target.component] * expected_delta(pair, kohya=False)
        torch.testing.assert_close(layer.get_delta_weight(adapter), expected)


@pytest.mark.parametrize("name", ["kohya-a", "diffusers-b"])
def test_both_formats_change_the_image(
    lora_dir: Path, pipe: StableDiffusionPipeline, name: str
) -> None:
    plain = render(pipe)
    active = LoraManager(pipe, lora_dir).activate([LoraUse(name)])
    assert active.names == (name,)
    assert not np.allclose(render(pipe), plain, atol=1e-3)


def test_text_encoder_part_changes_the_text_encoders_output(
    lora_dir: Path, pipe: StableDiffusionPipeline
) -> None:
    plain = encode(pipe)
    manager = LoraManager(pipe, lora_dir)
    manager.activate([LoraUse("te-only")])
    assert adapters(pipe).keys() == {"text_encoder"}
    assert (encode(pipe) - plain).abs().max() > 1e-2
    manager.activate([LoraUse("kohya-a", unet_weight=0.0, te_weight=1.0)])
    with_text = encode(pipe)
    assert (with_text - plain).abs().max() > 1e-2
    manager.activate([LoraUse("kohya-a", unet_weight=1.0, te_weight=0.0)])
    assert torch.equal(encode(pipe), plain)
    manager.activate([LoraUse("kohya-a", unet_weight=0.0, te_weight=0.5)])
    half = encode(pipe)
    assert not torch.equal(half, plain) and not torch.equal(half, with_text)
    adapter = pipe.get_list_adapters()["text_encoder"][-1]
    layer = pipe.text_encoder.get_submodule("encoder.layers.0.self_attn.q_proj")
    assert layer.scaling[adapter] == 0.5


def test_weight_zero_gives_exactly_the_plain_image(
    lora_dir: Path, pipe: StableDiffusionPipeline
) -> None:
    plain = render(pipe)
    manager = LoraManager(pipe, lora_dir)
    active = manager.activate([LoraUse("kohya-a", unet_weight=0.0, te_weight=0.0)])
    assert np.array_equal(render(pipe), plain)
    assert active.names == ("kohya-a",)  # still recorded for the infotext
    manager.activate([LoraUse("kohya-a")])
    manager.activate([LoraUse("kohya-a", 0.0, 0.0)])
    assert np.array_equal(render(pipe), plain)


def test_switching_a_b_a_none_matches_fresh_single_runs(
    lora_dir: Path, pipe: StableDiffusionPipeline
) -> None:
    manager = LoraManager(pipe, lora_dir)
    a, b = [LoraUse("kohya-a", 0.8, 0.6)], [LoraUse("diffusers-b")]
    images = []
    for uses in (a, b, a, []):
        manager.activate(uses)
        images.append(render(pipe))
    assert np.array_equal(images[0], fresh_render(lora_dir, a))
    assert np.array_equal(images[1], fresh_render(lora_dir, b))
    assert np.array_equal(images[2], images[0])
    assert np.array_equal(images[3], fresh_render(lora_dir, []))
    assert not np.array_equal(images[0], images[1])


def test_two_loras_at_once_match_a_fresh_run(lora_dir: Path, pipe: StableDiffusionPipeline) -> None:
    both = [LoraUse("te-only", 1.0, 0.7), LoraUse("diffusers-b", 0.5, 0.5)]
    manager = LoraManager(pipe, lora_dir)
    manager.activate([LoraUse("c")])
    manager.activate(both)
    assert np.array_equal(render(pipe), fresh_render(lora_dir, both))


def test_least_recently_used_lora_is_evicted(lora_dir: Path, pipe: StableDiffusionPipeline) -> None:
    manager = LoraManager(pipe, lora_dir, max_resident=2)
    for name in ("kohya-a", "diffusers-b", "c"):
        manager.activate([LoraUse(name)])
    assert manager.resident() == ["diffusers-b", "c"]
    assert len(pipe.get_list_adapters()["unet"]) == 2
    manager.activate([LoraUse("diffusers-b")])
    manager.activate([LoraUse("kohya-a")])
    assert manager.resident() == ["diffusers-b", "kohya-a"]
    assert len(pipe.get_list_adapters()["unet"]) == 2
    with pytest.raises(InvalidRequestError, match="at most 2"):
        manager.activate([LoraUse("kohya-a"), LoraUse("c"), LoraUse("diffusers-b")])


def test_one_resident_lora_switches_through_plain_layers(
    lora_dir: Path, pipe: StableDiffusionPipeline
) -> None:
    manager = LoraManager(pipe, lora_dir, max_resident=1)
    manager.activate([LoraUse("kohya-a")])
    first = render(pipe)
    manager.activate([LoraUse("half")])
    manager.activate([LoraUse("kohya-a")])
    assert manager.resident() == ["kohya-a"]
    assert np.array_equal(render(pipe), first)


def test_reactivating_an_evicted_lora_does_not_read_its_file(
    lora_dir: Path, pipe: StableDiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counting(monkeypatch, "read_lora_file")
    manager = LoraManager(pipe, lora_dir, max_resident=2)
    for name in ("kohya-a", "diffusers-b", "c", "kohya-a", "diffusers-b", "c"):
        manager.activate([LoraUse(name)])
    assert reads == {"kohya-a": 1, "diffusers-b": 1, "c": 1}


def test_a_changed_file_is_read_again(
    tmp_path: Path, pipe: StableDiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_lora(pipe, tmp_path / "lora" / "x.safetensors", LoraSpec(seed=1))
    reads = counting(monkeypatch, "read_lora_file")
    manager = LoraManager(pipe, tmp_path)
    manager.activate([LoraUse("x")])
    first = render(pipe)
    write_lora(pipe, path, LoraSpec(seed=2, rank=2))
    manager.activate([LoraUse("x")])
    assert reads == {"x": 2}
    assert manager.resident() == ["x"]
    assert not np.array_equal(render(pipe), first)


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_file_fails_and_leaves_the_pipeline_plain(
    lora_dir: Path, pipe: StableDiffusionPipeline, bad: str
) -> None:
    plain = render(pipe)
    manager = LoraManager(pipe, lora_dir)
    with pytest.raises(ModelLoadError, match=f"{bad}.safetensors"):
        manager.activate([LoraUse(bad)])
    assert adapters(pipe) == {}
    assert manager.resident() == []
    assert np.array_equal(render(pipe), plain)


def test_a_bad_file_keeps_the_loras_that_were_active(
    lora_dir: Path, pipe: StableDiffusionPipeline
) -> None:
    manager = LoraManager(pipe, lora_dir)
    manager.activate([LoraUse("kohya-a", 0.7, 0.7)])
    before = render(pipe)
    with pytest.raises(ModelLoadError, match="wide-text-encoder"):
        manager.activate([LoraUse("diffusers-b"), LoraUse("wide-text-encoder")])
    assert np.array_equal(render(pipe), before)


def test_a_load_failing_half_way_is_undone(
    lora_dir: Path, pipe: StableDiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UNet part is in when the text-encoder part fails: nothing of it may stay."""
    plain = render(pipe)

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("text encoder exploded\nsecond line")

    monkeypatch.setattr(pipe, "load_lora_into_text_encoder", fail)
    with pytest.raises(ModelLoadError, match=r"kohya-a.*text encoder exploded$"):
        LoraManager(pipe, lora_dir).activate([LoraUse("kohya-a")])
    assert adapters(pipe) == {}
    assert not any(isinstance(module, LoraLayer) for module in pipe.unet.modules())
    assert np.array_equal(render(pipe), plain)


def test_a_file_for_another_model_is_refused_before_loading(
    lora_dir: Path, pipe: StableDiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Counter[str]()
    monkeypatch.setattr(pipe, "load_lora_weights", lambda *a, **k: calls.update(["load"]))
    with pytest.raises(ModelLoadError, match="8 of its 56 layers"):
        LoraManager(pipe, lora_dir).activate([LoraUse("wide-text-encoder")])
    assert not calls


def test_unknown_and_repeated_names_are_request_errors(
    lora_dir: Path, pipe: StableDiffusionPipeline
) -> None:
    manager = LoraManager(pipe, lora_dir)
    with pytest.raises(InvalidRequestError, match=r"Unknown LoRA 'pixel'.*kohya-a"):
        manager.activate([LoraUse("pixel")])
    with pytest.raises(InvalidRequestError, match="twice"):
        manager.activate([LoraUse("kohya-a"), LoraUse("KOHYA-A", 0.5)])
    assert adapters(pipe) == {}


def test_a_file_added_later_is_found(tmp_path: Path, pipe: StableDiffusionPipeline) -> None:
    manager = LoraManager(pipe, tmp_path)
    with pytest.raises(InvalidRequestError, match="none"):
        manager.activate([LoraUse("late")])
    write_lora(pipe, tmp_path / "lora" / "late.safetensors")
    assert manager.activate([LoraUse("late")]).names == ("late",)


def test_active_loras_give_a1111_lora_hashes(lora_dir: Path, pipe: StableDiffusionPipeline) -> None:
    active = LoraManager(pipe, lora_dir).activate([LoraUse("kohya-a", 0.8, 0.5), LoraUse("c")])
    a_hash = lora_hash(lora_dir / "lora" / "kohya-a.safetensors")
    c_hash = lora_hash(lora_dir / "Lora" / "c.safetensors")
    assert active.loras[0] == ActiveLora("kohya-a", 0.8, 0.5, a_hash)
    assert active.hashes_infotext() == f"kohya-a: {a_hash}, c: {c_hash}"
    assert ActiveLoras().hashes_infotext() is None


def test_engine_prompts_go_through_the_text_encoder_lora(
    tiny_model: LoadedModel, lora_dir: Path
) -> None:
    """Easel encodes prompts itself; a text-encoder-only LoRA must still change its images."""
    engine = Engine(tiny_model, models_dir=lora_dir, batching=TEST_BATCHING)

    def image(prompt: str) -> np.ndarray:
        request = GenerationRequest(prompt=prompt, steps=2, seeds=(3,), width=64, height=64)
        return np.asarray(engine.generate(request).images[0].image)

    try:
        plain = image("a castle")
        with_lora = image("a castle <lora:te-only:1>")
        again = image("a castle")
    finally:
        engine.loras.activate([])
        tiny_model.pipe.unload_lora_weights()  # the session's model is shared with other tests
    assert not np.array_equal(with_lora, plain)
    assert np.array_equal(again, plain)


# ----- presets


def test_example_presets_file_parses() -> None:
    presets = load_presets(REPO_MODELS)
    assert presets.ids() == ["pixel-art", "voxel-art"]
    pixel = presets.get("pixel-art")
    assert pixel.loras == (LoraUse("pixel-art-v1", 0.8, 0.8),)
    assert presets.get("voxel-art").loras[0].name == "voxel-art-v1"
    for preset in presets.presets:
        assert preset.description_en and preset.trigger
        assert any("\uac00" <= char <= "\ud7a3" for char in preset.description("ko"))


def test_missing_presets_file_means_no_presets(tmp_path: Path) -> None:
    assert load_presets(tmp_path) == Presets()
    with pytest.raises(UnknownPresetError, match="none"):
        load_presets(tmp_path).get("pixel-art")


def write_presets(folder: Path, text: str) -> Path:
    path = folder / "presets.toml"
    path.write_text(text, encoding="utf-8")
    return path


PIXEL = """
[presets.pixel-art]
description_en = "Pixel art"
description_ko = "픽셀 아트"
loras = [{ name = "kohya-a", unet = 0.8, te = 0.6 }, { name = "c" }]
trigger = "pixel art, 8-bit"
negative = "blurry"
"""


def test_presets_are_found_ignoring_case_with_a_suggestion(tmp_path: Path) -> None:
    write_presets(tmp_path, PIXEL)
    presets = load_presets(tmp_path)
    assert presets.get("Pixel Art").id == "pixel-art"
    assert presets.get("PIXEL_ART").loras == (LoraUse("kohya-a", 0.8, 0.6), LoraUse("c"))
    with pytest.raises(UnknownPresetError, match="Did you mean 'pixel-art'") as caught:
        presets.get("pixel-arts")
    assert isinstance(caught.value, InvalidRequestError)
    assert caught.value.suggestion == "pixel-art"


def test_preset_apply_adds_trigger_and_negative_once(tmp_path: Path) -> None:
    preset = read_presets_file(write_presets(tmp_path, PIXEL)).get("pixel-art")
    assert preset.apply("a castle", "") == ("a castle, pixel art, 8-bit", "blurry")
    assert preset.apply("Pixel Art, a castle", "ugly") == (
        "Pixel Art, a castle, 8-bit",
        "ugly, blurry",
    )
    assert preset.apply("", "") == ("pixel art, 8-bit", "blurry")
    assert preset.apply("a cat AND a dog :0.5", "")[0] == (
        "a cat, pixel art, 8-bit AND a dog, pixel art, 8-bit :0.5"
    )


def test_preset_loras_activate(
    tmp_path: Path, lora_dir: Path, pipe: StableDiffusionPipeline
) -> None:
    preset = read_presets_file(write_presets(tmp_path, PIXEL)).get("pixel-art")
    active = LoraManager(pipe, lora_dir).activate(preset.loras)
    assert [(lora.name, lora.unet_weight, lora.te_weight) for lora in active.loras] == [
        ("kohya-a", 0.8, 0.6),
        ("c", 1.0, 1.0),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[presets.x\n", "cannot read it"),
        ('[presets.x]\ndescription_en = "X"\n', "preset 'x': field 'description_ko' is missing"),
        (
            PIXEL.replace("unet = 0.8", 'unet = "high"'),
            "'pixel-art', LoRA 1: unet must be a number",
        ),
        (PIXEL.replace("negative", "negatve"), "preset 'pixel-art': unknown field 'negatve'"),
        (PIXEL.replace('{ name = "c" }', '{ file = "c" }'), "LoRA 2: unknown field 'file'"),
        (PIXEL + PIXEL.replace("pixel-art]", "Pixel_Art]"), "'Pixel_Art' is defined twice"),
        ("[preset.x]\n", "unknown table 'preset'"),
    ],
)
def test_a_broken_presets_file_names_the_file_and_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write_presets(tmp_path, text)
    with pytest.raises(PresetFileError, match=message) as caught:
        load_presets(tmp_path)
    assert isinstance(caught.value, EaselError)
    assert str(path) in str(caught.value)
