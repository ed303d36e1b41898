"""Face restoration as a step of a job: `--face` on a generation, and the U buttons' upscale
with "restore faces", recorded in the parameters as A1111 records it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.executors.local import LocalExecutor
from pipeline.executors.work import OutcomeStatus, Task
from pipeline.loading import LoadedModel
from pipeline.request import GenerationRequest, ImageRef, UpscaleRequest
from tests.conftest import TEST_BATCHING
from tests.face_models import draw_face, restoreformer_state, save_state


@pytest.fixture(scope="module")
def face_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("face-models")
    save_state(restoreformer_state(), root / "GFPGAN" / "RestoreFormer.pth", wrap="params_ema")
    return root


@pytest.fixture(scope="module")
def engine(tiny_model: LoadedModel, face_models: Path) -> Iterator[Engine]:
    yield Engine(tiny_model, batching=TEST_BATCHING, models_dir=face_models)


def request(**overrides: object) -> GenerationRequest:
    values: dict[str, object] = {"prompt": "a portrait", "steps": 2, "seeds": (4,)}
    values.update(overrides)
    return GenerationRequest(width=64, height=64, **values)  # type: ignore[arg-type]


def test_face_restoration_on_a_generation_is_recorded_and_names_are_checked(
    engine: Engine,
) -> None:
    restored = engine.generate(request(face_restoration="restore"))
    extra = dict(restored.images[0].infotext.extra)
    assert extra["Face restoration"] == "RestoreFormer"
    assert restored.request.face_restoration == "RestoreFormer"  # the file it resolved to
    # The tiny model draws no face: the pixels are the plain job's.
    plain = engine.generate(request())
    assert np.array_equal(np.asarray(restored.images[0].image), np.asarray(plain.images[0].image))
    with pytest.raises(InvalidRequestError, match="No CodeFormer model") as refused:
        engine.prepare(request(face_restoration="codeformer"))
    assert refused.value.ko and "Codeformer" in refused.value.ko
    with pytest.raises(InvalidRequestError, match="CodeFormer weight must be from 0 to 1"):
        engine.prepare(request(face_restoration="restore", codeformer_weight=1.5))


def test_an_upscale_that_restores_faces_changes_the_face_alone(
    engine: Engine, face_models: Path, tmp_path: Path
) -> None:
    source = tmp_path / "face.png"
    portrait = Image.new("RGB", (192, 192), (60, 60, 60))
    portrait.paste(draw_face(64), (64, 64))  # a small face in the middle of a wide frame
    portrait.save(source)
    executor = LocalExecutor(engine, face_models)

    def upscaled(**settings: object) -> tuple[np.ndarray, dict[str, str]]:
        work = UpscaleRequest(ImageRef(path=str(source)), scale=2, detail=0.0, **settings)  # type: ignore[arg-type]
        outcome = asyncio.run(executor.run([Task(1, work)], lambda _: None))[0]
        assert outcome.status is OutcomeStatus.DONE, outcome.failure
        image = outcome.images[0]
        return np.asarray(image.image).astype(int), dict(image.infotext.extra)

    try:
        plain, plain_keys = upscaled()
        restored, keys = upscaled(face_restoration="restoreformer")
    finally:
        asyncio.run(executor.close())
    assert plain.shape == restored.shape == (384, 384, 3)
    assert keys["Face restoration"] == "RestoreFormer" and "Face restoration" not in plain_keys
    centre = (slice(160, 224), slice(160, 224))
    assert np.abs(restored[centre] - plain[centre]).mean() > 1  # the face was redrawn
    assert np.array_equal(restored[:4, :4], plain[:4, :4])  # the corner is outside its crop


def test_the_restore_faces_setting_applies_to_new_images_and_u_upscales(
    engine: Engine, face_models: Path, tmp_path: Path
) -> None:
    from bot.core.events import Origin, Refusal, UserRef
    from bot.core.work import work_of
    from bot.runtime import build_bot, open_store
    from bot.settings import Settings
    from bot.store import JobStatus

    origin = Origin("test", "chat-faces")
    minji = UserRef("test", "minji", "민지", "ko")
    settings = Settings(
        _env_file=None,
        outputs_dir=tmp_path / "out",
        models_dir=face_models,
        database_url=f"sqlite:///{tmp_path}/easel.db",
        progress_interval=0,
    )
    bot = build_bot(settings, engine, open_store(settings))
    service = bot.service

    async def scenario() -> tuple[int, int, str]:
        try:
            await service.update_settings(minji, {"restore_faces": "gfpgan"})
        except Refusal as refusal:
            refused = refusal.reply.message.render("ko")
        else:
            raise AssertionError("a restorer the models folder lacks was saved")
        await service.update_settings(minji, {"faces": "restoreformer"})
        await service.start()
        options = await service.options(minji, "a portrait --steps 2 --n 1", origin)
        parent = (await service.imagine(minji, options, origin)).job_id
        await asyncio.wait_for(service.wait_until_idle(origin.platform), 120)
        upscale = (await service.act(minji, parent, "U1", origin)).job_id
        await asyncio.wait_for(service.wait_until_idle(origin.platform), 120)
        await service.stop()
        return parent, upscale, refused

    try:
        parent, upscale, refused = asyncio.run(scenario())
        assert "GFPGAN" in refused and "gfpgan" in refused  # why, in Korean
        made = bot.store.job(parent, with_images=True)
        assert made is not None and made.status is JobStatus.DONE
        assert work_of(made).face_restoration == "RestoreFormer"  # the setting, as a default
        child = bot.store.job(upscale, with_images=True)
        assert child is not None and child.status is JobStatus.DONE
        assert work_of(child).face_restoration == "restoreformer"
        with Image.open(child.images[0].path) as upscaled:
            assert "Face restoration: RestoreFormer" in upscaled.info["parameters"]
    finally:
        bot.store.close()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--face", "codeformer"], "No CodeFormer model"),
        (["--restore-faces", "gfpgan:2"], "CodeFormer's weight (0 to 1)"),
        (["--face", "restorefromer"], "No face restorer named 'restorefromer'"),
        (["--cn", "cany", "--cn-image", "{image}"], "Did you mean 'canny'"),
    ],
)
def test_easel_imagine_refuses_faces_and_controlnets_before_loading_a_model(
    face_models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    import sys

    from bot.cli import main

    image = tmp_path / "pose.png"
    draw_face(64).save(image)
    monkeypatch.setenv("EASEL_MODELS_DIR", str(face_models))
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(tmp_path / "outputs"))
    given = [argument.format(image=image) for argument in arguments]
    monkeypatch.setattr(sys, "argv", ["easel", "imagine", "a portrait", *given])
    monkeypatch.setattr(
        "bot.cli.generate._load_engine", lambda *_: pytest.fail("a model was loaded")
    )
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code != 0
    assert message in " ".join(capsys.readouterr().err.split())
