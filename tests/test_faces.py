"""Face restoration: random-weight GFPGAN, CodeFormer and RestoreFormer files in A1111's folders,
found, recognised by spandrel and run; faces found by OpenCV in drawn pictures, restored and
pasted back without touching anything else.

A real GFPGAN or CodeFormer pass takes 6 to 10 s on one CPU core, so three such passes run
(EASEL_FACE_PASSES=0 skips them); the other tests check what those networks are given through
an identity stand-in for their forward pass, and run the small RestoreFormer for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import InvalidRequestError, ModelLoadError
from pipeline.faces import (
    FACE_SIZE,
    FaceBox,
    FaceRestorer,
    FaceRestorerFile,
    UnknownFaceRestorerError,
    detect_faces,
    face_crop,
    face_restorer_file,
    find_face_restorers,
    load_face_restorer,
    restore_faces,
)
from tests.face_models import (
    CodeFormer,
    codeformer_state,
    draw_face,
    esrgan_state,
    gfpgan_state,
    noise,
    restoreformer_state,
    save_state,
)

HAS_CODEFORMER = CodeFormer is not None
needs_codeformer = pytest.mark.skipif(
    not HAS_CODEFORMER, reason="CodeFormer needs the spandrel-extra-arches package"
)
REAL_PASSES = os.environ.get("EASEL_FACE_PASSES", "1") != "0"
real_passes = pytest.mark.skipif(not REAL_PASSES, reason="EASEL_FACE_PASSES=0")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.heavy  # started first: see conftest.py


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ as A1111 has it: GFPGAN/ with a GFPGAN, a RestoreFormer whose name does not say
    so (a .pth wrapping its weights in "params_ema", as the official files do), an upscaler put in
    the wrong folder and facexlib's detector weights; Codeformer/ with a CodeFormer."""
    root = tmp_path_factory.mktemp("models")
    save_state(gfpgan_state(), root / "GFPGAN" / "GFPGANv1.4-random.safetensors")
    save_state(restoreformer_state(), root / "GFPGAN" / "rf-tiny.pth", wrap="params_ema")
    save_state(esrgan_state(), root / "GFPGAN" / "4x-tiny-esrgan.pth")
    save_state({"weight": torch.zeros(1)}, root / "GFPGAN" / "detection_Resnet50_Final.pth")
    (root / "GFPGAN" / "README.txt").write_text("not a model")
    if HAS_CODEFORMER:
        path = root / "Codeformer" / "codeformer-random.safetensors"
        save_state(codeformer_state(), path)
    return root


@pytest.fixture(scope="module")
def restorers(models: Path) -> dict[str, FaceRestorer]:
    """Every face model in `models`, loaded once, by spandrel's architecture id."""
    names = ["GFPGANv1.4-random", "rf-tiny"] + (["codeformer-random"] if HAS_CODEFORMER else [])
    loaded = [load_face_restorer(face_restorer_file(name, models)) for name in names]
    return {restorer.architecture: restorer for restorer in loaded}


def _picture(width: int = 320, height: int = 256, left: int = 100, top: int = 40) -> Image.Image:
    """A noisy grey picture with a 160px drawn face at (left, top)."""
    rng = np.random.default_rng(7)
    pixels = np.clip(60 + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels, "RGB")
    picture.paste(draw_face(160), (left, top))
    return picture


def _outside(pixels: np.ndarray, regions: list[tuple[int, int, int, int]]) -> np.ndarray:
    keep = np.ones(pixels.shape[:2], dtype=bool)
    for left, top, right, bottom in regions:
        keep[top:bottom, left:right] = False
    return pixels[keep]


class _Flat:
    """A stand-in restorer: every face comes back one colour, and each face it got is kept."""

    def __init__(self, colour: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.colour = colour
        self.faces: list[Image.Image] = []

    def restore(self, face: Image.Image, codeformer_weight: float = 0.5) -> Image.Image:
        self.faces.append(face)
        return Image.new("RGB", face.size, self.colour)


def _box_detector(*boxes: FaceBox):
    return lambda image: list(boxes)


# --- model files ----------------------------------------------------------------------------


def test_finds_face_models_in_a1111_folders(models: Path) -> None:
    found = find_face_restorers(models)
    expected = [
        FaceRestorerFile("4x-tiny-esrgan", models / "GFPGAN" / "4x-tiny-esrgan.pth", "GFPGAN"),
    ]
    if HAS_CODEFORMER:
        path = models / "Codeformer" / "codeformer-random.safetensors"
        expected.append(FaceRestorerFile("codeformer-random", path, "Codeformer"))
    path = models / "GFPGAN" / "GFPGANv1.4-random.safetensors"
    expected.append(FaceRestorerFile("GFPGANv1.4-random", path, "GFPGAN"))
    expected.append(FaceRestorerFile("rf-tiny", models / "GFPGAN" / "rf-tiny.pth", "GFPGAN"))
    assert found == expected  # no README, no facexlib detector weights


def test_spandrel_recognises_each_random_model(restorers: dict[str, FaceRestorer]) -> None:
    expected = {"GFPGAN", "RestoreFormer"} | ({"CodeFormer"} if HAS_CODEFORMER else set())
    assert set(restorers) == expected
    for architecture, restorer in restorers.items():
        assert restorer.architecture == architecture
        assert restorer.dtype == torch.float32


def test_names_in_any_case_and_family_words(models: Path) -> None:
    assert face_restorer_file("gfpganv1.4-RANDOM", models).name == "GFPGANv1.4-random"
    assert face_restorer_file("rf-tiny.pth", models).name == "rf-tiny"
    assert face_restorer_file("GFPGAN", models).name == "GFPGANv1.4-random"
    # No file says "restoreformer": the family is found by its weights' names.
    assert face_restorer_file("RestoreFormer", models).name == "rf-tiny"
    if HAS_CODEFORMER:
        assert face_restorer_file("codeformer", models).folder == "Codeformer"


def test_an_unknown_name_lists_what_there_is(models: Path) -> None:
    with pytest.raises(UnknownFaceRestorerError) as raised:
        face_restorer_file("GFPGANv1.3", models)
    message = str(raised.value)
    assert isinstance(raised.value, ModelLoadError)
    assert "No face restorer named 'GFPGANv1.3'" in message
    for name in ("GFPGANv1.4-random", "rf-tiny", "4x-tiny-esrgan"):
        assert name in message and name in raised.value.available
    assert "GFPGAN" in message and "Codeformer" in message


def test_a_family_with_no_file_is_refused(tmp_path: Path) -> None:
    save_state(restoreformer_state(), tmp_path / "GFPGAN" / "RestoreFormer.pth")
    with pytest.raises(UnknownFaceRestorerError, match=r"No CodeFormer model.*RestoreFormer"):
        face_restorer_file("codeformer", tmp_path)
    with pytest.raises(UnknownFaceRestorerError, match="Available: none"):
        face_restorer_file("gfpgan", tmp_path / "elsewhere")


def test_an_upscaler_in_the_gfpgan_folder_is_refused(models: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"4x-tiny-esrgan.pth is an upscaler \(ESRGAN\)"):
        load_face_restorer(face_restorer_file("4x-tiny-esrgan", models))


def test_a_file_that_is_no_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "GFPGAN" / "broken.pth"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"broken\.pth could not be loaded as a face restorer"):
        load_face_restorer(path)


# --- what the networks are given ------------------------------------------------------------


def test_each_network_gets_its_pixels_and_settings(
    restorers: dict[str, FaceRestorer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faces go in as [-1, 1] and come out from [-1, 1] (an identity network gives the face back
    exactly); CodeFormer alone gets the weight, GFPGAN its stored noise."""
    calls: dict[str, dict[str, object]] = {}
    for architecture, restorer in restorers.items():

        def identity(
            pixels: torch.Tensor, architecture: str = architecture, **settings: object
        ) -> tuple[torch.Tensor, None]:
            assert -1.0 <= pixels.min() < -0.99 and 0.99 < pixels.max() <= 1.0
            calls[architecture] = settings
            return pixels, None

        monkeypatch.setattr(restorer.network, "forward", identity)
    face = noise(FACE_SIZE, FACE_SIZE)
    for restorer in restorers.values():
        assert np.array_equal(np.asarray(restorer.restore(face, 0.25)), np.asarray(face))
    expected: dict[str, dict[str, object]] = {
        "GFPGAN": {"return_rgb": False, "randomize_noise": False},
        "RestoreFormer": {},
    }
    if HAS_CODEFORMER:
        expected["CodeFormer"] = {"weight": 0.25}
    assert calls == expected


def test_restoreformer_gets_what_spandrels_own_call_gives_it(
    models: Path, restorers: dict[str, FaceRestorer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """spandrel's RestoreFormer call converts [0, 1] to [-1, 1] and back itself (its GFPGAN and
    CodeFormer calls do not): the network gets the same pixels from it as from us, and the same
    network output makes the same image."""
    from spandrel import ModelLoader

    descriptor = ModelLoader().load_from_file(models / "GFPGAN" / "rf-tiny.pth").eval()
    received: list[torch.Tensor] = []

    def darker(pixels: torch.Tensor, **settings: object) -> tuple[torch.Tensor, None]:
        received.append(pixels.clone())
        return pixels * 0.8 - 0.1, None

    monkeypatch.setattr(descriptor.model, "forward", darker)
    monkeypatch.setattr(restorers["RestoreFormer"].network, "forward", darker)
    face = draw_face(FACE_SIZE)
    pixels = torch.from_numpy(np.asarray(face, dtype=np.float32) / 255).permute(2, 0, 1)
    theirs = descriptor(pixels[None])[0].mul(255).round().byte().permute(1, 2, 0).numpy()
    ours = np.asarray(restorers["RestoreFormer"].restore(face))
    assert torch.allclose(received[0], received[1], atol=1e-6)
    assert np.abs(ours.astype(np.int16) - theirs).max() <= 1
    assert np.abs(ours.astype(np.int16) - np.asarray(face)).mean() > 5  # not the face as it was


def test_a_codeformer_weight_outside_0_to_1_is_refused(
    restorers: dict[str, FaceRestorer],
) -> None:
    with pytest.raises(InvalidRequestError, match="between 0 and 1") as raised:
        restore_faces(_picture(), _Flat(), Path("."), codeformer_weight=1.5)
    assert raised.value.ko is not None
    with pytest.raises(InvalidRequestError):
        restorers["RestoreFormer"].restore(draw_face(FACE_SIZE), -0.1)


@real_passes
def test_gfpgan_restores_a_face(models: Path) -> None:
    restorer = load_face_restorer(face_restorer_file("gfpgan", models), DEVICE)
    face = draw_face(FACE_SIZE)
    restored = restorer.restore(face)
    assert restored.size == (FACE_SIZE, FACE_SIZE)
    assert not np.array_equal(np.asarray(restored), np.asarray(face))


@real_passes
@needs_codeformer
def test_the_codeformer_weight_changes_the_face(models: Path) -> None:
    restorer = load_face_restorer(face_restorer_file("codeformer", models), DEVICE)
    face = draw_face(FACE_SIZE)
    strongest = np.asarray(restorer.restore(face, 0.0), dtype=np.int16)
    faithful = np.asarray(restorer.restore(face, 1.0), dtype=np.int16)
    assert np.abs(strongest - faithful).mean() > 1


# --- detection --------------------------------------------------------------------------------


def test_the_haar_cascade_finds_a_drawn_face() -> None:
    picture = _picture(left=100, top=40)
    [face] = detect_faces(picture, None)
    assert abs(face.x + face.width / 2 - 180) < 16  # the drawing's middle: (180, 120)
    assert abs(face.y + face.height / 2 - 125) < 20
    assert 100 <= face.width <= 160 and face.score > 0


def test_largest_face_first() -> None:
    picture = Image.new("RGB", (400, 220), (60, 60, 60))
    picture.paste(draw_face(90), (20, 60))
    picture.paste(draw_face(180), (200, 20))
    faces = detect_faces(picture, None)
    assert [face.x > 190 for face in faces] == [True, False]


def test_no_face_is_found_in_noise_or_a_blank_head() -> None:
    assert detect_faces(noise(256, 256), None) == []
    assert detect_faces(draw_face(200, features=False), None) == []


def test_a_yunet_file_that_does_not_load_falls_back_to_the_cascade(tmp_path: Path) -> None:
    folder = tmp_path / "facedetection"
    folder.mkdir()
    (folder / "face_detection_yunet_2023mar.onnx").write_bytes(b"not an onnx model")
    assert len(detect_faces(_picture(), tmp_path)) == 1


# --- restoring pictures -----------------------------------------------------------------------


def test_a_face_is_restored_and_nothing_outside_its_crop_changes(
    models: Path, restorers: dict[str, FaceRestorer]
) -> None:
    picture = _picture()
    result = restore_faces(picture, restorers["RestoreFormer"], models)
    assert result.faces == 1 and result.image.size == picture.size
    [box] = detect_faces(picture, models)
    region = face_crop(box, *picture.size)
    assert region is not None
    before, after = np.asarray(picture), np.asarray(result.image)
    assert np.array_equal(_outside(before, [region]), _outside(after, [region]))
    left, top, right, bottom = region
    inside = np.abs(after[top:bottom, left:right].astype(np.int16) - before[top:bottom, left:right])
    assert inside.mean() > 10


def test_a_picture_without_faces_comes_back_as_it_was(models: Path) -> None:
    picture = noise(200, 160)
    restorer = _Flat()
    result = restore_faces(picture, restorer, models)
    assert result.faces == 0 and restorer.faces == []
    assert np.array_equal(np.asarray(result.image), np.asarray(picture))


def test_the_paste_ramps_with_no_seam() -> None:
    picture = Image.new("RGB", (300, 300), (100, 100, 100))
    box = FaceBox(110, 110, 80, 80, 1.0)  # a 160px crop from (70, 70)
    result = restore_faces(picture, _Flat(), Path("."), detector=_box_detector(box))
    row = np.asarray(result.image)[150, :, 0].astype(np.int16) - 100
    assert row[:70].max() == 0 and row[230:].max() == 0  # outside the crop
    assert row[150] == 155  # the middle is all restored face
    steps = np.diff(row[60:151])
    assert steps.min() >= 0 and steps.max() <= 20  # rises gradually: no edge to see
    assert ((row > 0) & (row < 155)).sum() >= 10  # over many pixels


def test_faces_at_the_edges_of_odd_sizes(models: Path) -> None:
    picture = noise(101, 77).convert("RGBA")
    picture.putalpha(Image.new("L", picture.size, 128))
    boxes = [FaceBox(-10, -8, 40, 40, 1.0), FaceBox(80, 50, 30, 30, 1.0)]
    restorer = _Flat((0, 0, 0))
    result = restore_faces(picture, restorer, models, detector=_box_detector(*boxes))
    assert result.faces == 2 and result.image.size == (101, 77) and result.image.mode == "RGBA"
    assert [face.size for face in restorer.faces] == [(FACE_SIZE, FACE_SIZE)] * 2
    regions = [face_crop(box, 101, 77) for box in boxes]
    assert regions == [(0, 0, 50, 52), (65, 35, 101, 77)]
    before, after = np.asarray(picture), np.asarray(result.image)
    assert np.array_equal(_outside(before, regions), _outside(after, regions))
    assert (after[:, :, 3] == 128).all()
    assert after[0, 0, :3].max() == 0  # restored right to the image's corner


def test_a_box_outside_the_picture_is_no_face(models: Path) -> None:
    picture = noise(64, 64)
    detector = _box_detector(FaceBox(200, 200, 30, 30, 1.0))
    result = restore_faces(picture, _Flat(), models, detector=detector)
    assert result.faces == 0 and result.image is picture


def test_importing_the_module_loads_no_torch_or_opencv() -> None:
    heavy = "{'torch', 'cv2', 'spandrel'}"
    code = f"import sys, pipeline.faces; print(sorted({heavy} & sys.modules.keys()))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"
