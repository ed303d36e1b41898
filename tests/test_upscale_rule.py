"""One rule for U: the chat's U button (the executor's upscale) and `easel upscale` both run
the detail pass by default, and give the same image."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from pipeline.engine import Engine
from pipeline.executors import OutcomeStatus, Task
from pipeline.executors.local import LocalExecutor
from pipeline.images import Infotext, output_path, read_infotext, save_png
from pipeline.request import DETAIL_STRENGTH, GenerationRequest, ImageRef, UpscaleRequest
from pipeline.upscale_detail import plan_detail


def _source(engine: Engine, folder: Path) -> Path:
    result = engine.generate(GenerationRequest(prompt="a red barn", steps=3, seeds=(8,)))
    image = result.images[0]
    return save_png(image.image, output_path(folder, "source"), image.infotext)


def test_the_u_button_and_easel_upscale_give_the_same_detailed_image(
    engine: Engine,
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = _source(engine, tmp_path)
    executor = LocalExecutor(engine, tmp_path / "no-models")
    work = UpscaleRequest(image=ImageRef(path=str(source)))
    assert work.detail == DETAIL_STRENGTH
    assert UpscaleRequest.from_json(work.to_json()) == work
    [outcome] = asyncio.run(executor.run([Task(1, work)], lambda event: None))
    asyncio.run(executor.close())
    assert outcome.status is OutcomeStatus.DONE
    button = outcome.images[0]
    assert button.image.size == (128, 128)
    assert button.infotext.denoising_strength == DETAIL_STRENGTH
    assert ("Upscaler", "Lanczos") in button.infotext.extra

    monkeypatch.setenv("EASEL_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EASEL_DEVICE", "cpu")
    monkeypatch.setattr(sys, "argv", ["easel", "upscale", str(source), "--json"])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    assert exited.value.code in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert report["detail"] == DETAIL_STRENGTH and report["upscaler"] == "Lanczos"
    assert (report["width"], report["height"]) == (128, 128)
    with Image.open(report["path"]) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(button.image))
    info = read_infotext(Path(report["path"]))
    assert info is not None and info.denoising_strength == DETAIL_STRENGTH


def test_rows_from_before_the_detail_pass_keep_a_plain_upscale() -> None:
    old_row = json.dumps({"image": {"path": "x.png"}, "scale": 2, "upscaler": None})
    assert UpscaleRequest.from_json(old_row).detail == 0.0


def test_no_detail_pass_says_why(tmp_path: Path) -> None:
    enlarged = Image.new("RGB", (128, 128))
    assert plan_detail(None, enlarged, 0.3, 1 << 20).skipped == (
        "No detail pass: the image holds no generation data (128x128)."
    )
    plan = plan_detail(Infotext(prompt="x", seed=1), enlarged, 0.3, 64 * 64)
    assert plan.request is None and "over the size limit" in (plan.skipped or "")
    assert plan_detail(Infotext(prompt="x"), enlarged, 0, 1 << 20).skipped is None
