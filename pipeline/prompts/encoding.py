"""Prompt text to CLIP embeddings the way A1111 does it: 75-token chunks, BREAK, weights.

Each chunk is BOS + 75 tokens + EOS (padded after the first EOS with the tokenizer's pad
token, as diffusers pads). When a chunk fills up and its last comma is within 20 tokens of the
end, the words after that comma move to the next chunk so a phrase is not cut in two. Chunks
are encoded separately and concatenated. Emphasis scales each token's embedding, and then the
chunk's original mean is restored, as A1111 does by default.

Clip skip uses A1111's numbering: 1 is the last layer, 2 the penultimate, and so on. The
encoder's hidden states are read directly: diffusers' own `clip_skip` path reaches for
`text_encoder.text_model`, which transformers 5 no longer has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline

from pipeline.prompts.emphasis import BREAK, BREAK_WEIGHT, parse_emphasis
from pipeline.text import clean_text

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


def max_clip_skip(pipe: DiffusionPipeline) -> int:
    return int(pipe.text_encoder.config.num_hidden_layers)


class PromptEncoder:
    """Encodes the texts of one job, each distinct text once."""

    def __init__(self, pipe: DiffusionPipeline, clip_skip: int) -> None:
        self.pipe = pipe
        self.clip_skip = clip_skip
        tokenizer = pipe.tokenizer
        self._bos = int(tokenizer.bos_token_id)
        self._eos = int(tokenizer.eos_token_id)
        self._pad = int(tokenizer.pad_token_id)
        self._comma = int(tokenizer(",", add_special_tokens=False).input_ids[0])
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, text: str) -> torch.Tensor:
        """(1, 77 x chunks, width) embeddings of `text`."""
        if text not in self._cache:
            chunks = self.chunks(text)
            self._cache[text] = torch.cat([self._encode_chunk(chunk) for chunk in chunks], dim=1)
        return self._cache[text]

    def padded(self, texts: list[str]) -> list[torch.Tensor]:
        """Embeddings of `texts`, each padded with empty-prompt chunks to the longest one."""
        encoded = [self.encode(text) for text in texts]
        longest = max(item.shape[1] for item in encoded)
        empty = self.encode("")
        return [
            torch.cat([item, *[empty] * ((longest - item.shape[1]) // empty.shape[1])], dim=1)
            for item in encoded
        ]

    def chunks(self, text: str) -> list[Chunk]:
        # A lone surrogate makes the tokenizer raise TypeError; plans are cleaned already.
        fragments = parse_emphasis(clean_text(text))
        tokenized = self.pipe.tokenizer(
            [fragment for fragment, _ in fragments], add_special_tokens=False
        ).input_ids
        chunks: list[Chunk] = []
        current = Chunk()
        last_comma = -1
        for (fragment, weight), tokens in zip(fragments, tokenized, strict=True):
            if fragment == BREAK and weight == BREAK_WEIGHT:  # not `(word:-1)`
                chunks.append(current)
                current, last_comma = Chunk(), -1
                continue
            for token in tokens:
                if token == self._comma:
                    last_comma = len(current.tokens)
                elif (
                    len(current.tokens) == CHUNK_TOKENS
                    and last_comma != -1
                    and len(current.tokens) - last_comma <= COMMA_BACKTRACK
                ):
                    cut = last_comma + 1
                    carried = Chunk(current.tokens[cut:], current.multipliers[cut:])
                    chunks.append(Chunk(current.tokens[:cut], current.multipliers[:cut]))
                    current, last_comma = carried, -1
                if len(current.tokens) == CHUNK_TOKENS:
                    chunks.append(current)
                    current, last_comma = Chunk(), -1
                current.tokens.append(int(token))
                current.multipliers.append(float(weight))
        if current.tokens or not chunks:
            chunks.append(current)
        return chunks

    def _ids(self, chunk: Chunk) -> tuple[list[int], list[float]]:
        padding = CHUNK_TOKENS - len(chunk.tokens)
        ids = [self._bos, *chunk.tokens, self._eos, *[self._pad] * padding]
        multipliers = [1.0, *chunk.multipliers, 1.0, *[1.0] * padding]
        return ids, multipliers

    @torch.no_grad()
    def _encode_chunk(self, chunk: Chunk) -> torch.Tensor:
        ids, multipliers = self._ids(chunk)
        encoder = self.pipe.text_encoder
        input_ids = torch.tensor([ids], device=encoder.device)
        if self.clip_skip <= 1:
            hidden = encoder(input_ids)[0]
        else:
            states = encoder(input_ids, output_hidden_states=True).hidden_states
            text_model = getattr(encoder, "text_model", encoder)
            hidden = text_model.final_layer_norm(states[-self.clip_skip])
        if any(value != 1.0 for value in multipliers):
            hidden = _apply_weights(hidden, multipliers)
        return hidden.to(dtype=self.pipe.unet.dtype)


def _apply_weights(hidden: torch.Tensor, multipliers: list[float]) -> torch.Tensor:
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
