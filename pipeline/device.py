"""Which device and dtype the engine runs on: CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.errors import EaselError

log = logging.getLogger(__name__)

_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    def describe(self) -> str:
        name = self.device.type
        if self.device.type == "cuda":
            name = f"cuda ({torch.cuda.get_device_name(self.device)})"
        dtype = str(self.dtype).removeprefix("torch.")
        note = " - no GPU found, so generation is slow" if self.is_cpu else ""
        return f"Running on {name}, {dtype}{note}."


def _detect_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_device(device: str = "auto", dtype: str = "auto") -> DeviceChoice:
    """Resolve the settings `device` ("auto", "cuda", "cuda:1", "mps", "cpu") and `dtype`.

    "auto" dtype is fp16 on GPUs and fp32 on the CPU, where fp16 is slow or unsupported.
    """
    chosen = _detect_device() if device == "auto" else _parse_device(device)
    if dtype == "auto":
        return DeviceChoice(chosen, torch.float32 if chosen.type == "cpu" else torch.float16)
    if dtype.lower() not in _DTYPES:
        raise EaselError(f"Unknown dtype {dtype!r}: use auto, float16, bfloat16 or float32.")
    return DeviceChoice(chosen, _DTYPES[dtype.lower()])


def _parse_device(name: str) -> torch.device:
    try:
        parsed = torch.device(name)
    except RuntimeError as error:
        raise EaselError(f"Unknown device {name!r}: use auto, cuda, cuda:N, mps or cpu.") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise EaselError(f"Device {name!r} was asked for, but PyTorch sees no CUDA GPU.")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise EaselError(f"Device {name!r} was asked for, but Apple MPS is not available.")
    return parsed
