"""Control maps: what a ControlNet reads, made from the control image by a preprocessor.

The image is first brought to the generation's size as A1111's "Crop and Resize" does (scaled
to cover, centre cropped). Canny, lineart_standard, invert, binary and tile need nothing but
OpenCV and are the same formulas as A1111's ControlNet extension. depth runs a transformers
depth model from models/ControlNet/annotators/depth (DPT, Depth Anything: any folder
`AutoModelForDepthEstimation` loads); openpose and lineart run controlnet_aux's annotators from
models/ControlNet/annotators/<name> when that package is installed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from pipeline.control_names import NO_PREPROCESSOR, annotator_folder, annotator_missing

CANNY_LOW = 100  # A1111's default thresholds
CANNY_HIGH = 200
PROCESSOR_RESOLUTION = 512  # A1111's default "Processor Res"

_annotators: dict[tuple[str, Path], Any] = {}
_annotators_lock = threading.Lock()


def crop_and_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return ImageOps.fit(image.convert("RGB"), size, Image.Resampling.LANCZOS)


def control_map(
    image: Image.Image, preprocessor: str, size: tuple[int, int], models_dir: Path
) -> Image.Image:
    """The map a ControlNet reads, RGB at `size`."""
    fitted = crop_and_resize(image, size)
    if preprocessor in (NO_PREPROCESSOR, "tile"):
        return fitted
    pixels = np.asarray(fitted)
    if preprocessor == "canny":
        edges = _canny(pixels)
    elif preprocessor == "lineart_standard":
        edges = _lineart_standard(pixels)
    elif preprocessor == "invert":
        return ImageOps.invert(fitted)
    elif preprocessor == "binary":
        edges = _binary(pixels)
    elif preprocessor == "depth":
        return _depth(fitted, models_dir).resize(size, Image.Resampling.BICUBIC)
    else:
        drawn = _aux_annotator(preprocessor, fitted, models_dir)
        return drawn.resize(size, Image.Resampling.BICUBIC)
    return Image.fromarray(edges).convert("RGB")


def _canny(pixels: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Canny(pixels, CANNY_LOW, CANNY_HIGH)


def _lineart_standard(pixels: np.ndarray) -> np.ndarray:
    """Dark lines on a light background as white lines on black (A1111's lineart_standard)."""
    import cv2

    values = pixels.astype(np.float32)
    blurred = cv2.GaussianBlur(values, (0, 0), 6.0)
    intensity = np.min(blurred - values, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(lines)) if lines.size else 16.0)
    intensity *= 127
    return intensity.clip(0, 255).astype(np.uint8)


def _binary(pixels: np.ndarray) -> np.ndarray:
    import cv2

    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    _, binary = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    return binary


def _depth(image: Image.Image, models_dir: Path) -> Image.Image:
    """A depth map, near is white, from the transformers depth model in the annotators
    folder (loaded once)."""
    import torch

    model, processor = _annotator("depth", models_dir, _load_depth)
    inputs = processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        predicted = model(**inputs).predicted_depth
    depth = predicted[0].float().cpu().numpy()
    span = float(depth.max() - depth.min())
    normalised = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
    return Image.fromarray((normalised * 255).astype(np.uint8)).convert("RGB")


def _load_depth(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    return model, processor


def _aux_annotator(name: str, image: Image.Image, models_dir: Path) -> Image.Image:
    detector = _annotator(name, models_dir, lambda folder: _load_aux(name, folder))
    # A1111's processor resolution (512), or the image's own side when it is smaller.
    side = min(PROCESSOR_RESOLUTION, max(image.size))
    return detector(image, detect_resolution=side, image_resolution=side).convert("RGB")


def _load_aux(name: str, folder: Path) -> Any:
    import warnings

    with warnings.catch_warnings():  # its import registers timm models noisily
        warnings.simplefilter("ignore")
        import controlnet_aux

    classes = {"openpose": "OpenposeDetector", "lineart": "LineartDetector"}
    return getattr(controlnet_aux, classes[name]).from_pretrained(folder)


def _annotator(name: str, models_dir: Path, load: Any) -> Any:
    folder = annotator_folder(models_dir) / name
    with _annotators_lock:
        key = (name, folder)
        if key not in _annotators:
            if not folder.is_dir():
                raise annotator_missing(name, folder)
            _annotators[key] = load(folder)
        return _annotators[key]
