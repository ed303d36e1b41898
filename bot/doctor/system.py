"""Python, torch, the GPU and TCMalloc.

The origin notes' two start-up troubles live here: A1111's "Torch is not able to use GPU; add
--skip-torch-cuda-test" (Easel needs no flag: it runs on the CPU, slowly, and this says why the
GPU was not used) and "Cannot locate TCMalloc (improves CPU memory usage)" (optional here:
`make run` preloads it when it is installed).
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from bot.doctor.checks import Check, gib
from bot.settings import Settings
from pipeline.errors import EaselError, first_line

if TYPE_CHECKING:
    from types import ModuleType

MIN_PYTHON = (3, 11)
# Below this much free GPU memory an SD 1.x/2.x batch in fp16 may run out of memory.
LOW_GPU_MEMORY = 4 * 1024**3
# Where the Makefile looks for tcmalloc (keep the two lists alike).
TCMALLOC_PATTERNS = (
    "/usr/lib/*/libtcmalloc_minimal.so.4",
    "/usr/lib/*/libtcmalloc.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
    "/usr/local/lib/libtcmalloc_minimal.so.4",
)
PROC_MAPS = Path("/proc/self/maps")
TORCH_CUDA_INSTALL = (
    "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu124 "
    "(pick the CUDA version `nvidia-smi` shows or older)"
)


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info < MIN_PYTHON:
        return Check.fail(
            "Python",
            f"Python {version} ({sys.executable}); Easel needs 3.11 or newer",
            "install Python 3.11 or newer, then `make clean install`",
        )
    return Check.ok("Python", f"Python {version} ({sys.executable})")


def check_torch() -> Check:
    try:
        import torch
    except Exception as error:  # ImportError, or OSError for a broken CUDA library
        return Check.fail(
            "torch",
            f"cannot import torch: {type(error).__name__}: {first_line(error)}",
            "reinstall it: `make clean install`, or in the virtual environment "
            f"{TORCH_CUDA_INSTALL}",
        )
    return Check.ok("torch", f"torch {torch.__version__}, {_torch_build(torch)}")


def _torch_build(torch: ModuleType) -> str:
    if torch.version.cuda:
        return f"built for CUDA {torch.version.cuda}"
    if getattr(torch.version, "hip", None):
        return f"built for ROCm {torch.version.hip}"
    return "a CPU-only build"


def check_gpu(settings: Settings) -> Check:
    """Where generation will run (the same choice the bot makes) and how much GPU memory is
    free; on the CPU, why torch cannot use a GPU and what to do."""
    try:
        import torch

        from pipeline.device import choose_device
    except Exception:
        return Check.warn(
            "GPU", "not checked: torch cannot be imported", "fix the torch check first"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            choice = choose_device(settings.device, settings.dtype)
        except EaselError as error:
            return Check.fail(
                "GPU",
                str(error),
                "set EASEL_DEVICE=auto (Easel then uses the GPU when torch sees one, else the "
                "CPU) and EASEL_DTYPE=auto, or fix what the message says",
            )
        # torch explains a GPU it cannot use (an old driver, say) in a warning, once.
        said = [first_line(Exception(str(w.message))) for w in caught]
    dtype = str(choice.dtype).removeprefix("torch.")
    if choice.device.type == "cuda":
        return _cuda_memory(torch, choice.device, dtype)
    if choice.device.type == "mps":
        return Check.ok("GPU", f"Apple MPS, {dtype}")
    if choice.chosen_by_user:
        return Check.warn(
            "GPU",
            f"the CPU, as EASEL_DEVICE={settings.device} asks ({dtype}); generation is slow",
            "set EASEL_DEVICE=auto to use a GPU when torch sees one",
        )
    reason, fix = _why_no_gpu(torch, said)
    return Check.warn(
        "GPU",
        f"no GPU: {reason}. Easel still starts (no --skip-torch-cuda-test needed) and runs on "
        f"the CPU, {dtype}, slowly (minutes per image)",
        fix,
    )


def _cuda_memory(torch: ModuleType, device: object, dtype: str) -> Check:
    try:
        name = torch.cuda.get_device_name(device)
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError as error:  # CUDA is "available" but cannot start: a driver mismatch
        return Check.fail(
            "GPU",
            f"torch sees {device} but cannot use it: {first_line(error)}",
            "update the NVIDIA driver (`nvidia-smi` shows the CUDA version it supports), or "
            f"install a torch built for an older CUDA: {TORCH_CUDA_INSTALL}; EASEL_DEVICE=cpu "
            "runs without it, slowly",
        )
    detail = f"{device} ({name}), {dtype}: {gib(free)} free of {gib(total)}"
    if free < LOW_GPU_MEMORY:
        return Check.warn(
            "GPU",
            detail,
            "other processes hold GPU memory (`nvidia-smi` lists them; a running bot is one): "
            "stop them, or lower EASEL_MAX_BATCH_IMAGES so batches fit",
        )
    return Check.ok("GPU", detail)


def _why_no_gpu(torch: ModuleType, said: list[str]) -> tuple[str, str]:
    """Why torch sees no CUDA device, and what to do, most specific first."""
    if not torch.version.cuda and not getattr(torch.version, "hip", None):
        return (
            f"this torch ({torch.__version__}) is a CPU-only build",
            f"install a CUDA build into the virtual environment: {TORCH_CUDA_INSTALL}",
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return (
            f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU",
            "unset CUDA_VISIBLE_DEVICES (or list the GPU's index in it)",
        )
    if said:
        return (
            f"torch says: {said[0]}",
            "update the NVIDIA driver (`nvidia-smi` shows the CUDA version it supports), or "
            f"install a torch built for an older CUDA: {TORCH_CUDA_INSTALL}",
        )
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists():
        return (
            "no NVIDIA GPU or driver is visible (no nvidia-smi, no /dev/nvidia0)",
            "install the NVIDIA driver until `nvidia-smi` lists the GPU; in Docker, run the "
            "container with --gpus all",
        )
    return (
        f"torch (CUDA {torch.version.cuda}) sees no CUDA device",
        "check that `nvidia-smi` lists the GPU and that its driver supports CUDA "
        f"{torch.version.cuda}; else {TORCH_CUDA_INSTALL}",
    )


def check_tcmalloc(maps: Path = PROC_MAPS) -> Check:
    """TCMalloc: loaded into this process, installed for `make run` to preload, or missing
    (optional: it only lowers CPU memory fragmentation)."""
    if not sys.platform.startswith("linux"):
        return Check.ok("TCMalloc", f"not used on {platform.system()} (Linux only)")
    loaded = loaded_tcmalloc(maps)
    if loaded is not None:
        return Check.ok("TCMalloc", f"loaded: {loaded}")
    installed = installed_tcmalloc()
    if installed is not None:
        return Check.ok(
            "TCMalloc",
            f"installed ({installed}), not loaded in this process: `make run` preloads it; "
            f"starting by hand, use LD_PRELOAD={installed} easel run",
        )
    return Check.warn(
        "TCMalloc",
        "not installed (optional: it lowers CPU memory use)",
        "sudo apt install libtcmalloc-minimal4 (or libgoogle-perftools4); `make run` then "
        "preloads it",
    )


def loaded_tcmalloc(maps: Path = PROC_MAPS) -> str | None:
    """The tcmalloc library mapped into this process, if any."""
    try:
        text = maps.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "libtcmalloc" in Path(path).name:
            return path
    return None


def installed_tcmalloc() -> str | None:
    """The library `make run` would preload (the Makefile's own search, in its order)."""
    for pattern in TCMALLOC_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None
