"""LoRA benchmark: what switching LoRAs costs against a job, and memory per resident LoRA.

A random-weight model with SD 1.5's block layout at half width (`tests.tiny_models.MID`) and
random kohya-format LoRAs on its UNet and text-encoder attention layers; nothing is downloaded.
Prints figures; asserts nothing.

    python -m bench.lora                           # CPU: 256x256, 20 steps
    python -m bench.lora --device cuda --size 512

Switch times: "resident" is `activate` between two LoRAs both loaded as adapters; "from memory"
reloads an evicted adapter from the manager's in-memory copy of the file; "from disk" reads,
converts and loads the file each time (the OS file cache is warm, so this is a lower bound).
Fusing: seconds per step for the plain model, one LoRA active as an adapter, and the same LoRA
fused into the weights (what a preset in steady use gets): one UNet call on random latents (the
LoRA's own cost) and a whole job's time divided by its steps (text encoder and VAE included),
timed in rounds of the three; then the time fusing and unfusing take, and the CPU memory kept
for unfusing.
Memory: peak RSS on the CPU (noisy: the allocator reuses freed pages) or
torch.cuda.max_memory_allocated on a GPU, during a job, against the plain model's job; then the
tensors themselves: "adapters" in the pipeline, "cached" copies of the files on the CPU, and
"both" counted once per storage (on the CPU peft keeps the cached tensors as its weights).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from pipeline.device import DeviceChoice, choose_device
from pipeline.engine import Engine
from pipeline.loading import HashCache, LoadedModel, ModelSource, SourceKind, load_model
from pipeline.lora import LoraManager, LoraUse
from pipeline.request import GenerationRequest
from tests.lora_files import LoraSpec, write_lora
from tests.tiny_models import MID, build_random_pipeline

MIB = 1 << 20


@dataclass(frozen=True)
class Setup:
    model: LoadedModel
    engine: Engine
    request: GenerationRequest
    lora_dir: Path
    names: list[str]
    file_bytes: int  # of one LoRA file


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(action: Callable[[], object]) -> float:
    synchronize()
    started = time.perf_counter()
    action()
    synchronize()
    return time.perf_counter() - started


def median_time(action: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(action) for _ in range(repeats))


def reset_peak(device: DeviceChoice) -> None:
    gc.collect()
    if device.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device.device)
        return
    with contextlib.suppress(OSError, AttributeError):  # glibc: give freed heap back first
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    # Linux: "5" resets the process's peak RSS (VmHWM); elsewhere the peak is the whole run's.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_bytes(device: DeviceChoice) -> int:
    if device.device.type == "cuda":
        return torch.cuda.max_memory_allocated(device.device)
    try:
        status = Path("/proc/self/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
        return int(kib) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def build(args: argparse.Namespace, device: DeviceChoice, scratch: Path) -> Setup:
    folder = scratch / "mid"
    pipe = build_random_pipeline("sd1", MID)
    pipe.save_pretrained(folder)
    names = [f"lora-{index}" for index in range(args.loras)]
    for index, name in enumerate(names):
        spec = LoraSpec(seed=index, rank=args.rank, std=0.02, dtype=torch.float16)
        write_lora(pipe, scratch / "lora" / f"{name}.safetensors", spec, kohya=True)
    del pipe
    source = ModelSource("mid", SourceKind.DIFFUSERS_FOLDER, str(folder))
    model = load_model(source, device, scratch, HashCache(scratch / "hashes.json"))
    request = GenerationRequest(
        prompt="a castle on a hill, pixel art",
        steps=args.steps,
        seeds=(1,),
        width=args.size,
        height=args.size,
    )
    file_bytes = (scratch / "lora" / f"{names[0]}.safetensors").stat().st_size
    return Setup(model, Engine(model), request, scratch, names, file_bytes)


def job_seconds(setup: Setup, manager: LoraManager, uses: list[LoraUse], repeats: int) -> float:
    manager.activate(uses)
    setup.engine.generate(setup.request)  # warm-up
    return median_time(lambda: setup.engine.generate(setup.request), repeats)


def switch_seconds(manager: LoraManager, names: list[str], switches: int) -> float:
    manager.activate([LoraUse(names[0])])
    times = [
        timed(lambda i=i: manager.activate([LoraUse(names[i % 2])])) for i in range(1, switches + 1)
    ]
    return statistics.median(times)


def report_switching(setup: Setup, args: argparse.Namespace) -> None:
    pipe = setup.model.pipe
    a, b = setup.names[:2]
    plain = LoraManager(pipe, setup.lora_dir)
    job = job_seconds(setup, plain, [], args.repeats)
    job_one = job_seconds(setup, plain, [LoraUse(a)], args.repeats)
    job_two = job_seconds(setup, plain, [LoraUse(a), LoraUse(b)], args.repeats)
    plain.activate([])
    pipe.unload_lora_weights()
    print(
        f"job, {args.steps} steps at {args.size}x{args.size}: {job:.3f} s plain, "
        f"{job_one:.3f} s with 1 LoRA active (+{job_one / job - 1:.1%}), "
        f"{job_two:.3f} s with 2 (+{job_two / job - 1:.1%})"
    )
    cases = {
        "resident (2 adapters loaded)": LoraManager(pipe, setup.lora_dir, max_resident=2),
        "from memory (1 resident, file cached)": LoraManager(pipe, setup.lora_dir, max_resident=1),
        "from disk (1 resident, no cache)": LoraManager(
            pipe, setup.lora_dir, max_resident=1, cache_bytes=0
        ),
    }
    print(f"{'switch between two LoRAs':40} {'seconds':>9} {'of a job':>9}")
    for label, manager in cases.items():
        seconds = switch_seconds(manager, [a, b], args.switches)
        print(f"{label:40} {seconds:>9.4f} {seconds / job_one:>9.2%}", flush=True)
        manager.activate([])
        pipe.unload_lora_weights()


def unet_step(setup: Setup, args: argparse.Namespace) -> Callable[[], object]:
    """One denoising step's UNet call at the job's size, on random latents."""
    pipe = setup.model.pipe
    side = args.size // pipe.vae_scale_factor
    parameter = next(pipe.unet.parameters())
    latents = torch.randn(2, pipe.unet.config.in_channels, side, side).to(parameter)
    text = torch.randn(2, 77, pipe.text_encoder.config.hidden_size).to(parameter)
    timestep = torch.tensor([500], device=parameter.device)

    def step() -> object:
        with torch.no_grad():
            return pipe.unet(latents, timestep, encoder_hidden_states=text)

    return step


def report_fusing(setup: Setup, args: argparse.Namespace) -> None:
    """Rounds of one job each plain, unfused and fused, so that a slow spell of a shared
    machine falls on all three; medians over the rounds."""
    pipe = setup.model.pipe
    uses = [LoraUse(setup.names[0])]
    manager = LoraManager(pipe, setup.lora_dir)

    def job() -> None:
        setup.engine.generate(setup.request)

    step = unet_step(setup, args)
    manager.activate(uses)
    job()  # warm-up with the adapter loaded
    cases = ("plain", "unfused", "fused")
    times: dict[str, list[float]] = {case: [] for case in (*cases, "fuse", "unfuse")}
    steps: dict[str, list[float]] = {case: [] for case in cases}
    copy_mib = 0.0
    for _ in range(args.repeats):
        manager.activate([])  # unfuses
        times["plain"].append(timed(job))
        steps["plain"].append(median_time(step, 3))
        times["fuse"].append(timed(lambda: manager.activate(uses)))  # fused from the first batch
        assert manager.fused(), "the LoRA was not fused"
        copy_mib = manager.memory().fused_copy_bytes / MIB
        times["fused"].append(timed(job))
        steps["fused"].append(median_time(step, 3))
        times["unfuse"].append(timed(manager.unfuse))  # the adapters stay, unmerged
        times["unfused"].append(timed(job))
        steps["unfused"].append(median_time(step, 3))
    manager.activate([])
    pipe.unload_lora_weights()
    per_step = {case: statistics.median(times[case]) / args.steps for case in times}
    plain, unfused, fused = per_step["plain"], per_step["unfused"], per_step["fused"]
    unet = {case: statistics.median(steps[case]) for case in cases}
    print(
        f"one UNet step (both CFG halves): {unet['plain']:.4f} s plain, {unet['unfused']:.4f} s "
        f"with 1 LoRA unfused (+{unet['unfused'] / unet['plain'] - 1:.1%}), "
        f"{unet['fused']:.4f} s fused (+{unet['fused'] / unet['plain'] - 1:.1%})"
    )
    print(
        f"seconds per step (job time / steps): {plain:.4f} plain, {unfused:.4f} with 1 LoRA "
        f"unfused (+{unfused / plain - 1:.1%}), {fused:.4f} fused (+{fused / plain - 1:.1%}); "
        f"fusing {per_step['fuse'] * args.steps:.3f} s, unfusing "
        f"{per_step['unfuse'] * args.steps:.3f} s; {copy_mib:.1f} MiB of original weights "
        "kept on the CPU while fused",
        flush=True,
    )


def report_memory(setup: Setup, device: DeviceChoice) -> None:
    pipe = setup.model.pipe
    setup.engine.generate(setup.request)
    reset_peak(device)
    setup.engine.generate(setup.request)
    base = peak_bytes(device) / MIB
    file_mib = setup.file_bytes / MIB
    kind = "CUDA max allocated" if device.device.type == "cuda" else "peak RSS"
    print(f"memory: {kind} during a job; one LoRA file is {file_mib:.1f} MiB (float16)")
    print(
        f"{'resident':>8} {'peak MiB':>9} {'over base':>10} {'per LoRA':>9} {'x file':>7}"
        f" {'adapters':>9} {'cached':>7} {'both':>7}"
    )
    print(f"{0:>8} {base:>9.1f}")
    manager = LoraManager(pipe, setup.lora_dir, max_resident=len(setup.names))
    for count in (1, len(setup.names)):
        reset_peak(device)
        for name in setup.names[:count]:
            manager.activate([LoraUse(name)])
        setup.engine.generate(setup.request)
        peak = peak_bytes(device) / MIB
        per = (peak - base) / count
        held = manager.memory()
        print(
            f"{count:>8} {peak:>9.1f} {peak - base:>10.1f} {per:>9.1f} {per / file_mib:>7.2f}"
            f" {held.adapter_bytes / MIB:>9.1f} {held.cached_bytes / MIB:>7.1f}"
            f" {held.total_bytes / MIB:>7.1f}",
            flush=True,
        )
    manager.activate([])
    pipe.unload_lora_weights()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--loras", type=int, default=10, help="files written; the memory count")
    parser.add_argument("--repeats", type=int, default=2, help="jobs timed per case")
    parser.add_argument("--switches", type=int, default=6, help="switches timed per case")
    parser.add_argument(
        "--only", choices=("memory", "switching", "fusing"), help="one report instead of all"
    )
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    device = choose_device(args.device)
    print(device.describe())
    with tempfile.TemporaryDirectory() as scratch:
        setup = build(args, device, Path(scratch))
        # Memory first: CPU peak RSS only ever grows, and switching leaves cached copies behind.
        if args.only in (None, "memory"):
            report_memory(setup, device)
        if args.only in (None, "switching"):
            report_switching(setup, args)
        if args.only in (None, "fusing"):
            report_fusing(setup, args)


if __name__ == "__main__":
    main()
