"""`easel imagine` and `easel models` as a user runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from sd_parsers import ParserManager

from bot.cli import main

pytestmark = pytest.mark.heavy  # started first: see conftest.py


@pytest.fixture
def env(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(outputs))
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EASEL_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    return outputs


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["easel", *args])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    return int(exited.value.code or 0)


def test_imagine_saves_four_pngs_and_a_grid(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(
        monkeypatch,
        "imagine",
        "a castle on a hill, watercolor",
        "--n",
        "4",
        "--seed",
        "1234",
        "--steps",
        "3",
        "--model",
        "tiny-sd1",
        "--negative",
        "blurry",
        "--json",
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"] == [1234, 1235, 1236, 1237]
    paths = [Path(item["path"]) for item in report["images"]]
    assert len(paths) == 4 and all(path.is_file() for path in paths)
    assert all(path.parent.parent == env for path in paths)
    grid = Image.open(report["grid"])
    assert grid.size == (128, 128)
    assert report["parameters"]["steps"] == 3
    assert report["timings"]["total_s"] >= report["timings"]["diffusion_s"] > 0

    parsed = ParserManager().parse(paths[2])
    assert parsed is not None
    assert parsed.full_prompt == "a castle on a hill, watercolor"
    assert parsed.full_negative_prompt == "blurry"
    sampler = parsed.samplers[0]
    assert sampler.name == "Euler a"
    assert sampler.parameters["seed"] == "1236"
    assert sampler.parameters["steps"] == "3"
    assert sampler.parameters["cfg_scale"] == "7"
    assert parsed.metadata["Size"] == "64x64"


def test_imagine_prints_paths_and_says_when_it_rounds(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(
        monkeypatch,
        "imagine",
        "tiles",
        "--n",
        "1",
        "--size",
        "70x61",
        "--steps",
        "2",
        "--model",
        "tiny-sd1",
        "--tile",
        "--sampler",
        "DPM++ 2M",
        "--schedule",
        "Karras",
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "rounded to 72x64" in captured.err
    assert "Running on the CPU, float32 (as configured)" in captured.err and "slow" in captured.err
    printed = Path(captured.out.split()[0])
    with Image.open(printed) as image:
        assert image.size == (72, 64)
        assert "Schedule type: Karras" in image.info["parameters"]
        assert "Tiling: True" in image.info["parameters"]


def test_img2img_from_the_command_line(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    code = run_cli(
        monkeypatch,
        "imagine",
        "a red square",
        "--n",
        "1",
        "--init",
        str(init),
        "--strength",
        "0.5",
        "--steps",
        "4",
        "--model",
        "tiny-sd1",
        "--json",
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    with Image.open(report["images"][0]["path"]) as image:
        assert "Denoising strength: 0.5" in image.info["parameters"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sampler", "Eular a"], "Did you mean 'Euler a'"),
        (["--steps", "0"], "--steps must be a whole number from 1 to 100"),
        (["--n", "5"], "--n must be a whole number from 1 to 4"),
        (["--model", "no-such-model"], "No model named 'no-such-model'"),
        (["--size", "4096x4096", "--model", "tiny-sd1"], "at most 1,048,576 pixels"),
        (["--size", "big"], "--size must be WIDTHxHEIGHT"),
        (["--style", "watercolour"], "Did you mean 'watercolor'"),
        (["--init", "missing.png"], "does not exist"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    assert run_cli(monkeypatch, "imagine", "x", *args) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert not any(env.rglob("*.png"))


def test_models_lists_name_family_size_and_hash(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert run_cli(monkeypatch, "models") == 0
    table = capsys.readouterr().out
    assert "tiny-sd1-single" in table and "SD 1.x" in table and "single-file" in table
    assert any(
        len(word) == 10 and all(c in "0123456789abcdef" for c in word) for word in table.split()
    )


def test_a_bad_model_path_is_one_error_line_without_a_traceback(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The installed `easel` script, a process of its own, is run by test_cli_models.py.
    assert run_cli(monkeypatch, "imagine", "x", "--model", "nowhere/../nothing.safetensors") == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    assert printed.err.strip().splitlines()[-1].startswith("error:")
    assert printed.out == ""


def test_pnginfo_reads_back_what_imagine_wrote(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(
        monkeypatch,
        "imagine",
        "a lighthouse, oil painting",
        "--n",
        "1",
        "--seed",
        "77",
        "--steps",
        "2",
        "--model",
        "tiny-sd1",
        "--json",
    )
    path = json.loads(capsys.readouterr().out)["images"][0]["path"]
    assert run_cli(monkeypatch, "pnginfo", path, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["prompt"] == "a lighthouse, oil painting"
    assert info["seed"] == 77 and info["steps"] == 2 and info["model"] == "tiny-sd1"

    foreign = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(foreign)
    assert run_cli(monkeypatch, "pnginfo", str(foreign)) == 1
    assert "no generation data" in capsys.readouterr().err


def test_aspect_ratio_cfg_clip_skip_and_out_folder(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "elsewhere"
    code = run_cli(
        monkeypatch,
        "imagine",
        "a harbour at dawn",
        "--n",
        "1",
        "--steps",
        "1",
        "--ar",
        "16:9",
        "--cfg",
        "5.5",
        "--clip-skip",
        "2",
        "--out",
        str(out),
        "--model",
        "tiny-sd1-single",
        "--json",
    )
    assert code == 0
    path = Path(json.loads(capsys.readouterr().out)["images"][0]["path"])
    assert out in path.parents
    with Image.open(path) as image:
        assert image.size == (704, 384)  # 16:9 near the SD 1.x native 512x512
        parameters = image.info["parameters"]
    assert "CFG scale: 5.5" in parameters and "Clip skip: 2" in parameters
    assert "Model: tiny-sd1-single" in parameters


def test_brackets_in_user_input_are_printed_as_they_are(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(monkeypatch, "imagine", "x", "--sampler", "[/x] [bold]euler") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: Unknown sampler '[/x] [bold]euler'. Valid samplers:")


def test_the_chat_flags_work_inside_the_prompt(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(
        monkeypatch,
        "imagine",
        "a lighthouse --steps 2 --n 1 --seed 5 --style watercolor --light golden-hour-lighting "
        "--no fog, people --sampler DPM++ 2M Karras",
        "--model",
        "tiny-sd1",
        "--json",
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    parameters = report["parameters"]
    assert parameters["prompt"].startswith("a lighthouse, ")
    assert "watercolor" in parameters["prompt"] and "golden hour" in parameters["prompt"]
    assert parameters["negative_prompt"] == "fog, people"
    assert (parameters["steps"], report["seeds"]) == (2, [5])
    assert parameters["sampler"] == "DPM++ 2M Karras"

    assert run_cli(monkeypatch, "imagine", "x --bogus 1", "--model", "tiny-sd1") == 1
    assert "Unknown flag --bogus" in capsys.readouterr().err


def test_vocabulary_lists_ids_in_both_languages(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert run_cli(monkeypatch, "vocabulary", "style") == 0
    english = capsys.readouterr().out
    assert "pixel-art" in english and "voxel-art" in english and "Pixel art" in english
    assert run_cli(monkeypatch, "vocabulary", "style", "--ko") == 0
    assert "화풍" in capsys.readouterr().out
    assert run_cli(monkeypatch, "vocabulary", "style", "--json") == 0
    styles = json.loads(capsys.readouterr().out)["style"]
    pixel = next(entry for entry in styles if entry["id"] == "pixel-art")
    assert pixel["en"] == "Pixel art" and pixel["ko"] and "pixel" in pixel["prompt"]
    assert run_cli(monkeypatch, "vocabulary", "colours") == 1
    assert "Unknown category 'colours'" in capsys.readouterr().err


def _red_barn(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """A one-image PNG made by `easel imagine` (seed 8, 3 steps); its path."""
    run_cli(
        monkeypatch,
        "imagine",
        "a red barn",
        "--n",
        "1",
        "--seed",
        "8",
        "--steps",
        "3",
        "--model",
        "tiny-sd1",
        "--json",
    )
    return json.loads(capsys.readouterr().out)["images"][0]["path"]


def test_vary_makes_variations_of_a_generated_png(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _red_barn(monkeypatch, capsys)
    assert run_cli(monkeypatch, "vary", source, "--n", "2", "--json") == 0
    subtle = json.loads(capsys.readouterr().out)
    assert subtle["seeds"] == [8, 8]
    with Image.open(subtle["images"][0]["path"]) as image:
        assert "Variation seed strength: 0.25" in image.info["parameters"]
    assert run_cli(monkeypatch, "vary", source, "--strong", "--n", "1", "--json") == 0
    strong = json.loads(capsys.readouterr().out)
    with Image.open(strong["images"][0]["path"]) as image:
        assert image.size == (64, 64)
        assert "Denoising strength: 0.65" in image.info["parameters"]

    foreign = env.parent / "photo.png"
    Image.new("RGB", (8, 8)).save(foreign)
    assert run_cli(monkeypatch, "vary", str(foreign)) == 1
    assert "holds no generation data" in capsys.readouterr().err


def test_schedule_applies_to_a_sampler_written_in_the_prompt(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(
        monkeypatch,
        "imagine",
        "x --sampler DPM++ 2M --n 1 --steps 2",
        "--schedule",
        "Karras",
        "--model",
        "tiny-sd1",
        "--json",
    )
    assert code == 0
    path = json.loads(capsys.readouterr().out)["images"][0]["path"]
    with Image.open(path) as image:
        assert "Sampler: DPM++ 2M, Schedule type: Karras" in image.info["parameters"]


def test_upscale_with_a_model_and_a_detail_pass(
    env: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_upscale import _tiny_esrgan

    (models_dir / "upscale").mkdir(exist_ok=True)
    torch.save(_tiny_esrgan(2), models_dir / "upscale" / "Tiny-2x.pth")
    source = _red_barn(monkeypatch, capsys)

    assert run_cli(monkeypatch, "upscale", source, "--upscaler", "tiny-2x") == 0
    detailed = Path(capsys.readouterr().out.split()[0])
    with Image.open(detailed) as image:
        assert image.size == (128, 128)
        parameters = image.info["parameters"]
    assert "Denoising strength: 0.3" in parameters and "Upscaler: Tiny-2x" in parameters
    assert "Seed: 8" in parameters and "Size: 128x128" in parameters

    assert run_cli(monkeypatch, "upscale", source, "--scale", "4", "--detail", "0") == 0
    plain = Path(capsys.readouterr().out.split()[0])
    with Image.open(plain) as image:
        assert image.size == (256, 256)
        assert "Upscaler: Lanczos, Upscale by: 4" in image.info["parameters"]


def test_lora_list_shows_files_presets_and_what_is_missing(
    env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    random_sd1: StableDiffusionPipeline,
) -> None:
    from tests.lora_files import write_lora

    models = tmp_path / "lora-models"
    write_lora(random_sd1, models / "Lora" / "pixel-art-v1.safetensors")
    (models / "presets.toml").write_text(
        (Path(__file__).resolve().parents[1] / "models" / "presets.toml").read_text()
    )
    monkeypatch.setenv("EASEL_MODELS_DIR", str(models))
    monkeypatch.setenv("COLUMNS", "250")
    assert run_cli(monkeypatch, "lora", "list") == 0
    listing = capsys.readouterr().out
    assert "pixel-art-v1" in listing and "voxel-art" in listing
    assert "voxel-art-v1:0.8 (missing)" in listing
    assert "pixel-art-v1:0.8 (missing)" not in listing
    assert run_cli(monkeypatch, "lora", "list", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert [lora["name"] for lora in document["loras"]] == ["pixel-art-v1"]
    assert len(document["loras"][0]["hash"]) == 12 and document["loras"][0]["bytes"] > 0
    presets = {preset["id"]: preset for preset in document["presets"]}
    assert presets["voxel-art"]["missing"] == ["voxel-art-v1"]
    assert presets["pixel-art"]["missing"] == [] and presets["pixel-art"]["description"]["ko"]
