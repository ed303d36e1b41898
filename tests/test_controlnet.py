"""ControlNet: models from models/ControlNet, preprocessors, and what each setting does to
the image."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from pipeline.control_maps import control_map
from pipeline.control_names import find_controlnets, resolve_control
from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.images import format_infotext, parse_infotext
from pipeline.loading import LoadedModel
from pipeline.request import (
    ControlMode,
    ControlUse,
    GenerationRequest,
    GenerationResult,
    ImageRef,
)
from tests.conftest import TEST_BATCHING
from tests.ldm_checkpoint import controlnet_to_ldm

pytestmark = pytest.mark.heavy  # started first: see conftest.py


def square(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), "black")
    return image


@pytest.fixture(scope="module")
def control_models(tmp_path_factory: pytest.TempPathFactory, tiny_model: LoadedModel) -> Path:
    """A models folder with a tiny canny ControlNet for the tiny checkpoint, as a diffusers
    folder and as one file, and one made for a wider text encoder (another family)."""
    from tests.tiny_models import build_random_controlnet

    root = tmp_path_factory.mktemp("control-models")
    folder = root / "ControlNet"
    model = build_random_controlnet(tiny_model.pipe.unet)
    model.save_pretrained(folder / "tiny-canny")
    save_file(model.state_dict(), folder / "tiny_canny_single.safetensors")
    a1111 = controlnet_to_ldm(model, tiny_model.pipe.unet)
    save_file(
        {key: value.contiguous() for key, value in a1111.items()},
        folder / "tiny_canny_a1111.safetensors",
    )
    wide = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": _zeros(64, 2048)}
    save_file(wide, folder / "xl_canny.safetensors")
    return root


def _zeros(*shape: int) -> object:
    import torch

    return torch.zeros(shape)


@pytest.fixture(scope="module")
def engine(tiny_model: LoadedModel, control_models: Path) -> Iterator[Engine]:
    yield Engine(tiny_model, batching=TEST_BATCHING, models_dir=control_models)


def request(control: ControlUse | None = None, **overrides: object) -> GenerationRequest:
    values: dict[str, object] = {
        "prompt": "a red house",
        "steps": 4,
        "seeds": (3,),
        "width": 64,
        "height": 64,
        "control": control,
    }
    values.update(overrides)
    return GenerationRequest(**values)  # type: ignore[arg-type]


def canny(**settings: object) -> ControlUse:
    return ControlUse(
        image=ImageRef.from_image(square()), model="", preprocessor="canny", **settings
    )  # type: ignore[arg-type]


def pixels(result: GenerationResult, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].image).astype(int)


def test_canny_finds_the_square_edges(tmp_path: Path) -> None:
    edges = np.asarray(control_map(square(), "canny", (64, 64), tmp_path).convert("L"))
    assert edges[16, 32] == 255 or edges[15, 32] == 255  # the top edge
    assert edges[32, 32] == 0 and edges[2, 2] == 0  # inside and outside are flat


def test_crop_and_resize_fills_the_size_without_stretching(tmp_path: Path) -> None:
    wide = Image.new("RGB", (128, 64), "white")
    ImageDraw.Draw(wide).rectangle((0, 0, 31, 63), "black")  # only at the left quarter
    fitted = np.asarray(control_map(wide, "none", (64, 64), tmp_path).convert("L"))
    assert fitted.shape == (64, 64)
    assert fitted.min() == 255  # the centre crop dropped the black left quarter


def test_lineart_and_binary_draw_white_lines_on_black(tmp_path: Path) -> None:
    for name in ("lineart_standard", "binary"):
        drawn = np.asarray(control_map(square(), name, (64, 64), tmp_path).convert("L"))
        assert drawn[2, 2] < 20, name  # the white background is black in the map
        assert drawn.max() > 100, name


def test_a_preprocessor_picks_the_model_that_fits(control_models: Path) -> None:
    assert [file.name for file in find_controlnets(control_models)] == [
        "tiny-canny",
        "tiny_canny_a1111",
        "tiny_canny_single",
        "xl_canny",
    ]
    resolved = resolve_control(canny(), control_models, text_width=64)
    assert resolved.model == "tiny-canny"
    # For an SDXL-wide text encoder only xl_canny fits.
    assert resolve_control(canny(), control_models, text_width=2048).model == "xl_canny"


@pytest.mark.parametrize(
    ("use", "message"),
    [
        (replace(canny(), preprocessor="sobel"), "No ControlNet preprocessor named 'sobel'"),
        (replace(canny(), preprocessor="none"), "needs a ControlNet model by name"),
        (replace(canny(), model="missing"), "No ControlNet preprocessor or model named 'missi"),
        (replace(canny(), model="cany", preprocessor="none"), "Did you mean 'canny'"),
        (replace(canny(), model="xl_canny"), "does not fit the loaded checkpoint"),
        (replace(canny(), preprocessor="depth"), "needs its weights in"),
        (replace(canny(), weight=3.0), "weight must be between 0 and 2"),
        (replace(canny(), guidance_start=0.8, guidance_end=0.2), "start below the end"),
    ],
)
def test_bad_controlnet_requests_are_refused_clearly(
    control_models: Path, use: ControlUse, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message) as caught:
        resolve_control(use, control_models, text_width=64)
    assert caught.value.ko  # every refusal has its Korean text


def test_the_control_changes_the_image_and_weight_zero_does_not(engine: Engine) -> None:
    plain = pixels(engine.generate(request()))
    controlled = pixels(engine.generate(request(canny())))
    assert np.abs(controlled - plain).mean() > 1
    zero = pixels(engine.generate(request(canny(weight=0.0))))
    assert np.array_equal(zero, plain)


def test_guidance_window_and_control_mode_each_change_the_image(engine: Engine) -> None:
    full = pixels(engine.generate(request(canny())))
    late = pixels(engine.generate(request(canny(guidance_start=0.5))))
    outside = pixels(engine.generate(request(canny(guidance_start=0.9, guidance_end=0.95))))
    plain = pixels(engine.generate(request()))
    assert not np.array_equal(late, full)
    assert np.array_equal(outside, plain)  # no step falls in the window: no control at all
    prompt_mode = pixels(engine.generate(request(canny(mode=ControlMode.PROMPT))))
    control_mode = pixels(engine.generate(request(canny(mode=ControlMode.CONTROL))))
    assert not np.array_equal(prompt_mode, full)
    assert not np.array_equal(control_mode, prompt_mode)


def test_jobs_with_one_control_batch_exactly(engine: Engine) -> None:
    first = engine.prepare(request(canny(), seeds=(1, 2)))
    second = engine.prepare(request(canny(), prompt="a blue boat", seeds=(5,)))
    together = engine.run_batch([first, second])
    alone = engine.generate(request(canny(), prompt="a blue boat", seeds=(5,)))
    assert np.array_equal(pixels(together[1]), pixels(alone))


def test_the_parameters_record_the_unit_and_show_returns_the_map(engine: Engine) -> None:
    result = engine.generate(request(canny(weight=0.8, mode=ControlMode.PROMPT, show=True)))
    extra = dict(result.images[0].infotext.extra)
    assert extra["ControlNet 0"] == (
        "Module: canny, Model: tiny-canny, Weight: 0.8, Resize Mode: Crop and Resize, "
        "Guidance Start: 0, Guidance End: 1, Control Mode: My prompt is more important"
    )
    text = format_infotext(result.images[0].infotext)
    assert dict(parse_infotext(text).extra)["ControlNet 0"] == extra["ControlNet 0"]
    assert result.control_map is not None and result.control_map.size == (64, 64)
    edges = np.asarray(result.control_map.convert("L"))
    assert set(np.unique(edges)) == {0, 255}
    again = GenerationResult.from_json(result.to_json())
    assert again.control_map is not None
    assert np.array_equal(np.asarray(again.control_map), np.asarray(result.control_map))
    assert engine.generate(request(canny())).control_map is None  # not asked for


@pytest.mark.parametrize("name", ["tiny_canny_single", "tiny_canny_a1111"])
def test_a_single_file_controlnet_gives_the_folders_pixels(engine: Engine, name: str) -> None:
    folder = pixels(engine.generate(request(canny())))
    single = replace(canny(), model=name, preprocessor="canny")
    assert np.array_equal(pixels(engine.generate(request(single))), folder)


def test_hires_fix_runs_the_control_on_both_passes(engine: Engine) -> None:
    from pipeline.request import HiresFix

    hires = HiresFix(scale=2.0, denoising_strength=0.5, upscaler="Lanczos")
    plain = engine.generate(request(hires=hires))
    controlled = engine.generate(request(canny(), hires=hires))
    assert controlled.images[0].image.size == (128, 128)
    assert np.abs(pixels(controlled) - pixels(plain)).mean() > 1


def test_easel_imagine_with_cn_saves_the_images_and_the_map(
    models_dir: Path,
    control_models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json
    import sys

    from bot.cli import main

    models = tmp_path / "models"
    models.mkdir()
    (models / "stable-diffusion").symlink_to(models_dir / "stable-diffusion")
    (models / "ControlNet").symlink_to(control_models / "ControlNet")
    square().save(tmp_path / "pose.png")
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EASEL_DEVICE", "cpu")
    arguments = ["a house --cn canny:0.5 --cn-show", "--cn-image", str(tmp_path / "pose.png")]
    arguments += ["--n", "1", "--steps", "2", "--size", "64x64", "--model", "tiny-sd1", "--json"]
    monkeypatch.setattr(sys, "argv", ["easel", "imagine", *arguments])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code in (0, None)
    report = json.loads(capsys.readouterr().out)
    with Image.open(report["images"][0]["path"]) as image:
        assert (
            'ControlNet 0: "Module: canny, Model: tiny-canny, Weight: 0.5'
            in image.info["parameters"]
        )
    with Image.open(report["control_map"]) as drawn:
        assert drawn.size == (64, 64)
        assert set(np.unique(np.asarray(drawn.convert("L")))) == {0, 255}


def test_depth_runs_a_transformers_depth_model_from_the_annotators_folder(tmp_path: Path) -> None:
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=64,
        patch_size=16,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        reassemble_factors=[4, 2, 1, 0.5],
    )
    folder = tmp_path / "ControlNet" / "annotators" / "depth"
    torch.manual_seed(0)
    DPTForDepthEstimation(config).eval().save_pretrained(folder)
    DPTImageProcessor(size={"height": 64, "width": 64}, keep_aspect_ratio=False).save_pretrained(
        folder
    )
    (tmp_path / "ControlNet" / "tiny-depth").mkdir()
    (tmp_path / "ControlNet" / "tiny-depth" / "config.json").write_text(
        '{"cross_attention_dim": 64}'
    )
    use = replace(canny(), preprocessor="depth")
    assert resolve_control(use, tmp_path, text_width=64).model == "tiny-depth"
    depth = np.asarray(control_map(square(), "depth", (96, 64), tmp_path))
    assert depth.shape == (64, 96, 3)
    # A grey picture, normalised over the full range (near: white), then resized to the job.
    assert np.array_equal(depth[..., 0], depth[..., 1])
    assert int(depth.max()) - int(depth.min()) > 200


def test_only_jobs_with_the_same_control_share_a_batch(engine: Engine) -> None:
    from pipeline.batching import batch_key

    def key(control: ControlUse | None) -> object:
        return batch_key(engine.prepare(request(control)))

    other_image = replace(canny(), image=ImageRef.from_image(square(48)))
    assert key(canny()) == key(canny())  # the same image bytes and settings
    assert len({key(None), key(canny()), key(other_image), key(canny(weight=0.5))}) == 4
    assert key(canny()) != key(canny(mode=ControlMode.CONTROL))


def test_openpose_and_lineart_run_controlnet_aux_from_the_annotators_folder(
    tmp_path: Path,
) -> None:
    """controlnet-aux's annotators with random weights, written where A1111's extension keeps
    its downloads: the maps come back at the job's size."""
    import torch

    pytest.importorskip("controlnet_aux")
    from controlnet_aux.lineart import Generator
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    def without_first_name(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        # openpose's own files name a layer without its block (util.transfer puts it back).
        return {".".join(key.split(".")[1:]): value for key, value in model.state_dict().items()}

    torch.manual_seed(0)
    annotators = tmp_path / "ControlNet" / "annotators"
    (annotators / "openpose").mkdir(parents=True)
    (annotators / "lineart").mkdir()
    torch.save(
        without_first_name(bodypose_model()), annotators / "openpose" / "body_pose_model.pth"
    )
    torch.save(
        without_first_name(handpose_model()), annotators / "openpose" / "hand_pose_model.pth"
    )
    torch.save(FaceNet().state_dict(), annotators / "openpose" / "facenet.pth")
    for name in ("sk_model.pth", "sk_model2.pth"):
        torch.save(Generator(3, 1, 3).state_dict(), annotators / "lineart" / name)
    for preprocessor in ("openpose", "lineart"):
        drawn = control_map(square(), preprocessor, (96, 64), tmp_path)
        assert drawn.size == (96, 64) and drawn.mode == "RGB", preprocessor
