"""diffusers' and transformers' loading bars and warnings, which print on every start and garble
logs and progress lines, turned off unless asked for; and their records sent to the process's
own log handler (its format, its masking) instead of the handlers they install themselves."""

from __future__ import annotations

import os
import warnings

_LIBRARIES = r"(diffusers|transformers|peft)(\..*)?"


def quiet_libraries(verbose: bool = False) -> None:
    """Only errors from diffusers, transformers and peft, and no loading bars; `verbose` (a
    DEBUG log level) lets everything through, bars included. Hub download bars stay: a
    download is worth watching."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()  # its own stderr handler: the root's writes instead
        library.enable_propagation()
    if verbose:
        diffusers_logging.set_verbosity_debug()
        transformers_logging.set_verbosity_debug()
        return
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # this turns the hub's bars off too
    if not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        enable_progress_bars()
    warnings.filterwarnings("ignore", module=_LIBRARIES)
