"""Making a loaded pipeline's steps faster: torch.compile, channels-last, SDPA attention, the
VAE in tiles above an area, and the CPU's thread count.

`accelerate` is applied to a pipeline each time a checkpoint is installed (the first load and
every switch). With everything off it changes nothing a step does, so Easel is never slower
than plain diffusers because of it.

torch.compile compiles the UNet's own `forward` and stores it on the instance. The UNet module
stays what it was (diffusers still sees `unet.config`, `unet.dtype`, and LoRA loading finds its
layers), and pipeline/guidance.py's per-call wrapper, which replaces `unet.forward` for one
batch, calls the compiled forward inside it: only the UNet's own graph is compiled, never the
wrapper's per-step Python. Shapes are static: each distinct input (rows per UNet call: AND
parts and the batch mode set them; latent size; 77 tokens per prompt chunk) compiles once, and
so does each state of the LoRA layers (measured: a newly loaded LoRA file, and the first job
without LoRAs after one, cost one compile each; another weight of a fused set costs none, as
fusing changes the weights in place) and seamless tiling (its circular padding). Past
`recompile_limit` compiled variants torch runs the new ones eagerly instead of failing, while
the variants already compiled stay in use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the settings import this module
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# 1536x1536: the largest image the default limits make (a 1.5x hires fix of 1024x1024) still
# decodes in one piece, exactly as before; a 2x hires fix of 1024x1024 (2048x2048) decodes in
# tiles, where SD 1.5's decoder would otherwise need over 10 GB at fp16 at once.
DEFAULT_VAE_TILE_AREA = 1536 * 1536
DEFAULT_RECOMPILE_LIMIT = 8
_CPU_TOPOLOGY = Path("/sys/devices/system/cpu")


class CompileTarget(StrEnum):
    OFF = "off"
    UNET = "unet"
    UNET_VAE = "unet+vae"

    @property
    def unet(self) -> bool:
        return self is not CompileTarget.OFF

    @property
    def vae(self) -> bool:
        return self is CompileTarget.UNET_VAE


@dataclass(frozen=True)
class Acceleration:
    """How a pipeline is sped up. `channels_last` None: on for CUDA, off elsewhere.
    `vae_tile_area` None: the VAE never works in tiles. `backend`: torch.compile's (tests pass
    "eager" or a counting backend; inductor is the one that makes steps faster)."""

    compile: CompileTarget = CompileTarget.OFF
    channels_last: bool | None = None
    vae_tile_area: int | None = DEFAULT_VAE_TILE_AREA
    backend: str | Callable[..., Any] = "inductor"
    recompile_limit: int = DEFAULT_RECOMPILE_LIMIT

    def wants_channels_last(self, device: torch.device) -> bool:
        if self.channels_last is None:
            return device.type == "cuda"
        return self.channels_last


def accelerate(pipe: Any, settings: Acceleration) -> None:
    """Apply `settings` to a loaded diffusers pipeline, in place; applying it again (another
    engine on the same pipeline) replaces what the first time did."""
    import torch

    unet, vae = pipe.unet, pipe.vae
    use_sdpa(unet)
    use_sdpa(vae)
    if settings.wants_channels_last(pipe.device):
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    tile_vae_above(vae, settings.vae_tile_area)
    if settings.compile.unet:
        # Compiled code of a previous checkpoint would count against the limit; it is freed.
        torch._dynamo.reset()
        bound_recompiles(settings.recompile_limit)
    compile_unet(unet, settings.backend, enabled=settings.compile.unet)
    compile_vae_decoder(vae, settings.backend, enabled=settings.compile.vae)


def use_sdpa(model: nn.Module) -> int:
    """Attention through torch's scaled_dot_product_attention. diffusers 0.42 already gives
    every `Attention` layer AttnProcessor2_0 under torch 2; a layer still on the plain
    AttnProcessor (a model saved with it set) is switched. How many were switched."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = getattr(model, "attn_processors", None)
    if not processors:
        return 0
    plain = [name for name, processor in processors.items() if type(processor) is AttnProcessor]
    if plain:
        model.set_attn_processor(
            {
                name: AttnProcessor2_0() if name in plain else processor
                for name, processor in processors.items()
            }
        )
        log.info("Switched %d attention layers to scaled_dot_product_attention.", len(plain))
    return len(plain)


def tile_vae_above(vae: nn.Module, area: int | None) -> None:
    """The VAE encodes and decodes an image of more than `area` pixels in overlapping tiles
    (diffusers' tiled encode and decode), and any other exactly as before. None: never."""
    for name in ("_decode", "_encode"):
        vae.__dict__.pop(name, None)
    if area is None:
        return
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    kind = type(vae)

    def decode(z: torch.Tensor, return_dict: bool = True) -> Any:
        if z.shape[-2] * z.shape[-1] * factor * factor > area:
            return vae.tiled_decode(z, return_dict=return_dict)
        return kind._decode(vae, z, return_dict=return_dict)

    def encode(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] > area:
            return vae._tiled_encode(x)
        return kind._encode(vae, x)

    vae._decode = decode
    vae._encode = encode


def bound_recompiles(limit: int) -> None:
    """At most `limit` compiled variants of a function; past that the new ones run eagerly."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.config.fail_on_recompile_limit_hit = False


def compile_unet(unet: nn.Module, backend: str | Callable[..., Any], enabled: bool) -> None:
    """The UNet's own forward, compiled with static shapes, set on the instance (see the module
    docstring); not enabled: the class's forward again."""
    import torch

    unet.__dict__.pop("forward", None)
    if enabled:
        unet.forward = torch.compile(unet.forward, backend=backend, dynamic=False)


def compile_vae_decoder(vae: nn.Module, backend: str | Callable[..., Any], enabled: bool) -> None:
    """The VAE's decoder network compiled (whole images, or tiles above the tiling area)."""
    decoder = vae.decoder
    decoder._compiled_call_impl = None
    if enabled:
        decoder.compile(backend=backend, dynamic=False)


def is_compiled(unet: nn.Module) -> bool:
    """Whether `unet`'s forward is the compiled one `compile_unet` set."""
    return "forward" in unet.__dict__ and hasattr(
        unet.__dict__["forward"], "_torchdynamo_orig_callable"
    )


# The CPU's threads


def apply_cpu_threads(configured: int | None, device: torch.device) -> int | None:
    """Set torch's intra-op threads for a CPU run: `configured` (EASEL_CPU_THREADS), else
    OMP_NUM_THREADS when the user set it (torch has read it already), else one per physical
    core this process may run on. The count set (None: not on the CPU, or left to
    OMP_NUM_THREADS)."""
    import torch

    if device.type != "cpu":
        return None
    if configured is None and os.environ.get("OMP_NUM_THREADS", "").strip():
        log.info("CPU threads: %d, from OMP_NUM_THREADS.", torch.get_num_threads())
        return None
    threads = configured or fitted_threads(allowed_cpus(), core_of)
    torch.set_num_threads(threads)
    log.info("CPU threads: %d.", threads)
    return threads


def fitted_threads(cpus: Iterable[int], core: Callable[[int], tuple[int, int] | None]) -> int:
    """One thread per physical core among `cpus` (hyperthreads of one core count once);
    `core(cpu)` is that CPU's (package, core) or None when unknown, which counts it alone."""
    cores: set[tuple[int, int] | tuple[str, int]] = set()
    for cpu in cpus:
        cores.add(core(cpu) or ("cpu", cpu))
    return max(1, len(cores))


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity; every CPU where that is not known)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def core_of(cpu: int, root: Path = _CPU_TOPOLOGY) -> tuple[int, int] | None:
    """(physical package, core id) of a logical CPU from Linux's sysfs; None elsewhere."""
    topology = root / f"cpu{cpu}" / "topology"
    try:
        package = int((topology / "physical_package_id").read_text())
        core = int((topology / "core_id").read_text())
    except (OSError, ValueError):
        return None
    return package, core


# Warm-up


@dataclass(frozen=True)
class WarmUpReport:
    shapes: tuple[tuple[int, int, int], ...]  # (width, height, images) of each run
    seconds: float


WARM_UP_STEPS = 2  # the first step compiles, the second runs what was compiled


def warm_up(
    generate: Callable[[Any], Any],
    sizes: Iterable[tuple[int, int]],
    image_counts: Iterable[int] = (1,),
    recompile_limit: int = DEFAULT_RECOMPILE_LIMIT,
) -> WarmUpReport:
    """Run a short generation at each size and image count, so that the compiling happens now
    and not in a user's first job; logs (INFO) how long it took."""
    import time

    from pipeline.errors import InvalidRequestError
    from pipeline.request import GenerationRequest

    shapes = tuple(
        dict.fromkeys((width, height, count) for width, height in sizes for count in image_counts)
    )
    if len(shapes) > recompile_limit:
        log.warning(
            "Warming up %d shapes with room for %d compiled variants: the last ones run "
            "uncompiled.",
            len(shapes),
            recompile_limit,
        )
    started = time.perf_counter()
    done = []
    for width, height, count in shapes:
        request = GenerationRequest(
            prompt="warm-up",
            seeds=tuple(range(count)),
            width=width,
            height=height,
            steps=WARM_UP_STEPS,
        )
        try:
            generate(request)
        except InvalidRequestError as error:  # a size above EASEL_MAX_AREA: no job makes it
            log.warning("Not warming up %dx%d x%d: %s", width, height, count, error)
            continue
        done.append((width, height, count))
    report = WarmUpReport(tuple(done), time.perf_counter() - started)
    log.info(
        "Compiled and warmed up %s in %.1f s.",
        ", ".join(f"{w}x{h} x{n}" for w, h, n in report.shapes) or "nothing",
        report.seconds,
    )
    return report
