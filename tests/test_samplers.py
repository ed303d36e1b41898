"""Tests for pipeline.samplers: A1111 sampler names to diffusers schedulers."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
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

from pipeline.errors import InvalidRequestError, UnknownSamplerError
from pipeline.samplers import SAMPLER_NAMES, make_scheduler, resolve_sampler

pytestmark = pytest.mark.heavy  # started first: see conftest.py

KARRAS_NAMES = tuple(name for name in SAMPLER_NAMES if name.endswith(" Karras"))
# Samplers whose diffusers class takes use_karras_sigmas (diffusers 0.42), so "Karras" applies.
TAKES_KARRAS = (
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2M",
    "DPM++ 2M SDE",
    "DPM++ SDE",
    "UniPC",
)
NO_KARRAS = ("Euler a", "DDIM", "PLMS", "LCM")


def _karras(on: bool) -> dict[str, object]:
    return {"use_karras_sigmas": on, "use_exponential_sigmas": False, "use_beta_sigmas": False}


EXPECTED: dict[str, tuple[type[SchedulerMixin], dict[str, object]]] = {
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Euler": (EulerDiscreteScheduler, _karras(False)),
    "LMS": (LMSDiscreteScheduler, _karras(False)),
    "LMS Karras": (LMSDiscreteScheduler, _karras(True)),
    "Heun": (HeunDiscreteScheduler, _karras(False)),
    "DPM2": (KDPM2DiscreteScheduler, _karras(False)),
    "DPM2 a": (KDPM2AncestralDiscreteScheduler, _karras(False)),
    "DPM2 Karras": (KDPM2DiscreteScheduler, _karras(True)),
    "DPM2 a Karras": (KDPM2AncestralDiscreteScheduler, _karras(True)),
    "DPM++ 2M": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, **_karras(False)},
    ),
    "DPM++ 2M Karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, **_karras(True)},
    ),
    "DPM++ 2M SDE": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **_karras(False)},
    ),
    "DPM++ 2M SDE Karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **_karras(True)},
    ),
    "DPM++ SDE": (
        DPMSolverSinglestepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, **_karras(False)},
    ),
    "DPM++ SDE Karras": (
        DPMSolverSinglestepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, **_karras(True)},
    ),
    "DDIM": (DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}),
    "PLMS": (PNDMScheduler, {"skip_prk_steps": True, "set_alpha_to_one": False}),
    "UniPC": (UniPCMultistepScheduler, _karras(False)),
    "LCM": (LCMScheduler, {}),
}
# Karras pairings that resolve (A1111 1.9+ schedule types) but are not in A1111's sampler list.
UNLISTED: dict[str, tuple[type[SchedulerMixin], dict[str, object]]] = {
    "Euler Karras": (EulerDiscreteScheduler, _karras(True)),
    "Heun Karras": (HeunDiscreteScheduler, _karras(True)),
    "UniPC Karras": (UniPCMultistepScheduler, _karras(True)),
}
ALL_EXPECTED = EXPECTED | UNLISTED
ALL_NAMES = tuple(ALL_EXPECTED)


def _sd15_scheduler(**changes: Any) -> PNDMScheduler:
    """The SD 1.5 scheduler as the pipeline would load it, built in code."""
    settings: dict[str, Any] = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "skip_prk_steps": True,
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "timestep_spacing": "leading",
        **changes,
    }
    return PNDMScheduler(**settings)


@pytest.fixture
def base() -> PNDMScheduler:
    return _sd15_scheduler()


def test_sampler_names_are_the_a1111_names_in_order() -> None:
    assert tuple(EXPECTED) == SAMPLER_NAMES
    assert len(SAMPLER_NAMES) == 19
    assert not set(UNLISTED) & set(SAMPLER_NAMES)


def test_karras_samplers_are_exactly_the_classes_that_take_karras_sigmas() -> None:
    # Catches a diffusers upgrade that adds (or drops) the flag on one of the classes.
    for name in TAKES_KARRAS + NO_KARRAS:
        scheduler_class = resolve_sampler(name).scheduler_class
        parameters = inspect.signature(scheduler_class.__init__).parameters
        assert ("use_karras_sigmas" in parameters) == (name in TAKES_KARRAS), name
    bases = {name for name in SAMPLER_NAMES if not name.endswith(" Karras")}
    assert set(TAKES_KARRAS) | set(NO_KARRAS) == bases
    assert {name.removesuffix(" Karras") for name in KARRAS_NAMES + tuple(UNLISTED)} == set(
        TAKES_KARRAS
    )


@pytest.mark.parametrize("name", ALL_NAMES)
def test_each_name_resolves_to_the_expected_class(name: str) -> None:
    spec = resolve_sampler(name)
    expected_class, _ = ALL_EXPECTED[name]
    assert spec.scheduler_class is expected_class
    assert spec.name == name


@pytest.mark.parametrize("name", ALL_NAMES)
def test_each_name_splits_into_base_name_and_schedule_type(name: str) -> None:
    spec = resolve_sampler(name)
    if name.endswith(" Karras"):
        assert (spec.base_name, spec.schedule_type) == (name.removesuffix(" Karras"), "Karras")
    else:
        assert (spec.base_name, spec.schedule_type) == (name, None)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_built_scheduler_has_the_expected_class_and_flags(name: str, base: PNDMScheduler) -> None:
    expected_class, expected_flags = ALL_EXPECTED[name]
    scheduler = make_scheduler(resolve_sampler(name), base.config)
    assert type(scheduler) is expected_class
    actual = {key: scheduler.config[key] for key in expected_flags}
    assert actual == expected_flags


@pytest.mark.parametrize("name", ALL_NAMES)
def test_overrides_are_constructor_arguments_of_the_class(name: str) -> None:
    # A misspelt key would be dropped by from_config with only a log line.
    spec = resolve_sampler(name)
    parameters = inspect.signature(spec.scheduler_class.__init__).parameters
    assert [key for key, _ in spec.config_overrides if key not in parameters] == []


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("euler a", "Euler a"),
        ("Euler A", "Euler a"),
        ("EULER", "Euler"),
        ("  dpm++   2m  KARRAS ", "DPM++ 2M Karras"),
        ("dpm++ 2m sde karras", "DPM++ 2M SDE Karras"),
        ("euler  KARRAS", "Euler Karras"),
        ("UNIPC karras", "UniPC Karras"),
        ("unipc", "UniPC"),
        ("plms\t", "PLMS"),
    ],
)
def test_names_match_case_insensitively_ignoring_extra_spaces(typed: str, canonical: str) -> None:
    assert resolve_sampler(typed) == resolve_sampler(canonical)
    assert resolve_sampler(typed).name == canonical


@pytest.mark.parametrize("base_name", TAKES_KARRAS)
@pytest.mark.parametrize("schedule_type", ["Karras", "karras", " KARRAS "])
def test_karras_schedule_type_equals_the_combined_name(base_name: str, schedule_type: str) -> None:
    spec = resolve_sampler(base_name, schedule_type)
    assert spec == resolve_sampler(base_name + " Karras")
    assert (spec.name, spec.base_name, spec.schedule_type) == (
        base_name + " Karras",
        base_name,
        "Karras",
    )
    assert dict(spec.config_overrides)["use_karras_sigmas"] is True
    assert dict(resolve_sampler(base_name).config_overrides)["use_karras_sigmas"] is False


def test_euler_with_karras_schedule_type() -> None:
    spec = resolve_sampler("Euler", "Karras")
    assert spec.name == "Euler Karras"
    assert spec.base_name == "Euler"
    assert spec.schedule_type == "Karras"
    assert spec.scheduler_class is EulerDiscreteScheduler
    assert dict(spec.config_overrides)["use_karras_sigmas"] is True


@pytest.mark.parametrize("base_name", TAKES_KARRAS)
def test_karras_schedule_changes_the_timesteps(base_name: str, base: PNDMScheduler) -> None:
    plain = make_scheduler(resolve_sampler(base_name), base.config)
    karras = make_scheduler(resolve_sampler(base_name, "Karras"), base.config)
    plain.set_timesteps(10)
    karras.set_timesteps(10)
    assert karras.config.use_karras_sigmas is True
    assert plain.config.use_karras_sigmas is False
    assert plain.timesteps.shape == karras.timesteps.shape
    assert not torch.allclose(plain.timesteps.float(), karras.timesteps.float())


@pytest.mark.parametrize("schedule_type", [None, "", "Automatic", "automatic"])
def test_automatic_schedule_keeps_the_samplers_default(schedule_type: str | None) -> None:
    assert resolve_sampler("DPM++ 2M", schedule_type).schedule_type is None
    assert resolve_sampler("DPM++ 2M Karras", schedule_type).schedule_type == "Karras"
    assert resolve_sampler("Euler a", schedule_type).name == "Euler a"
    assert resolve_sampler("Euler", schedule_type).name == "Euler"
    assert resolve_sampler("Euler Karras", schedule_type).schedule_type == "Karras"


def test_karras_schedule_on_a_combined_karras_name_is_accepted() -> None:
    assert resolve_sampler("DPM2 a Karras", "Karras") == resolve_sampler("DPM2 a Karras")


@pytest.mark.parametrize("name", NO_KARRAS)
def test_karras_schedule_on_a_sampler_without_one_is_refused(name: str) -> None:
    with pytest.raises(UnknownSamplerError) as caught:
        resolve_sampler(name, "Karras")
    message = str(caught.value)
    assert repr(name) in message
    assert "Automatic" in message
    assert message.endswith(", ".join(TAKES_KARRAS) + ".")
    assert "\n" not in message


@pytest.mark.parametrize("name", NO_KARRAS)
def test_combined_karras_name_of_a_sampler_without_one_is_unknown(name: str) -> None:
    with pytest.raises(UnknownSamplerError, match="Unknown sampler"):
        resolve_sampler(name + " Karras")


def test_unknown_schedule_type_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(UnknownSamplerError, match=r"'Exponential'.*Automatic, Karras"):
        resolve_sampler("DPM++ 2M", "Exponential")


@pytest.mark.parametrize(
    ("typed", "suggestion"),
    [
        ("DPM++2M Karras", "DPM++ 2M Karras"),
        ("eular a", "Euler a"),
        ("DPM++ 2M Karas", "DPM++ 2M Karras"),
        ("Uni PC", "UniPC"),
        ("Heun Karas", "Heun Karras"),
    ],
)
def test_near_miss_suggests_the_closest_name(typed: str, suggestion: str) -> None:
    with pytest.raises(UnknownSamplerError) as caught:
        resolve_sampler(typed)
    message = str(caught.value)
    assert repr(typed) in message
    assert f"Did you mean {suggestion!r}?" in message


def test_unknown_name_lists_every_valid_name_on_one_line() -> None:
    with pytest.raises(UnknownSamplerError) as caught:
        resolve_sampler("banana\nsplit")
    message = str(caught.value)
    assert "\n" not in message
    assert "Did you mean" not in message
    assert "Valid samplers: " + ", ".join(SAMPLER_NAMES) in message


def test_unknown_sampler_error_is_an_invalid_request_and_a_value_error() -> None:
    with pytest.raises(InvalidRequestError):
        resolve_sampler("DPM++ 3M")
    with pytest.raises(ValueError):
        resolve_sampler("")


def test_long_unknown_names_are_cut_in_the_message() -> None:
    with pytest.raises(UnknownSamplerError) as caught:
        resolve_sampler("x" * 5000)
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize("name", ALL_NAMES)
def test_make_scheduler_builds_independent_schedulers_and_leaves_the_base_alone(
    name: str, base: PNDMScheduler
) -> None:
    base.set_timesteps(30)  # the pipeline's scheduler holds the state of its own last run
    config_before = dict(base.config)
    timesteps_before = base.timesteps.clone()
    spec = resolve_sampler(name)

    first = make_scheduler(spec, base.config)
    second = make_scheduler(spec, base.config)
    first.set_timesteps(20)
    first_timesteps = first.timesteps.clone()
    second.set_timesteps(7)  # one job's set_timesteps must not reach another job's scheduler

    assert first.num_inference_steps == 20
    assert torch.equal(first.timesteps, first_timesteps)
    assert second.num_inference_steps == 7
    assert len(second.timesteps) < len(first.timesteps)
    assert dict(base.config) == config_before
    assert base.num_inference_steps == 30
    assert torch.equal(base.timesteps, timesteps_before)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_prediction_type_of_the_base_config_is_kept(name: str) -> None:
    base = _sd15_scheduler(prediction_type="v_prediction")
    scheduler = make_scheduler(resolve_sampler(name), base.config)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == pytest.approx(0.012)


def test_base_config_with_karras_sigmas_does_not_leak_into_a_plain_sampler() -> None:
    base = DPMSolverMultistepScheduler(use_karras_sigmas=True, algorithm_type="sde-dpmsolver++")
    scheduler = make_scheduler(resolve_sampler("DPM++ 2M"), base.config)
    assert scheduler.config.use_karras_sigmas is False
    assert scheduler.config.algorithm_type == "dpmsolver++"


@pytest.mark.parametrize(
    "name", ["Euler a", "Euler", "Euler Karras", "DPM++ 2M", "DPM2 a Karras", "UniPC"]
)
def test_k_diffusion_samplers_start_at_the_last_training_step_like_a1111(
    name: str, base: PNDMScheduler
) -> None:
    scheduler = make_scheduler(resolve_sampler(name), base.config)
    scheduler.set_timesteps(20)
    assert scheduler.config.timestep_spacing == "linspace"
    assert float(scheduler.timesteps[0]) == pytest.approx(999, abs=0.5)


@pytest.mark.parametrize("name", ["DDIM", "PLMS", "LCM"])
def test_compvis_samplers_keep_the_leading_spacing(name: str, base: PNDMScheduler) -> None:
    scheduler = make_scheduler(resolve_sampler(name), base.config)
    assert scheduler.config.timestep_spacing == "leading"


def test_trailing_spacing_from_the_model_is_kept() -> None:
    base = _sd15_scheduler(timestep_spacing="trailing")
    scheduler = make_scheduler(resolve_sampler("Euler a"), base.config)
    assert scheduler.config.timestep_spacing == "trailing"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_a_short_denoising_loop_runs_and_stays_finite(name: str, base: PNDMScheduler) -> None:
    scheduler = make_scheduler(resolve_sampler(name), base.config)
    scheduler.set_timesteps(6)
    generator = torch.Generator().manual_seed(0)
    # As diffusers pipelines do: only the stochastic schedulers take a generator.
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": generator} if takes_generator else {}
    sample = torch.randn(1, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, timestep)
        fake_noise_prediction = 0.1 * model_input
        sample = scheduler.step(fake_noise_prediction, timestep, sample, **extra).prev_sample
    assert torch.isfinite(sample).all()
