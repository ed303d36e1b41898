"""Restoring faces as a step of a job: which restorer a job's word names, and the A1111
parameters that record it. Shared by the engine (`--face` on a generation) and the upscale
runner (the U buttons' "restore faces" setting); pipeline/faces.py does the restoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.errors import InvalidRequestError
from pipeline.faces import (
    FaceRestorerFile,
    UnknownFaceRestorerError,
    face_restorer_file,
    find_face_restorers,
    load_face_restorer,
    restore_faces,
)

ANY_RESTORER = "restore"  # `--face restore`: the first restorer the models folder has
FaceKeys = tuple[tuple[str, str], ...]


def resolve_face_restorer(name: str, models_dir: Path) -> FaceRestorerFile:
    """The restorer a job names (a file, a family word, or "restore" for the first there
    is); a clear, localised refusal when there is none."""
    try:
        if name.strip().lower() == ANY_RESTORER:
            found = find_face_restorers(models_dir)
            if found:
                return found[0]
            return face_restorer_file("gfpgan", models_dir)  # raises, listing the folders
        return face_restorer_file(name, models_dir)
    except UnknownFaceRestorerError as error:
        available = ", ".join(error.available) or "없음"
        raise InvalidRequestError(
            str(error),
            ko=f"{name!r} 얼굴 복원 모델이 없습니다. 쓸 수 있는 것: {available}. GFPGAN과 "
            f"RestoreFormer 모델은 {models_dir.name}/GFPGAN에, CodeFormer 모델은 "
            f"{models_dir.name}/Codeformer에 넣으세요.",
        ) from error


def check_codeformer_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise InvalidRequestError(
            f"The CodeFormer weight must be from 0 to 1 (0 restores the most), not {weight:g}.",
            ko=f"CodeFormer 가중치는 0에서 1 사이여야 합니다(0이 가장 많이 복원). 입력: {weight:g}",
        )


def restore_image_faces(
    image: Image.Image,
    name: str,
    codeformer_weight: float,
    models_dir: Path,
    device: Any,
    dtype: Any,
) -> tuple[Image.Image, FaceKeys]:
    """`image` with its faces restored, and A1111's keys for its parameters
    (`Face restoration: CodeFormer`, and CodeFormer's weight)."""
    file = resolve_face_restorer(name, models_dir)
    restorer = load_face_restorer(file, device, dtype)
    restored = restore_faces(image, restorer, models_dir, codeformer_weight)
    keys: FaceKeys = (("Face restoration", restorer.architecture),)
    if restorer.architecture == "CodeFormer":
        keys += (("CodeFormer weight", f"{codeformer_weight:g}"),)
    return restored.image, keys
