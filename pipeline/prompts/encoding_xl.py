"""Prompt text to SDXL conditioning the way A1111 does it, on both of SDXL's text encoders.

Each 75-token chunk (the same chunks and emphasis as SD 1.x, pipeline/prompts/encoding.py)
goes through both encoders: OpenAI CLIP ViT-L, padded with its end token, and OpenCLIP
ViT-bigG, padded with "!" (id 0). Their penultimate hidden states, without the final layer
norm, are concatenated per token (768 + 1280 = 2048 wide in SDXL base), the chunks one after
another; emphasis then scales tokens and restores the mean over the whole, as A1111 does. The
pooled embedding (OpenCLIP's projected end token) comes from the first chunk, as in A1111.

Clip skip: SDXL is trained on the penultimate layer, so 1 and 2 both give it; 3 and more go
further down both encoders.

The pooled embedding rides with the text as one extra row of the context tensor (its first
`pooled_width` values), so that every row operation of the batching code (stacking, slicing,
padding to fixed-size calls) keeps it with its text; `unet_inputs` takes it back out as the
UNet's `text_embeds`. The size and crop conditioning (`time_ids`) is the pipeline's own:
A1111 and diffusers both use (height, width), crop (0, 0), (height, width).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiffusionPipeline

from pipeline.prompts.chunking import Chunk, PromptChunker
from pipeline.prompts.encoding import apply_weights, chunk_ids, padded_to_longest

TRAINED_LAYER = 2  # SDXL conditions on the penultimate hidden states of both encoders


class XLPromptEncoder:
    """Encodes the texts of one job for an SDXL pipeline, each distinct text once."""

    def __init__(self, pipe: DiffusionPipeline, clip_skip: int) -> None:
        self.pipe = pipe
        self.layer = -max(TRAINED_LAYER, clip_skip)
        self._chunker = PromptChunker(pipe.tokenizer)
        self._second_pad = int(pipe.tokenizer_2.pad_token_id)
        self.pooled_width = int(pipe.text_encoder_2.config.projection_dim)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def chunks(self, text: str) -> list[Chunk]:
        return self._chunker.chunks(text)

    def encode(self, text: str) -> torch.Tensor:
        """(1, 77 x chunks, width) text embeddings of `text`."""
        return self._encoded(text)[0]

    def pooled(self, text: str) -> torch.Tensor:
        """(1, pooled width): the pooled embedding of `text`'s first chunk."""
        return self._encoded(text)[1]

    def padded(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text's embeddings padded with empty-prompt chunks to the longest one, its
        pooled embedding packed after them as one more row."""
        encoded = padded_to_longest([self.encode(text) for text in texts], self.encode(""))
        return [
            self._packed(hidden, self.pooled(text))
            for text, hidden in zip(texts, encoded, strict=True)
        ]

    def pipeline_embeds(
        self, positive: torch.Tensor, negative: torch.Tensor, images: int
    ) -> dict[str, torch.Tensor]:
        """What diffusers' SDXL call takes for `images` images (it checks the shapes and
        needs the pooled embeddings; the UNet wrapper gives each row its own)."""
        return {
            "prompt_embeds": positive.repeat(images, 1, 1),
            "negative_prompt_embeds": negative.repeat(images, 1, 1),
            "pooled_prompt_embeds": self._unpacked_pooled(positive).repeat(images, 1),
            "negative_pooled_prompt_embeds": self._unpacked_pooled(negative).repeat(images, 1),
        }

    def unet_inputs(
        self, context: torch.Tensor, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The text rows, and the pooled rows and size conditioning as `added_cond_kwargs`."""
        added = dict(kwargs.get("added_cond_kwargs") or {})
        rows = context.shape[0]
        # Every image of a batch has one size, so every row has the first row's time ids.
        added["time_ids"] = added["time_ids"][:1].expand(rows, -1)
        added["text_embeds"] = self._unpacked_pooled(context)
        return context[:, :-1], {**kwargs, "added_cond_kwargs": added}

    def _packed(self, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        row = hidden.new_zeros((1, 1, hidden.shape[-1]))
        row[0, 0, : self.pooled_width] = pooled[0].to(hidden.dtype)
        return torch.cat([hidden, row], dim=1)

    def _unpacked_pooled(self, context: torch.Tensor) -> torch.Tensor:
        return context[:, -1, : self.pooled_width]

    def _encoded(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self._cache:
            parts = [self._encode_chunk(chunk) for chunk in self.chunks(text)]
            hidden = torch.cat([part[0] for part in parts], dim=1)
            self._cache[text] = (hidden, parts[0][1])
        return self._cache[text]

    @torch.no_grad()
    def _encode_chunk(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = self.pipe.text_encoder, self.pipe.text_encoder_2
        first_ids, multipliers = chunk_ids(self._chunker, chunk, self._chunker.pad)
        second_ids, _ = chunk_ids(self._chunker, chunk, self._second_pad)
        first_states = first(
            torch.tensor([first_ids], device=first.device), output_hidden_states=True
        ).hidden_states
        second_output = second(
            torch.tensor([second_ids], device=second.device), output_hidden_states=True
        )
        hidden = torch.cat(
            [first_states[self.layer], second_output.hidden_states[self.layer].to(first.device)],
            dim=-1,
        )
        if any(value != 1.0 for value in multipliers):
            hidden = apply_weights(hidden, multipliers)
        dtype = self.pipe.unet.dtype
        return hidden.to(dtype=dtype), second_output.text_embeds.to(dtype=dtype)
