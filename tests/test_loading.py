"""Finding and loading models offline: diffusers folders, A1111 single files, the hub."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from pipeline import loading
from pipeline.checkpoints import detect_family
from pipeline.engine import Engine
from pipeline.errors import ModelLoadError
from pipeline.families import SD1, SD2
from pipeline.folders import ModelFolders
from pipeline.loading import (
    DEFAULT_HUB_MODEL,
    HashCache,
    LoadedModel,
    SeveralLocalModelsError,
    SourceKind,
    describe_local_models,
    download_from_hub,
    find_local_models,
    load_model,
    resolve_model,
)
from pipeline.request import GenerationRequest
from tests.conftest import TEST_BATCHING
from tests.ldm_checkpoint import save_single_file
from tests.tiny_models import CPU


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a local model must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def load(path: Path, cache: Path) -> LoadedModel:
    source = resolve_model(str(path), path.parent)
    return load_model(source, CPU, cache, HashCache(cache / "hashes.json"))


def tiny_image(model: LoadedModel) -> np.ndarray:
    request = GenerationRequest(prompt="a red fox", steps=3, seeds=(9,), width=64, height=64)
    return np.asarray(Engine(model, batching=TEST_BATCHING).generate(request).images[0].image)


def test_single_file_loads_offline_and_matches_the_folder(
    models_dir: Path, tiny_model: LoadedModel, tmp_path: Path, no_network: None
) -> None:
    single = load(models_dir / "stable-diffusion" / "tiny-sd1-single.safetensors", tmp_path)
    assert single.family is SD1
    assert single.source.kind is SourceKind.SINGLE_FILE
    assert single.short_hash is not None and len(single.short_hash) == 10
    assert np.array_equal(tiny_image(single), tiny_image(tiny_model))
    request = GenerationRequest(prompt="a fox", steps=1, seeds=(1,), width=64, height=64)
    info = Engine(single, batching=TEST_BATCHING).generate(request).images[0].infotext
    assert (info.model, info.model_hash) == ("tiny-sd1-single", single.short_hash)


def test_ckpt_and_sd2_checkpoints_load(
    tmp_path: Path,
    no_network: None,
    random_sd1: StableDiffusionPipeline,
    random_sd2: StableDiffusionPipeline,
) -> None:
    save_single_file(random_sd1, tmp_path / "old-style.ckpt", "sd1")
    assert load(tmp_path / "old-style.ckpt", tmp_path / "cache").family is SD1

    sd2 = random_sd2
    save_single_file(sd2, tmp_path / "v2-1_768-ema.safetensors", "sd2")
    loaded = load(tmp_path / "v2-1_768-ema.safetensors", tmp_path / "cache")
    assert loaded.family is SD2
    assert loaded.pipe.scheduler.config.prediction_type == "v_prediction"
    assert loaded.native_size == 768
    for name, weight in sd2.text_encoder.state_dict().items():
        assert torch.equal(loaded.pipe.text_encoder.state_dict()[name], weight), name
    assert tiny_image(loaded).std() > 0


def test_sd2_base_and_sidecar_yaml_choose_the_prediction(
    tmp_path: Path, random_sd2: StableDiffusionPipeline
) -> None:
    pipe = random_sd2
    save_single_file(pipe, tmp_path / "v2-1_512-ema.safetensors", "sd2")
    base = load(tmp_path / "v2-1_512-ema.safetensors", tmp_path / "cache")
    assert base.pipe.scheduler.config.prediction_type == "epsilon"
    assert base.native_size == 512
    save_single_file(pipe, tmp_path / "custom-base.safetensors", "sd2")
    (tmp_path / "custom-base.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    custom = load(tmp_path / "custom-base.safetensors", tmp_path / "cache")
    assert custom.pipe.scheduler.config.prediction_type == "v_prediction"


def test_family_detection_rejects_incomplete_sdxl_files_and_non_checkpoints(tmp_path: Path) -> None:
    shapes = {
        "conditioner.embedders.0.transformer.text_model.x": (1,),
        "model.diffusion_model.a": (1,),
    }
    with pytest.raises(ModelLoadError, match="SDXL refiner"):
        detect_family(shapes, tmp_path / "xl.safetensors")
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}
    with pytest.raises(ModelLoadError, match="models/lora"):
        detect_family(lora, tmp_path / "style.safetensors")


def test_corrupt_and_missing_models_are_clear_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"broken\.safetensors could not be read"):
        load(broken, tmp_path / "cache")
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match=r"cut\.ckpt could not be read"):
        load(truncated, tmp_path / "cache")
    lora = tmp_path / "a-lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    with pytest.raises(ModelLoadError, match="no Stable Diffusion UNet"):
        load(lora, tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="No model named 'missing'"):
        resolve_model("missing", tmp_path)
    incomplete = tmp_path / "stable-diffusion" / "half"
    incomplete.mkdir(parents=True)
    (incomplete / "model_index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="half is not a complete diffusers model folder"):
        load_model(resolve_model("half", tmp_path), CPU, tmp_path, HashCache(tmp_path / "h.json"))


def test_a1111_models_folder_is_understood(tmp_path: Path, models_dir: Path) -> None:
    a1111 = tmp_path / "models"
    (a1111 / "Stable-diffusion" / "anime").mkdir(parents=True)
    (a1111 / "Lora").mkdir()
    single = models_dir / "stable-diffusion" / "tiny-sd1-single.safetensors"
    (a1111 / "Stable-diffusion" / "anime" / "counterfeit.safetensors").symlink_to(single)
    found = find_local_models(a1111)
    assert [source.name for source in found] == ["counterfeit"]
    assert resolve_model(None, a1111).name == "counterfeit"  # the only one wins
    assert resolve_model("COUNTERFEIT", a1111).name == "counterfeit"


def test_default_model_is_the_hub_unless_exactly_one_local(
    tmp_path: Path, models_dir: Path
) -> None:
    assert resolve_model(None, tmp_path).location == DEFAULT_HUB_MODEL
    assert len(find_local_models(models_dir)) == 2
    with pytest.raises(SeveralLocalModelsError, match="tiny-sd1, tiny-sd1-single") as raised:
        resolve_model(None, models_dir)
    assert raised.value.names == ["tiny-sd1", "tiny-sd1-single"]
    assert resolve_model("someone/some-model", tmp_path).kind is SourceKind.HUB


def test_diffusers_folder_contents_are_not_listed_twice(models_dir: Path) -> None:
    names = [(source.name, source.kind) for source in find_local_models(models_dir)]
    assert names == [
        ("tiny-sd1", SourceKind.DIFFUSERS_FOLDER),
        ("tiny-sd1-single", SourceKind.SINGLE_FILE),
    ]


def test_short_hash_is_a1111s_and_computed_once(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    single = models_dir / "stable-diffusion" / "tiny-sd1-single.safetensors"
    expected = hashlib.sha256(single.read_bytes()).hexdigest()[:10]
    cache = HashCache(tmp_path / "hashes.json")
    infos = {info.source.name: info for info in describe_local_models(models_dir, cache)}
    assert infos["tiny-sd1-single"].short_hash == expected
    assert infos["tiny-sd1-single"].family == "SD 1.x"
    assert infos["tiny-sd1-single"].size_bytes == single.stat().st_size
    assert infos["tiny-sd1"].short_hash is None
    assert json.loads((tmp_path / "hashes.json").read_text())

    def recompute(_: Path) -> str:
        raise AssertionError("the hash must come from the cache")

    monkeypatch.setattr(loading, "sha256_of", recompute)
    assert HashCache(tmp_path / "hashes.json").short_hash(single) == expected


def test_offline_hub_model_is_a_clear_error_not_a_hang(no_network: None) -> None:
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        download_from_hub("someone/not-in-the-cache", CPU)


def test_a1111_lora_and_upscaler_folders_are_found(tmp_path: Path) -> None:
    for folder, name in [
        ("Lora", "style.safetensors"),
        ("Lora/characters", "hero.safetensors"),
        ("ESRGAN", "4x-UltraSharp.pth"),
        ("RealESRGAN", "RealESRGAN_x4plus.pth"),
        ("upscale", "notes.txt"),
    ]:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"weights")
    folders = ModelFolders(tmp_path)
    assert [path.name for path in folders.lora_files()] == ["hero.safetensors", "style.safetensors"]
    assert [path.name for path in folders.upscaler_files()] == [
        "4x-UltraSharp.pth",
        "RealESRGAN_x4plus.pth",
    ]
    assert folders.checkpoints == []


class LightningCallback:
    """Stands in for the training callbacks old .ckpt files pickle beside their weights."""


def test_pickled_objects_in_a_ckpt_are_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "old-training-run.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": LightningCallback()}, path)
    with pytest.raises(
        ModelLoadError, match=r"pickled Python objects.*Convert it to \.safetensors"
    ):
        load(path, tmp_path / "cache")


def test_fp16_only_folders_load(tmp_path: Path, random_sd1: StableDiffusionPipeline) -> None:
    folder = tmp_path / "stable-diffusion" / "half"
    random_sd1.save_pretrained(folder, variant="fp16")
    model = load_model(resolve_model("half", tmp_path), CPU, tmp_path, HashCache(tmp_path / "h"))
    assert model.family is SD1
    assert tiny_image(model).shape == (64, 64, 3)


def _write_configs(folder: Path, index: dict, text: dict, unet: dict) -> Path:
    for name, content in (
        ("model_index.json", index),
        ("text_encoder/config.json", text),
        ("unet/config.json", unet),
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    return folder


SD_INDEX = {"_class_name": "StableDiffusionPipeline"}
XL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
}
XL_REFINER_INDEX = {**XL_INDEX, "text_encoder": [None, None]}
XL_UNET = {"in_channels": 4, "addition_embed_type": "text_time"}
FAMILIES = ("SD 1.x", "SD 2.x", "SDXL")


@pytest.mark.parametrize(
    ("index", "text", "unet", "outcome"),
    [
        (SD_INDEX, {"hidden_act": "quick_gelu"}, {"in_channels": 4}, "SD 1.x"),
        (SD_INDEX, {"hidden_act": "gelu"}, {"in_channels": 4}, "SD 2.x"),
        (XL_INDEX, {"hidden_act": "quick_gelu"}, XL_UNET, "SDXL"),
        (XL_REFINER_INDEX, {"hidden_act": "gelu"}, XL_UNET, "refiner"),
        (SD_INDEX, {"hidden_act": "quick_gelu"}, {"in_channels": 9}, "SD 1.x"),  # inpainting
        (SD_INDEX, {"hidden_act": "quick_gelu"}, {"in_channels": 8}, "instruct-pix2pix"),
    ],
)
def test_diffusers_folder_family(
    tmp_path: Path, index: dict, text: dict, unet: dict, outcome: str
) -> None:
    folder = _write_configs(tmp_path / "stable-diffusion" / "m", index, text, unet)
    source = resolve_model(str(folder), tmp_path)
    if outcome in FAMILIES:
        assert loading.detect_local_family(source).label == outcome
    else:
        with pytest.raises(ModelLoadError, match=outcome):
            loading.detect_local_family(source)


def test_depth_and_pix2pix_single_files_are_refused_by_name(tmp_path: Path) -> None:
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    }
    with pytest.raises(ModelLoadError, match=r"ip2p\.safetensors is a depth or instruct-pix2pix"):
        detect_family(shapes, tmp_path / "ip2p.safetensors")
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)  # inpainting
    assert detect_family(shapes, tmp_path / "sd-inpaint.safetensors").label == "SD 1.x"


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave as if HF_HUB_OFFLINE were unset (the suite sets it for safety)."""
    import diffusers.utils.hub_utils
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", False)


def test_local_models_make_no_network_call_even_when_online(
    models_dir: Path, tmp_path: Path, online: None, no_network: None
) -> None:
    for name in ("tiny-sd1", "tiny-sd1-single"):
        model = load_model(
            resolve_model(name, models_dir), CPU, tmp_path, HashCache(tmp_path / "h")
        )
        assert tiny_image(model).shape == (64, 64, 3)


def test_hub_models_are_checked_before_the_download(
    tmp_path: Path, online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from diffusers import DiffusionPipeline

    pix2pix = _write_configs(
        tmp_path / "pix2pix", SD_INDEX, {"hidden_act": "quick_gelu"}, {"in_channels": 8}
    )
    downloads: list[bool] = []

    def fetch_config(repo_id: str, filename: str, **kwargs: object) -> str:
        return str(pix2pix / filename)

    def snapshot(repo_id: str, local_files_only: bool = False, **kwargs: object) -> str:
        downloads.append(local_files_only)
        raise OSError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch_config)
    monkeypatch.setattr(DiffusionPipeline, "download", snapshot)
    monkeypatch.setattr("pipeline.hub.hub_unreachable", lambda: None)
    with pytest.raises(ModelLoadError, match="instruct-pix2pix"):
        download_from_hub("timbrooks/instruct-pix2pix", CPU)
    assert downloads and all(downloads), "only cache look-ups, no download"
