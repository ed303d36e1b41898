"""The torch-free sampler names agree with the diffusers scheduler classes they map to."""

from __future__ import annotations

import pytest

from pipeline.errors import UnknownSamplerError
from pipeline.sampler_names import KARRAS_BASES, resolve_sampler_name, sampler_name
from pipeline.samplers import karras_bases_of_classes, resolve_sampler


def test_the_karras_list_matches_what_the_scheduler_classes_take() -> None:
    assert karras_bases_of_classes() == KARRAS_BASES


@pytest.mark.parametrize(
    ("typed", "schedule", "canonical"),
    [("dpm++ 2m", "Karras", "DPM++ 2M Karras"), ("  euler   a ", None, "Euler a")],
)
def test_names_resolve_the_same_with_and_without_schedulers(
    typed: str, schedule: str | None, canonical: str
) -> None:
    assert sampler_name(typed, schedule) == canonical
    assert resolve_sampler(typed, schedule).name == canonical
    assert resolve_sampler_name(typed, schedule).base_name == resolve_sampler(typed).base_name


def test_a_typo_gets_a_suggestion_without_loading_diffusers() -> None:
    with pytest.raises(UnknownSamplerError, match="Did you mean 'DPM\\+\\+ 2M'"):
        sampler_name("DPM++ 2N")
