"""A1111 sampler names mapped to diffusers schedulers.

The mapping follows the A1111/k-diffusion table in the diffusers docs (API > Schedulers >
Overview), checked against the scheduler classes of the installed diffusers.
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from pipeline.errors import InvalidRequestError, ModelLoadError
from pipeline.sampler_names import (
    ALL_NAMES,
    KARRAS,
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    normalize_sampler,
    sampler_name,
    split_schedule,
)

__all__ = ["KARRAS", "SAMPLER_NAMES", "SCHEDULE_TYPES", "SamplerSpec", "make_scheduler"]
__all__ += ["resolve_sampler", "sampler_name", "scheduler_config_from_file", "scheduler_for_steps"]

Overrides = tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class SamplerSpec:
    """One resolved A1111 sampler: what to build, and what to write in the infotext."""

    name: str  # canonical A1111 name, " Karras" included ("DPM++ 2M Karras")
    base_name: str  # the name without its schedule ("DPM++ 2M"), for `Sampler:` in the infotext
    schedule_type: str | None  # "Karras", or None for the sampler's default schedule
    scheduler_class: type[SchedulerMixin]
    config_overrides: Overrides  # applied over the pipeline's own scheduler config


@dataclass(frozen=True)
class _Sampler:
    scheduler_class: type[SchedulerMixin]
    overrides: Overrides = ()


_DPM_PP_2M: Overrides = (
    ("algorithm_type", "dpmsolver++"),
    ("solver_order", 2),
    ("solver_type", "midpoint"),
)
_DPM_PP_2M_SDE: Overrides = (
    ("algorithm_type", "sde-dpmsolver++"),
    ("solver_order", 2),
    ("solver_type", "midpoint"),
)
# The docs map "DPM++ SDE" to DPMSolverSinglestepScheduler. DPMSolverSDEScheduler (the direct
# k-diffusion port) needs torchsde, which is not a dependency of this project.
# lower_order_final=True is what set_timesteps() would force anyway (with a warning per job).
_DPM_PP_SDE: Overrides = (
    ("algorithm_type", "dpmsolver++"),
    ("solver_order", 2),
    ("lower_order_final", True),
)
# A1111's DDIM and PLMS are the CompVis samplers: latents are never clipped and the last step
# uses alphas_cumprod[0]. DDIMScheduler defaults to clip_sample=True, set_alpha_to_one=True.
_DDIM: Overrides = (("clip_sample", False), ("set_alpha_to_one", False))
_PLMS: Overrides = (("skip_prk_steps", True), ("set_alpha_to_one", False))

_SAMPLERS: dict[str, _Sampler] = {
    "Euler a": _Sampler(EulerAncestralDiscreteScheduler),
    "Euler": _Sampler(EulerDiscreteScheduler),
    "LMS": _Sampler(LMSDiscreteScheduler),
    "Heun": _Sampler(HeunDiscreteScheduler),
    "DPM2": _Sampler(KDPM2DiscreteScheduler),
    "DPM2 a": _Sampler(KDPM2AncestralDiscreteScheduler),
    "DPM++ 2M": _Sampler(DPMSolverMultistepScheduler, _DPM_PP_2M),
    "DPM++ 2M SDE": _Sampler(DPMSolverMultistepScheduler, _DPM_PP_2M_SDE),
    "DPM++ SDE": _Sampler(DPMSolverSinglestepScheduler, _DPM_PP_SDE),
    "DDIM": _Sampler(DDIMScheduler, _DDIM),
    "PLMS": _Sampler(PNDMScheduler, _PLMS),
    "UniPC": _Sampler(UniPCMultistepScheduler),
    "LCM": _Sampler(LCMScheduler),
}

# A1111 runs these with its "Automatic" schedule, k-diffusion's get_sigmas(): t from 999 down to 0,
# which is diffusers' "linspace" (also these classes' own default). SD configs say "leading" (for
# PNDM/DDIM), which would start at t=951 for 20 steps, so that one value is swapped out. "trailing"
# is kept: models that ship it (zero-SNR, distilled) depend on it.
_LINSPACE_OVER_LEADING: frozenset[type[SchedulerMixin]] = frozenset(
    {
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        LMSDiscreteScheduler,
        HeunDiscreteScheduler,
        KDPM2DiscreteScheduler,
        KDPM2AncestralDiscreteScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    }
)


_SIGMA_FLAGS: tuple[str, ...] = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def _accepted_sigma_flags(scheduler_class: type[SchedulerMixin]) -> tuple[str, ...]:
    parameters = inspect.signature(scheduler_class.__init__).parameters
    return tuple(flag for flag in _SIGMA_FLAGS if flag in parameters)


def _takes_karras(sampler: _Sampler) -> bool:
    return "use_karras_sigmas" in _accepted_sigma_flags(sampler.scheduler_class)


def _sigma_flags(scheduler_class: type[SchedulerMixin], karras: bool) -> Overrides:
    # Pinned both ways so a pipeline config that ships Karras sigmas can't leak into "DPM++ 2M".
    # Only the flags the class takes: from_config would drop any other with just a log line.
    return tuple(
        (flag, karras and flag == "use_karras_sigmas")
        for flag in _accepted_sigma_flags(scheduler_class)
    )


def _build_spec(name: str) -> SamplerSpec:
    base_name, schedule_type = split_schedule(name)
    sampler = _SAMPLERS[base_name]
    overrides = sampler.overrides + _sigma_flags(sampler.scheduler_class, schedule_type == KARRAS)
    return SamplerSpec(
        name=name,
        base_name=base_name,
        schedule_type=schedule_type,
        scheduler_class=sampler.scheduler_class,
        config_overrides=overrides,
    )


def karras_bases_of_classes() -> tuple[str, ...]:
    """The samplers whose scheduler class takes Karras sigmas (sampler_names.KARRAS_BASES)."""
    return tuple(name for name, sampler in _SAMPLERS.items() if _takes_karras(sampler))


_SPECS: dict[str, SamplerSpec] = {normalize_sampler(name): _build_spec(name) for name in ALL_NAMES}


def resolve_sampler(name: str, schedule_type: str | None = None) -> SamplerSpec:
    """The scheduler to build for an A1111 sampler name (see `sampler_name`)."""
    return _SPECS[normalize_sampler(sampler_name(name, schedule_type))]


def _spacing_override(spec: SamplerSpec, base_config: Mapping[str, Any]) -> Overrides:
    if spec.scheduler_class not in _LINSPACE_OVER_LEADING:
        return ()
    if base_config.get("timestep_spacing") != "leading":
        return ()
    return (("timestep_spacing", "linspace"),)


def make_scheduler(spec: SamplerSpec, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """Builds a new scheduler for one job from the pipeline's scheduler config.

    The model-defining values of `base_config` (betas, prediction_type, ...) carry over; the
    pipeline's own scheduler object is never touched, so jobs can use different samplers.
    """
    key = (spec.name, json.dumps(dict(base_config), sort_keys=True, default=str))
    with _BUILT_LOCK:
        built = _BUILT.get(key)
        if built is not None:
            _BUILT.move_to_end(key)
    if built is None:
        built = _build_scheduler(spec, base_config)
        with _BUILT_LOCK:
            _BUILT[key] = built
            while len(_BUILT) > _BUILT_KEPT:
                _BUILT.popitem(last=False)
    return copy.deepcopy(built)


# Schedulers built once per sampler and model config, copied for each job: some build tables
# over all 1,000 training steps in their constructor (DPM2's take a second on a slow CPU).
_BUILT: OrderedDict[tuple[str, str], SchedulerMixin] = OrderedDict()
_BUILT_LOCK = threading.Lock()
_BUILT_KEPT = 64


def _build_scheduler(spec: SamplerSpec, base_config: Mapping[str, Any]) -> SchedulerMixin:
    overrides = dict(spec.config_overrides + _spacing_override(spec, base_config))
    # A copy, so that nothing from_config does can reach the caller's mapping.
    scheduler = spec.scheduler_class.from_config(dict(base_config), **overrides)
    if not isinstance(scheduler, SchedulerMixin):
        raise TypeError(f"{spec.scheduler_class.__name__}.from_config gave {type(scheduler)}")
    return scheduler


def scheduler_for_steps(
    spec: SamplerSpec, base_config: Mapping[str, Any], steps: int
) -> SchedulerMixin:
    """A job's scheduler (`make_scheduler`) with its timesteps set for `steps`; a sampler that
    cannot run that many (LCM runs at most its original 50) is a clear InvalidRequestError."""
    scheduler = make_scheduler(spec, base_config)
    try:
        scheduler.set_timesteps(steps)
    except ValueError as error:
        raise InvalidRequestError(
            f"{spec.name} cannot run {steps} steps: {error}",
            ko=f"{spec.name} 샘플러로는 {steps}단계를 실행할 수 없습니다. 단계 수를 바꿔 주세요.",
        ) from None
    return scheduler


def scheduler_config_from_file(class_name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The config a pipeline's scheduler holds once loaded from `config` (a checkpoint's
    scheduler_config.json) as the scheduler class `class_name`: what from_pretrained makes of
    the file, its class's defaults filled in. For checks without the loaded pipeline."""
    import diffusers

    scheduler_class = getattr(diffusers, class_name, None)
    if not isinstance(scheduler_class, type) or not issubclass(scheduler_class, SchedulerMixin):
        raise ModelLoadError(f"{class_name!r} is not a diffusers scheduler.")
    return dict(scheduler_class.from_config(dict(config)).config)
