"""Step benchmark: Easel's Engine.generate against a plain diffusers StableDiffusionPipeline call
on the same random-weight model, at batch 1 and 4, and what torch.compile gains.

The plain pipeline is loaded from the folder the Easel model was loaded from, with the same
sampler (the engine's default, Euler a), steps, CFG and seeds. Batch 4 is one Easel request
with 4 seeds against the plain call with num_images_per_prompt=4. `plain/easel` is the ratio of
their best seconds (1.0: as fast; the goal is 0.97 or more). With --compile, a third column
times the engine with EASEL_COMPILE's setting after its warm-up, and `gain` is uncompiled
seconds over compiled. The engine batches in fixed calls of `--rows` rows (EASEL_BATCH_ROWS;
8 by default, so batch 1 is padded to four images' rows: `--rows 2` is the like-for-like
comparison at batch 1), or `--whole` (EASEL_BATCH_MODE=whole). Prints a table; asserts nothing.

    python -m bench.step                                   # CPU: mid at 256x256, fp32
    python -m bench.step --device cuda --dtype float16 --size 512 --compile unet
    python -m bench.step --rows 2 --batches 1              # batch 1 without padding
    python -m bench.step --family sdxl --shape tiny --size 256     # SDXL's layout, on the CPU
    python -m bench.step --family sdxl --shape full --size 1024 --device cuda --dtype float16

With `--family sdxl` the plain side is diffusers' StableDiffusionXLPipeline; `full` builds
SDXL base's architecture (the configs Easel ships) with random weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import StableDiffusionPipeline

from bench.common import load_shape, quiet_diffusers, synchronize
from pipeline.acceleration import Acceleration, CompileTarget, apply_cpu_threads
from pipeline.batching import DEFAULT_ROWS, BatchMode, BatchShape
from pipeline.device import DeviceChoice, choose_device
from pipeline.engine import Engine
from pipeline.loading import HashCache, LoadedModel, load_model
from pipeline.quiet import quiet_libraries
from pipeline.request import GenerationRequest

PROMPT = "a castle on a hill, watercolor"
CFG = 7.0


def timed(call: Callable[[], Any]) -> float:
    synchronize()
    started = time.perf_counter()
    call()
    synchronize()
    return time.perf_counter() - started


def easel_call(engine: Engine, size: int, steps: int, batch: int) -> Callable[[], Any]:
    request = GenerationRequest(
        prompt=PROMPT,
        seeds=tuple(range(1, batch + 1)),
        width=size,
        height=size,
        steps=steps,
        cfg_scale=CFG,
    )
    return lambda: engine.generate(request)


def plain_call(
    pipe: StableDiffusionPipeline, size: int, steps: int, batch: int
) -> Callable[[], Any]:
    def call() -> Any:
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in range(1, batch + 1)]
        return pipe(
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=CFG,
            width=size,
            height=size,
            num_images_per_prompt=batch,
            generator=generators,
        )

    return call


def plain_pipeline(
    folder: Path, device: DeviceChoice, engine: Engine, size: int, steps: int
) -> StableDiffusionPipeline:
    """diffusers' own pipeline on the same weights, with the scheduler Easel's default sampler
    makes (the same class and configuration)."""
    family = engine.model.family
    pipe = family.txt2img_class.from_pretrained(
        str(folder), dtype=device.dtype, **dict(family.pipeline_options)
    ).to(device.device)
    pipe.set_progress_bar_config(disable=True)
    job = engine.prepare(GenerationRequest(prompt=PROMPT, width=size, height=size, steps=steps))
    pipe.scheduler = type(job.scheduler).from_config(job.scheduler.config)
    return pipe


def best_times(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Each call's best seconds of `repeats`, the calls taking turns: on a busy machine the
    best run is the one least slowed by others' work."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            seconds[name].append(timed(call))
    return {name: min(values) for name, values in seconds.items()}


def batching(args: argparse.Namespace) -> BatchShape:
    return BatchShape(BatchMode.WHOLE) if args.whole else BatchShape(BatchMode.FIXED, args.rows)


def describe(shape: BatchShape) -> str:
    return "whole" if shape.mode is BatchMode.WHOLE else f"fixed, {shape.rows} rows"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mid", help="tiny or mid (SD 1.5's layout, half width)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--compile", default="off", choices=[target.value for target in CompileTarget]
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="EASEL_BATCH_ROWS")
    parser.add_argument("--whole", action="store_true", help="EASEL_BATCH_MODE=whole")
    parser.add_argument("--family", default="sd1", choices=["sd1", "sdxl"])
    args = parser.parse_args()
    quiet_diffusers()
    quiet_libraries(bars=False)
    device = choose_device(args.device, args.dtype)
    threads = apply_cpu_threads(None, device.device)
    name = torch.cuda.get_device_name(device.device) if device.device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {name}", end="")
    print(f" ({threads or torch.get_num_threads()} threads)" if device.is_cpu else "")
    print(
        f"{args.family} model {args.shape} at {args.size}x{args.size}, {str(device.dtype)[6:]}, "
        f"{args.steps} steps, Euler a, CFG {CFG:g}; engine batching {describe(batching(args))}; "
        f"best of {args.repeats}"
    )
    batches = [int(batch) for batch in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        model = load_shape(args.shape, device, Path(scratch), args.family)
        folder = Path(scratch) / args.shape
        run(model, folder, device, args, batches)


def run(
    model: LoadedModel,
    folder: Path,
    device: DeviceChoice,
    args: argparse.Namespace,
    batches: list[int],
) -> None:
    engine = Engine(model, batching=batching(args))
    plain = plain_pipeline(folder, device, engine, args.size, args.steps)
    header = f"{'batch':>5} {'plain s':>9} {'easel s':>9} {'plain/easel':>11}"
    compiled = None
    if args.compile != "off":
        # Its own copy of the weights: compiling is applied to the pipeline in place.
        settings = Acceleration(compile=CompileTarget(args.compile), backend=args.backend)
        copy = load_model(model.source, device, folder.parent, HashCache(folder.parent / "h"))
        compiled = Engine(copy, batching=batching(args), acceleration=settings)
        report = compiled.warm_up([(args.size, args.size)])
        assert report is not None
        print(f"warm-up (compile): {report.seconds:.1f} s for {len(report.shapes)} shape(s)")
        header += f" {'compiled s':>10} {'gain':>6}"
    print(header)
    for batch in batches:
        calls = {
            "plain": plain_call(plain, args.size, args.steps, batch),
            "easel": easel_call(engine, args.size, args.steps, batch),
        }
        # Kernels, allocator, lazy imports: a short run of each first.
        plain_call(plain, args.size, 2, batch)()
        easel_call(engine, args.size, 2, batch)()
        if compiled is not None:
            calls["compiled"] = easel_call(compiled, args.size, args.steps, batch)
        seconds = best_times(calls, args.repeats)
        line = (
            f"{batch:>5} {seconds['plain']:>9.3f} {seconds['easel']:>9.3f} "
            f"{seconds['plain'] / seconds['easel']:>11.3f}"
        )
        if "compiled" in seconds:
            line += f" {seconds['compiled']:>10.3f} {seconds['easel'] / seconds['compiled']:>6.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
