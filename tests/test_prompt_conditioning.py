"""The prompt language reaching the UNet: chunks, BREAK, weights, editing, AND."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.prompts.encoding import PromptEncoder
from pipeline.request import GenerationRequest
from pipeline.samplers import make_scheduler, resolve_sampler


def request(prompt: str, **overrides: object) -> GenerationRequest:
    values: dict[str, object] = {
        "prompt": prompt,
        "steps": 4,
        "seeds": (11,),
        "width": 64,
        "height": 64,
    }
    values.update(overrides)
    return GenerationRequest(**values)  # type: ignore[arg-type]


def image(engine: Engine, prompt: str, **overrides: object) -> np.ndarray:
    result = engine.generate(request(prompt, **overrides))
    return np.asarray(result.images[0].image).astype(np.int16)


@pytest.fixture(scope="module")
def encoder(engine: Engine) -> PromptEncoder:
    return PromptEncoder(engine.pipelines[0], clip_skip=1)


def test_a_plain_prompt_is_exactly_plain_diffusers(engine: Engine) -> None:
    pipe = engine.pipelines[0]
    ours = image(engine, "a castle on a hill", negative_prompt="fog", cfg_scale=7.0)
    pipe.scheduler = make_scheduler(resolve_sampler("Euler a"), dict(pipe.scheduler.config))
    theirs = pipe(
        prompt="a castle on a hill",
        negative_prompt="fog",
        num_inference_steps=4,
        guidance_scale=7.0,
        width=64,
        height=64,
        generator=[torch.Generator("cpu").manual_seed(11)],
    ).images[0]
    assert np.array_equal(ours, np.asarray(theirs).astype(np.int16))


def test_long_prompts_split_into_75_token_chunks(encoder: PromptEncoder) -> None:
    tokenizer = encoder.pipe.tokenizer
    prompt = " ".join(["castle"] * 160)
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == 160
    chunks = encoder.chunks(prompt)
    assert [len(chunk.tokens) for chunk in chunks] == [75, 75, 10]
    assert encoder.encode(prompt).shape[1] == 3 * 77


def test_a_full_chunk_breaks_at_a_recent_comma(encoder: PromptEncoder) -> None:
    prompt = " ".join(["castle"] * 70) + ", " + " ".join(["tower"] * 10)
    chunks = encoder.chunks(prompt)
    comma = encoder.pipe.tokenizer(",", add_special_tokens=False).input_ids[0]
    assert len(chunks[0].tokens) == 71 and chunks[0].tokens[-1] == comma
    assert len(chunks[1].tokens) == 10


def test_break_starts_a_new_chunk(encoder: PromptEncoder) -> None:
    chunks = encoder.chunks("a red castle BREAK a blue sky")
    assert len(chunks) == 2
    cat = encoder.pipe.tokenizer("a red castle", add_special_tokens=False).input_ids
    assert chunks[0].tokens == cat


def test_emphasis_scales_tokens_and_weight_one_changes_nothing(engine: Engine) -> None:
    plain = image(engine, "a castle")
    assert np.array_equal(plain, image(engine, "a (castle:1.0)"))
    assert not np.array_equal(plain, image(engine, "a (castle:1.6)"))
    assert not np.array_equal(plain, image(engine, "a [castle]"))


def test_weights_keep_the_chunk_mean(encoder: PromptEncoder) -> None:
    plain = encoder.encode("a castle on a hill")
    weighted = encoder.encode("a (castle:1.5) on a hill")
    assert torch.allclose(plain.float().mean(), weighted.float().mean(), atol=1e-6)
    assert not torch.equal(plain, weighted)


def test_positive_and_negative_are_padded_to_the_same_chunks(engine: Engine) -> None:
    long_prompt = " ".join(["castle"] * 100)
    result = engine.generate(request(long_prompt, negative_prompt="fog"))
    assert result.images[0].image.size == (64, 64)
    result = engine.generate(request("castle", negative_prompt=long_prompt))
    assert result.images[0].image.size == (64, 64)


def test_clip_skip_applies_to_every_chunk(engine: Engine) -> None:
    skipping = PromptEncoder(engine.pipelines[0], clip_skip=2)
    first, second = " ".join(["castle"] * 75), " ".join(["tower"] * 5)
    both = skipping.encode(f"{first} BREAK {second}")
    assert torch.equal(both[:, :77], skipping.encode(first))
    assert torch.equal(both[:, 77:], skipping.encode(second))
    assert not torch.equal(both[:, 77:], PromptEncoder(engine.pipelines[0], 1).encode(second))


def test_prompt_editing_switches_during_sampling(engine: Engine) -> None:
    cat, dog = image(engine, "a cat", steps=6), image(engine, "a dog", steps=6)
    edited = image(engine, "a [cat:dog:0.25]", steps=6)  # a cat for 2 steps, then a dog
    assert not np.array_equal(edited, cat) and not np.array_equal(edited, dog)
    assert np.array_equal(image(engine, "a [cat:dog:100]", steps=6), cat)
    alternating = image(engine, "a [cat|dog]", steps=6)
    assert not np.array_equal(alternating, cat) and not np.array_equal(alternating, edited)


def test_prompt_editing_reaches_the_negative_prompt(engine: Engine) -> None:
    fog = image(engine, "a castle", negative_prompt="fog")
    rain = image(engine, "a castle", negative_prompt="rain")
    edited = image(engine, "a castle", negative_prompt="[fog:rain:1]")  # rain after step 1
    assert not np.array_equal(fog, edited) and not np.array_equal(rain, edited)


def test_and_combines_the_parts(engine: Engine) -> None:
    cat, dog = image(engine, "a cat"), image(engine, "a dog")
    both = image(engine, "a cat AND a dog")
    assert not np.array_equal(both, cat) and not np.array_equal(both, dog)
    only_cat = image(engine, "a cat :1 AND a dog :0")
    assert np.abs(only_cat - cat).max() <= 2  # u + (c - u) rounds, but draws the cat
    assert not np.array_equal(image(engine, "a cat :0.5 AND a dog :1.5"), both)


def test_edited_and_composed_batches_stay_exact(engine: Engine) -> None:
    prompt = "a [cat:dog:0.5] AND a castle :0.7"
    batch = engine.generate(request(prompt, seeds=(21, 22)))
    alone = engine.generate(request(prompt, seeds=(22,)))
    assert np.array_equal(np.asarray(batch.images[1].image), np.asarray(alone.images[0].image))


def test_an_unknown_lora_tag_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="Unknown LoRA 'pixel-style'"):
        engine.generate(request("a castle <lora:pixel-style:0.8>"))


def test_a_negative_weight_is_not_a_break(encoder: PromptEncoder) -> None:
    chunks = encoder.chunks("a photo, (ugly:-1), cat")
    assert len(chunks) == 1
    ugly = encoder.pipe.tokenizer("ugly", add_special_tokens=False).input_ids[0]
    assert ugly in chunks[0].tokens
    assert chunks[0].multipliers[chunks[0].tokens.index(ugly)] == -1


def test_a_comma_further_back_than_20_tokens_does_not_move_words(encoder: PromptEncoder) -> None:
    prompt = " ".join(["castle"] * 50) + ", " + " ".join(["tower"] * 40)
    chunks = encoder.chunks(prompt)
    assert [len(chunk.tokens) for chunk in chunks] == [75, 16]


def test_huge_weights_stay_finite(encoder: PromptEncoder) -> None:
    assert torch.isfinite(encoder.encode("a (castle:50000) on a hill")).all()


def test_too_many_chunks_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="needs 9 chunks of 75 tokens"):
        engine.prepare(request("castle " + "BREAK castle " * 8))
