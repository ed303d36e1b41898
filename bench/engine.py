"""Engine benchmark: seconds per image at batch 1 and 4, and the time spent outside diffusers.

Random-weight models only (nothing is downloaded): `tiny` is the test model, `mid` has
SD 1.5's block layout at half width. Prints a table; asserts nothing.

    python -m bench.engine                      # CPU-friendly defaults
    python -m bench.engine --size 512 --device cuda --models tiny,mid
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import load_shape, quiet_diffusers
from pipeline.batching import BatchMode, BatchShape
from pipeline.device import choose_device
from pipeline.engine import Engine
from pipeline.request import GenerationRequest

# Fixed calls of one image (2 rows) and of four (8 rows, the default), and whole batches.
SET_UPS = {
    "fixed 2": BatchShape(BatchMode.FIXED, 2),
    "fixed 8": BatchShape(BatchMode.FIXED, 8),
    "whole": BatchShape(BatchMode.WHOLE),
}


@dataclass(frozen=True)
class Measurement:
    seconds_per_image: float
    outside_share: float  # of the wall time around Engine.generate, not in the diffusers call


def measure(engine: Engine, request: GenerationRequest, repeats: int) -> Measurement:
    engine.generate(request)  # warm-up: kernels, allocator, lazy imports
    walls, outside = [], []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = engine.generate(request)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
        walls.append(wall)
        outside.append((wall - result.timings.diffusion_s) / wall)
    return Measurement(
        seconds_per_image=statistics.median(walls) / request.image_count,
        outside_share=statistics.median(outside),
    )


def batch_matches_single(engine: Engine, request: GenerationRequest) -> bool:
    batch = engine.generate(request)
    alone = engine.generate(GenerationRequest(**{**request.__dict__, "seeds": request.seeds[1:2]}))
    return np.array_equal(np.asarray(batch.images[1].image), np.asarray(alone.images[0].image))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=0, help="0: 64 for tiny, 256 for mid")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    quiet_diffusers()
    device = choose_device(args.device)
    print(device.describe())
    print(
        f"{'model':6} {'size':>5} {'batching':>8} {'s/img b1':>9} {'s/img b4':>9} "
        f"{'outside b1':>10} {'outside b4':>10} {'b4==b1':>7}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            model = load_shape(name, device, Path(scratch))
            size = args.size or (64 if name == "tiny" else 256)
            for label, shape in SET_UPS.items():
                engine = Engine(model, batching=shape)
                base = {"prompt": "a castle on a hill, watercolor", "steps": args.steps}
                single = GenerationRequest(**base, seeds=(1,), width=size, height=size)
                batch = GenerationRequest(**base, seeds=(1, 2, 3, 4), width=size, height=size)
                one = measure(engine, single, args.repeats)
                four = measure(engine, batch, args.repeats)
                same = batch_matches_single(engine, batch)
                print(
                    f"{name:6} {size:>5} {label:>8} {one.seconds_per_image:>9.4f} "
                    f"{four.seconds_per_image:>9.4f} {one.outside_share:>10.2%} "
                    f"{four.outside_share:>10.2%} {same!s:>7}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
