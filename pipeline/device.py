"""Which device and dtype the engine runs on: CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.errors import EaselError

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
    chosen_by_user: bool = False

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    def describe(self) -> str:
        name = self.device.type
        if self.device.type == "cuda":
            name = f"cuda ({torch.cuda.get_device_name(self.device)})"
        dtype = str(self.dtype).removeprefix("torch.")
        note = ""
        if self.is_cpu:
            why = "as configured" if self.chosen_by_user else "no GPU found"
            note = f" - {why}, so generation is slow"
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
    by_user = device != "auto"
    chosen = _parse_device(device) if by_user else _detect_device()
    if dtype == "auto":
        automatic = torch.float32 if chosen.type == "cpu" else torch.float16
        return DeviceChoice(chosen, automatic, by_user)
    if dtype.lower() not in _DTYPES:
        raise EaselError(f"Unknown dtype {dtype!r}: use auto, float16, bfloat16 or float32.")
    return DeviceChoice(chosen, _DTYPES[dtype.lower()], by_user)


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
