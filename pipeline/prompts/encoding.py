"""Prompt text to CLIP embeddings the way A1111 does it: 75-token chunks, BREAK, weights.

Each chunk (cut by pipeline/prompts/chunking.py, which needs only the tokenizer) is BOS + 75
tokens + EOS (padded after the first EOS with the tokenizer's pad token, as diffusers pads).
Chunks are encoded separately and concatenated. Emphasis scales each token's embedding, and
then the chunk's original mean is restored, as A1111 does by default.

Clip skip uses A1111's numbering: 1 is the last layer, 2 the penultimate, and so on. The
encoder's hidden states are read directly: diffusers' own `clip_skip` path reaches for
`text_encoder.text_model`, which transformers 5 no longer has.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from diffusers import DiffusionPipeline

from pipeline.prompts.chunking import CHUNK_TOKENS, Chunk, PromptChunker

__all__ = ["CHUNK_TOKENS", "Chunk", "Conditioner", "PromptEncoder", "apply_weights"]
__all__ += ["chunk_ids", "max_clip_skip", "padded_to_longest"]


class Conditioner(Protocol):
    """What the UNet wrapper (pipeline/guidance.py) needs from a family's prompt encoder."""

    def chunks(self, text: str) -> list[Chunk]: ...

    def encode(self, text: str) -> torch.Tensor: ...

    def padded(self, texts: list[str]) -> list[torch.Tensor]: ...

    def pipeline_embeds(
        self, positive: torch.Tensor, negative: torch.Tensor, images: int
    ) -> dict[str, torch.Tensor]: ...

    def unet_inputs(
        self, context: torch.Tensor, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]: ...


def max_clip_skip(pipe: DiffusionPipeline) -> int:
    return int(pipe.text_encoder.config.num_hidden_layers)


class PromptEncoder:
    """Encodes the texts of one job, each distinct text once."""

    def __init__(self, pipe: DiffusionPipeline, clip_skip: int) -> None:
        self.pipe = pipe
        self.clip_skip = clip_skip
        self._chunker = PromptChunker(pipe.tokenizer)
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, text: str) -> torch.Tensor:
        """(1, 77 x chunks, width) embeddings of `text`."""
        if text not in self._cache:
            chunks = self.chunks(text)
            self._cache[text] = torch.cat([self._encode_chunk(chunk) for chunk in chunks], dim=1)
        return self._cache[text]

    def padded(self, texts: list[str]) -> list[torch.Tensor]:
        """Embeddings of `texts`, each padded with empty-prompt chunks to the longest one."""
        return padded_to_longest([self.encode(text) for text in texts], self.encode(""))

    def chunks(self, text: str) -> list[Chunk]:
        return self._chunker.chunks(text)

    def pipeline_embeds(
        self, positive: torch.Tensor, negative: torch.Tensor, images: int
    ) -> dict[str, torch.Tensor]:
        """The embeddings diffusers' pipeline call takes for `images` images (it checks their
        shapes; the UNet wrapper gives each row its own)."""
        return {
            "prompt_embeds": positive.repeat(images, 1, 1),
            "negative_prompt_embeds": negative.repeat(images, 1, 1),
        }

    def unet_inputs(
        self, context: torch.Tensor, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The UNet's text conditioning and other arguments for rows of `padded` output."""
        return context, kwargs

    @torch.no_grad()
    def _encode_chunk(self, chunk: Chunk) -> torch.Tensor:
        ids, multipliers = chunk_ids(self._chunker, chunk, self._chunker.pad)
        encoder = self.pipe.text_encoder
        input_ids = torch.tensor([ids], device=encoder.device)
        if self.clip_skip <= 1:
            hidden = encoder(input_ids)[0]
        else:
            states = encoder(input_ids, output_hidden_states=True).hidden_states
            text_model = getattr(encoder, "text_model", encoder)
            hidden = text_model.final_layer_norm(states[-self.clip_skip])
        if any(value != 1.0 for value in multipliers):
            hidden = apply_weights(hidden, multipliers)
        return hidden.to(dtype=self.pipe.unet.dtype)


def chunk_ids(chunker: PromptChunker, chunk: Chunk, pad: int) -> tuple[list[int], list[float]]:
    """The chunk's 77 token ids (BOS, its tokens, EOS, then `pad`) and each one's weight."""
    padding = CHUNK_TOKENS - len(chunk.tokens)
    ids = [chunker.bos, *chunk.tokens, chunker.eos, *[pad] * padding]
    multipliers = [1.0, *chunk.multipliers, 1.0, *[1.0] * padding]
    return ids, multipliers


def padded_to_longest(encoded: list[torch.Tensor], empty: torch.Tensor) -> list[torch.Tensor]:
    """Each embedding followed by as many `empty` chunks as it takes to be the longest's size:
    the texts of one UNet call need one length."""
    longest = max(item.shape[1] for item in encoded)
    return [
        torch.cat([item, *[empty] * ((longest - item.shape[1]) // empty.shape[1])], dim=1)
        for item in encoded
    ]


def apply_weights(hidden: torch.Tensor, multipliers: list[float]) -> torch.Tensor:
    # In float32: a large weight would overflow fp16 to inf and the image to NaN.
    original = hidden.float()
    scale = torch.tensor(multipliers, device=hidden.device, dtype=torch.float32)
    weighted = original * scale.reshape(1, -1, 1)
    weighted_mean = weighted.mean()
    # A mean near zero (say, all weights cancelling out) would blow the ratio up to inf/NaN.
    if weighted_mean.abs() > 1e-6 * original.abs().mean():
        weighted = weighted * (original.mean() / weighted_mean)
    finite = torch.finfo(hidden.dtype)
    return weighted.clamp(finite.min, finite.max).to(hidden.dtype)
