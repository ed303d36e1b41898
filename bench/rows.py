"""Row independence: is a row of a UNet call bit-identical whatever the other rows hold?

For each model shape and size, on the chosen device and dtype, one UNet call of `--rows` rows
(random latents and text, one timestep) is compared with:
- the same call with every other row replaced (content),
- the same rows in a shuffled order (position),
- the first row alone, in a call of 1 row, and in a call of each size of `--sizes` (shape).
Fixed-shape batching (pipeline/batching.py) needs the first two to hold; the last says whether
an image would also survive a change of call size. Also timed: milliseconds per row at each
call size. Prints a table; asserts nothing.

    python -m bench.rows                                  # CPU: tiny at 64, mid at 128
    python -m bench.rows --device cuda --dtype float16 --models mid --size 512
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from bench.common import SHAPES, quiet_diffusers, synchronize
from pipeline.device import choose_device
from tests.tiny_models import build_random_pipeline


@dataclass(frozen=True)
class RowReport:
    content: bool
    position: bool
    same_by_size: dict[int, bool]  # call size -> row 0 equal to the `--rows` call's
    ms_per_row: dict[int, float]


def check_rows(
    unet: torch.nn.Module, size: int, rows: int, sizes: list[int], repeats: int
) -> RowReport:
    parameter = next(unet.parameters())
    device, dtype = parameter.device, parameter.dtype
    latent = size // 8
    generator = torch.Generator().manual_seed(1)
    width = unet.config.cross_attention_dim
    count = max([rows, *sizes]) * 2
    sample = torch.randn(count, 4, latent, latent, generator=generator).to(device, dtype)
    context = torch.randn(count, 77, width, generator=generator).to(device, dtype)
    timestep = torch.tensor(500, device=device)

    def run(index: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return unet(sample[index], timestep, context[index]).sample

    base = run(list(range(rows)))
    others = run([0, *range(rows, 2 * rows - 1)])
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(2)).tolist()
    moved = run(order)
    same_by_size = {n: torch.equal(run(list(range(n)))[0], base[0]) for n in sizes}
    timings: dict[int, float] = {}
    for n in sizes:
        run(list(range(n)))
        synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            run(list(range(n)))
        synchronize()
        timings[n] = (time.perf_counter() - started) / repeats / n * 1000
    return RowReport(
        content=torch.equal(others[0], base[0]),
        position=all(torch.equal(moved[i], base[order[i]]) for i in range(rows)),
        same_by_size=same_by_size,
        ms_per_row=timings,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--size", type=int, default=0, help="0: 64 for tiny, 128 for mid")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    quiet_diffusers()
    device = choose_device(args.device, args.dtype)
    print(device.describe(), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads")
    sizes = [int(item) for item in args.sizes.split(",")]
    print(
        f"{'model':6} {'size':>5} {'rows':>4} {'content':>8} {'position':>8}  same as the call of "
        f"{args.rows} rows / ms per row, by call size"
    )
    for name in args.models.split(","):
        pipe = build_random_pipeline("sd1", SHAPES[name])
        unet = pipe.unet.to(device.device, device.dtype).eval()
        size = args.size or (64 if name == "tiny" else 128)
        report = check_rows(unet, size, args.rows, sizes, args.repeats)
        by_size = "  ".join(
            f"{n}:{'=' if report.same_by_size[n] else 'x'}/{report.ms_per_row[n]:.1f}"
            for n in sizes
        )
        print(
            f"{name:6} {size:>5} {args.rows:>4} {report.content!s:>8} {report.position!s:>8}  "
            f"{by_size}",
            flush=True,
        )
    print(
        "content/position: row 0 of the call unchanged when the other rows change or the rows "
        "are shuffled. =: the row equals the fixed call's at that call size, x: it differs."
    )


if __name__ == "__main__":
    main()
