"""Prompt text to 75-token chunks the way A1111 cuts it, with nothing but a tokenizer.

Each chunk holds at most 75 tokens (the encoder adds BOS, EOS and padding to 77). BREAK starts
a new chunk. When a chunk fills up and its last comma is within 20 tokens of the end, the words
after that comma move to the next chunk so a phrase is not cut in two.

No torch and no weights here: the engine encodes the chunks (pipeline/prompts/encoding.py), and
checking a job before it is queued only counts them (pipeline/preparation.py), from the
checkpoint's tokenizer files alone where the weights are on other machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.prompts.emphasis import BREAK, BREAK_WEIGHT, parse_emphasis
from pipeline.text import clean_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


class PromptChunker:
    """Cuts texts into chunks with one tokenizer; the token ids an encoder frames them with."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.bos = int(tokenizer.bos_token_id)
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id)
        self.comma = int(tokenizer(",", add_special_tokens=False).input_ids[0])

    def chunks(self, text: str) -> list[Chunk]:
        # A lone surrogate makes the tokenizer raise TypeError; plans are cleaned already.
        fragments = parse_emphasis(clean_text(text))
        tokenized = self.tokenizer(
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
                if token == self.comma:
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
