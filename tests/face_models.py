"""Face restorers for tests: random-weight GFPGAN, CodeFormer and RestoreFormer state dicts
built from spandrel's own architecture classes, and faces drawn well enough for OpenCV's Haar
cascade to find.

spandrel builds GFPGAN at one fixed size (512px, full width), so that one is full size (86M
weights, 350 MB). CodeFormer's image autoencoder is fixed too; its transformer is sized from the
file, so it gets one small layer and a small codebook. RestoreFormer is sized entirely from the
file: the smallest that spandrel's loader accepts (32 channels, the group norm's minimum).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

try:
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer
except ImportError:  # CodeFormer lives in spandrel-extra-arches, an optional package
    CodeFormer = None


def gfpgan_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(seed)
    return GFPGAN().state_dict()


def codeformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    if CodeFormer is None:
        raise RuntimeError("CodeFormer needs the spandrel-extra-arches package")
    torch.manual_seed(seed)
    return CodeFormer(dim_embd=64, n_layers=1, codebook_size=64).state_dict()


def restoreformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(seed)
    model = RestoreFormer(
        n_embed=64,
        embed_dim=32,
        ch=32,
        ch_mult=(1, 1, 1, 1, 1, 1),
        num_res_blocks=1,
        z_channels=32,
    )
    return model.state_dict()


def esrgan_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    return ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict()


def save_state(state: dict[str, torch.Tensor], path: Path, wrap: str | None = None) -> Path:
    """`state` saved as `path` (.safetensors, or a torch pickle for any other suffix), inside a
    dict under `wrap` as the official GFPGAN and CodeFormer files are ("params_ema")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, path)
    else:
        torch.save(state if wrap is None else {wrap: state}, path)
    return path


def draw_face(size: int = 200, background: int = 60, features: bool = True) -> Image.Image:
    """A grey cartoon face `size` pixels square: hair, a light oval, brows, eyes, a nose and a
    mouth, softened. Without `features`, the same head with no face on it."""
    import cv2

    pixels = np.full((size, size), background, np.uint8)
    scale = size / 200

    def point(x: float, y: float) -> tuple[int, int]:
        return round(x * scale), round(y * scale)

    cv2.ellipse(pixels, point(100, 60), point(70, 55), 0, 180, 360, 40, -1)  # hair
    cv2.ellipse(pixels, point(100, 105), point(60, 78), 0, 0, 360, 200, -1)  # face
    if features:
        for x in (75, 125):
            cv2.ellipse(pixels, point(x, 80), point(16, 5), 0, 0, 360, 70, -1)  # brow
            cv2.ellipse(pixels, point(x, 97), point(12, 7), 0, 0, 360, 40, -1)  # eye
        cv2.line(pixels, point(100, 100), point(96, 128), 150, max(1, round(3 * scale)))
        cv2.ellipse(pixels, point(100, 150), point(20, 6), 0, 0, 360, 60, -1)  # mouth
    pixels = cv2.GaussianBlur(pixels, (0, 0), 2 * scale)
    return Image.fromarray(pixels, "L").convert("RGB")


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
