"""Preview benchmark: what a live preview costs against a sampling step.

Random-weight models only (nothing is downloaded): `tiny` is the test model, `mid` has
SD 1.5's block layout at half width; TAESD is diffusers' AutoencoderTiny in TAESD's own layout
with random weights (the same work as the real one). Prints per-step time, per-preview time
(linear approximation and TAESD: decode, grid, JPEG) and the share of a 20-step job that
previews take at one per 2 s interval (the engine's rule: the first step after each interval,
never the last). Times are the best of `--repeats` runs. Asserts nothing.

    python -m bench.preview                     # CPU-friendly defaults
    python -m bench.preview --device cuda --size 512 --models tiny,mid
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderTiny

from bench.common import load_shape, quiet_diffusers, synchronize
from pipeline.device import choose_device
from pipeline.engine import Engine
from pipeline.previews import LinearDecoder, PreviewMaker, PreviewSchedule, TaesdDecoder
from pipeline.request import GenerationRequest

JOB_STEPS = 20
INTERVAL_S = 2.0


@dataclass(frozen=True)
class JobShare:
    previews: int  # made in one job
    share: float  # of the job's time


def seconds_per_step(engine: Engine, request: GenerationRequest, repeats: int) -> float:
    engine.generate(request)  # warm-up: kernels, allocator, lazy imports
    times = []
    for _ in range(repeats):
        synchronize()
        result = engine.generate(request)
        times.append(result.timings.diffusion_s / request.steps)
    return min(times)  # the best run: on a shared machine the others measure the neighbours


def seconds_per_preview(maker: PreviewMaker, latents: torch.Tensor, repeats: int) -> float:
    counts, keys = (latents.shape[0],), (0,)
    maker.previews(latents, counts, keys)  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        maker.previews(latents, counts, keys)
        synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def job_share(step_s: float, preview_s: float) -> JobShare:
    """A 20-step job on a simulated clock: each step takes `step_s`, each preview `preview_s`."""
    now = 0.0
    schedule = PreviewSchedule(INTERVAL_S, clock=lambda: now)
    previews = 0
    for step in range(1, JOB_STEPS + 1):
        now += step_s
        if schedule.due(step, JOB_STEPS):
            now += preview_s
            previews += 1
    return JobShare(previews, previews * preview_s / now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--size", type=int, default=0, help="0: 64 for tiny, 256 for mid")
    parser.add_argument("--images", type=int, default=4, help="images in the job (its grid)")
    parser.add_argument("--steps", type=int, default=4, help="steps timed per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    quiet_diffusers()
    device = choose_device(args.device)
    print(device.describe())
    print(
        f"{'model':6} {'size':>5} {'imgs':>4} {'s/step':>8} {'linear ms':>9} {'taesd ms':>9} "
        f"{'lin/step':>8} {'taesd/step':>10} {'n 20-step':>9} {'lin job':>8} {'taesd job':>9}"
    )
    torch.manual_seed(0)
    taesd = TaesdDecoder(AutoencoderTiny().to(device.device, device.dtype))
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            model = load_shape(name, device, Path(scratch))
            size = args.size or (64 if name == "tiny" else 256)
            engine = Engine(model)
            seeds = tuple(range(1, args.images + 1))
            request = GenerationRequest(
                "a castle on a hill, watercolor",
                steps=args.steps,
                seeds=seeds,
                width=size,
                height=size,
            )
            step_s = seconds_per_step(engine, request, args.repeats)
            latents = torch.randn(
                args.images, 4, size // 8, size // 8, device=device.device, dtype=device.dtype
            )
            linear_s = seconds_per_preview(PreviewMaker(LinearDecoder()), latents, args.repeats * 5)
            taesd_s = seconds_per_preview(PreviewMaker(taesd), latents, args.repeats)
            linear_job, taesd_job = job_share(step_s, linear_s), job_share(step_s, taesd_s)
            print(
                f"{name:6} {size:>5} {args.images:>4} {step_s:>8.4f} {linear_s * 1000:>9.2f} "
                f"{taesd_s * 1000:>9.2f} {linear_s / step_s:>8.2%} {taesd_s / step_s:>10.2%} "
                f"{linear_job.previews:>9} {linear_job.share:>8.2%} {taesd_job.share:>9.2%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
