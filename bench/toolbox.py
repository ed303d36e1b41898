"""What the A1111 toolbox costs per job: ControlNet and face restoration against the plain job,
on the same random-weight model, in the same run.

- ControlNet: a canny ControlNet (random weights, shaped as the model's UNet) on a text-to-image
  job, against the same job without it; and against diffusers' own
  StableDiffusionControlNetPipeline on the same weights (`plain/easel`, 1.0: as fast).
- Face restoration: the job followed by restoring the faces of its images with a random
  GFPGAN (spandrel's architecture at its real size), against the job alone; the detector
  (OpenCV's Haar cascade) runs on every image, the restorer on each face it finds: the bench
  pastes a face crop in so one face is found per image.
- `--sdxl`: SDXL base's architecture with random weights against diffusers' SDXL pipeline at
  1024² (bench.step's comparison; on a GPU, in fp16).

    python -m bench.toolbox                                # CPU: tiny at 256x256
    python -m bench.toolbox --shape mid --size 512 --device cuda --dtype float16 --sdxl

Prints a table of seconds and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
from PIL import Image, ImageDraw

from bench.common import load_shape, quiet_diffusers
from bench.step import best_times
from pipeline.batching import BatchMode, BatchShape
from pipeline.device import DeviceChoice, choose_device
from pipeline.engine import Engine
from pipeline.loading import LoadedModel
from pipeline.quiet import quiet_libraries
from pipeline.request import ControlUse, GenerationRequest, ImageRef
from tests.tiny_models import build_random_controlnet

PROMPT = "a portrait of a knight, watercolor"
CFG = 7.0


def control_image(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 4, size // 8, 3 * size // 4, 7 * size // 8), outline="black", width=4)
    draw.rectangle((size // 3, size // 2, 2 * size // 3, 5 * size // 8), outline="black", width=3)
    return image


def request(size: int, steps: int, control: ControlUse | None = None) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT, seeds=(1,), width=size, height=size, steps=steps, cfg_scale=CFG,
        control=control,
    )  # fmt: skip


def controlnet_calls(
    model: LoadedModel, models: Path, device: DeviceChoice, size: int, steps: int
) -> dict[str, Callable[[], Any]]:
    """Easel plain, Easel with a canny ControlNet, and diffusers' ControlNet pipeline."""
    controlnet = build_random_controlnet(model.pipe.unet).to(device.device, device.dtype)
    controlnet.save_pretrained(models / "ControlNet" / "bench-canny")
    # Two rows a call: one image and its negative prompt, as diffusers runs it (no padding).
    engine = Engine(model, models_dir=models, batching=BatchShape(BatchMode.FIXED, 2))
    picture = control_image(size)
    use = ControlUse(image=ImageRef.from_image(picture), model="", preprocessor="canny")
    plain_job = request(size, steps)
    controlled = request(size, steps, use)
    pipe = diffusers.StableDiffusionControlNetPipeline(
        **{**model.pipe.components, **dict(model.family.pipeline_options)},
        controlnet=controlnet,
    )
    pipe.set_progress_bar_config(disable=True)
    job = engine.prepare(controlled)
    pipe.scheduler = type(job.scheduler).from_config(job.scheduler.config)
    from pipeline.control_maps import control_map

    mapped = control_map(picture, "canny", (size, size), models)

    def diffusers_call() -> Any:
        return pipe(
            PROMPT,
            image=mapped,
            num_inference_steps=steps,
            guidance_scale=CFG,
            width=size,
            height=size,
            generator=[torch.Generator("cpu").manual_seed(1)],
        )

    return {
        "plain": lambda: engine.generate(plain_job),
        "controlnet": lambda: engine.generate(controlled),
        "diffusers controlnet": diffusers_call,
    }


def face_calls(
    model: LoadedModel, models: Path, device: DeviceChoice, size: int, steps: int
) -> dict[str, Callable[[], Any]]:
    """The plain job, and the plain job followed by restoring one face in an image of its
    size with a random GFPGAN (detection, crop, the network at 512², the paste)."""
    from pipeline.faces import load_face_restorer, restore_faces
    from tests.face_models import draw_face, gfpgan_state, save_state

    path = save_state(gfpgan_state(), models / "GFPGAN" / "bench-gfpgan.safetensors")
    restorer = load_face_restorer(path, device.device, device.dtype)
    engine = Engine(model, models_dir=models, batching=BatchShape(BatchMode.FIXED, 2))
    job = request(size, steps)
    portrait = Image.new("RGB", (size, size), (60, 60, 60))
    face = draw_face(size // 2)
    portrait.paste(face, (size // 4, size // 4))

    def with_faces() -> Any:
        engine.generate(job)
        restored = restore_faces(portrait, restorer, models)
        assert restored.faces == 1, "the bench's face was not found"
        return restored

    return {"plain": lambda: engine.generate(job), "restore faces": with_faces}


def report_faces(seconds: dict[str, float]) -> None:
    plain, restored = seconds["plain"], seconds["restore faces"]
    print(f"{'job':<26} {'seconds':>8} {'ratio':>7}")
    print(f"{'plain':<26} {plain:>8.3f} {1:>7.2f}")
    print(f"{'with face restoration':<26} {restored:>8.3f} {restored / plain:>7.2f}")


def report_controlnet(seconds: dict[str, float]) -> None:
    plain, controlled = seconds["plain"], seconds["controlnet"]
    theirs = seconds["diffusers controlnet"]
    print(f"{'job':<26} {'seconds':>8} {'ratio':>7}")
    print(f"{'plain':<26} {plain:>8.3f} {1:>7.2f}")
    print(f"{'with ControlNet (canny)':<26} {controlled:>8.3f} {controlled / plain:>7.2f}")
    print(
        f"{'diffusers ControlNet':<26} {theirs:>8.3f} {theirs / plain:>7.2f}"
        f"   plain/easel {theirs / controlled:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tiny", help="tiny or mid (SD 1.5's layout, half width)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sdxl", action="store_true", help="also SDXL 1024² against diffusers")
    args = parser.parse_args()
    quiet_diffusers()
    quiet_libraries(bars=False)
    device = choose_device(args.device, args.dtype)
    name = torch.cuda.get_device_name(device.device) if device.device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {name}")
    print(
        f"sd1 model {args.shape} at {args.size}x{args.size}, {str(device.dtype)[6:]}, "
        f"{args.steps} steps, Euler a, CFG {CFG:g}, one image a job; best of {args.repeats}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models"
        model = load_shape(args.shape, device, Path(scratch))
        calls = controlnet_calls(model, models, device, args.size, args.steps)
        for call in calls.values():
            call()  # kernels, allocator, lazy imports
        report_controlnet(best_times(calls, args.repeats))
        calls = face_calls(model, models, device, args.size, args.steps)
        for call in calls.values():
            call()
        report_faces(best_times(calls, args.repeats))
    if args.sdxl:
        run_sdxl(device, args.repeats)


def run_sdxl(device: DeviceChoice, repeats: int) -> None:
    """SDXL base's architecture at 1024², 20 steps, batch 1: Easel against diffusers."""
    from bench import step

    print("sdxl full at 1024x1024, 20 steps, batch 1:")
    arguments = argparse.Namespace(
        size=1024, steps=20, repeats=repeats, compile="off", rows=2, whole=False, shape="full"
    )
    with tempfile.TemporaryDirectory() as scratch:
        model = load_shape("full", device, Path(scratch), "sdxl")
        step.run(model, Path(scratch) / "full", device, arguments, [1])


if __name__ == "__main__":
    main()
