"""diffusers' and transformers' loading bars and warnings, which print on every start and garble
logs and progress lines, turned off unless asked for."""

from __future__ import annotations

import os
import warnings

_LIBRARIES = r"(diffusers|transformers|peft)(\..*)?"


def quiet_libraries(verbose: bool = False) -> None:
    """Only errors from diffusers, transformers and peft, and no loading bars; `verbose` leaves
    them as they are. Hub download bars stay: a download is worth watching."""
    if verbose:
        return
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # this turns the hub's bars off too
    if not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        enable_progress_bars()
    warnings.filterwarnings("ignore", module=_LIBRARIES)
