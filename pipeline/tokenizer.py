"""The CLIP tokenizer, built offline from the BPE merges that ship with the package.

Stable Diffusion 1.x (OpenAI CLIP) and 2.x (OpenCLIP) share one byte-level BPE vocabulary;
`configs/bpe_simple_vocab_16e6.txt.gz` is that file (MIT, from OpenAI CLIP via open_clip).
The vocabulary is derived from the merges exactly the way CLIP derives it, so token ids match
the hub's `tokenizer/vocab.json` without a download. transformers is imported when a
tokenizer is built (a second or two), not with this module's constants.
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408
_MERGE_COUNT = CLIP_VOCAB_SIZE - 256 * 2 - 2
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# OpenCLIP (SD 2.x) pads with "!" (id 0) where OpenAI CLIP (SD 1.x) pads with the end token.
OPEN_CLIP_PAD = "!"


def _bytes_to_unicode() -> dict[int, str]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


@cache
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    packed = resources.files("pipeline.configs").joinpath("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(packed.read_bytes()).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1])
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(merge) for merge in merges]
    tokens += [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_clip_tokenizer(pad_token: str = EOS, max_length: int = 77) -> CLIPTokenizer:
    """A fresh CLIP tokenizer; `pad_token` is EOS for SD 1.x and "!" for SD 2.x."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        pad_token=pad_token,
        model_max_length=max_length,
    )
