"""Seamless textures: circular padding on every convolution, for one job only."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def circular_padding(modules: Iterable[nn.Module], enabled: bool = True) -> Iterator[None]:
    """Switch every Conv2d under `modules` to circular padding, and back afterwards."""
    if not enabled:
        yield
        return
    convolutions = [
        layer for module in modules for layer in module.modules() if isinstance(layer, nn.Conv2d)
    ]
    saved = [(layer, layer.padding_mode) for layer in convolutions]
    for layer in convolutions:
        layer.padding_mode = "circular"
    try:
        yield
    finally:
        for layer, mode in saved:
            layer.padding_mode = mode
