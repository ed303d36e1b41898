"""Turning prompts into the text-encoder embeddings the UNet is conditioned on.

The engine encodes prompts itself rather than through diffusers' `encode_prompt`, whose
`clip_skip` path reaches for `text_encoder.text_model`, which transformers 5 no longer has.
Clip skip uses A1111's numbering: 1 is the last layer, 2 the penultimate, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline


@dataclass(frozen=True)
class PromptEmbeddings:
    """Conditioning for a batch: one row per image, positive and negative of equal shape."""

    positive: torch.Tensor
    negative: torch.Tensor

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"prompt_embeds": self.positive, "negative_prompt_embeds": self.negative}


def max_clip_skip(pipe: DiffusionPipeline) -> int:
    return int(pipe.text_encoder.config.num_hidden_layers)


@torch.no_grad()
def encode_text(pipe: DiffusionPipeline, texts: list[str], clip_skip: int) -> torch.Tensor:
    tokenizer = pipe.tokenizer
    encoder = pipe.text_encoder
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    input_ids = tokens.input_ids.to(encoder.device)
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(encoder.device)
    if clip_skip <= 1:
        hidden = encoder(input_ids, attention_mask=mask)[0]
    else:
        states = encoder(input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
        text_model = getattr(encoder, "text_model", encoder)
        hidden = text_model.final_layer_norm(states[-clip_skip])
    return hidden.to(dtype=pipe.unet.dtype)


def encode_prompts(
    pipe: DiffusionPipeline, prompt: str, negative_prompt: str, count: int, clip_skip: int
) -> PromptEmbeddings:
    """Encode the prompt pair once and repeat it for `count` images."""
    # Encoded one at a time, as diffusers does, so results match it bit for bit.
    positive = encode_text(pipe, [prompt], clip_skip)
    negative = encode_text(pipe, [negative_prompt], clip_skip)
    return PromptEmbeddings(
        positive=positive.repeat(count, 1, 1), negative=negative.repeat(count, 1, 1)
    )
