"""diffusers' and transformers' loading bars and warnings (and spandrel's), which print on
every start and garble logs and progress lines, turned off unless asked for; and their records
sent to the process's own log handler (its format, its masking) instead of the handlers they
install themselves."""

from __future__ import annotations

import os
import warnings

_LIBRARIES = r"(diffusers|transformers|peft)(\..*)?"


def quiet_libraries(verbose: bool = False, bars: bool = True) -> None:
    """Only errors from diffusers, transformers and peft, and no loading bars; `verbose` (a
    DEBUG log level) lets everything through, bars included. Hub download bars stay: a
    download is worth watching. `bars=False` (logs read by a program) turns every bar off."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()  # its own stderr handler: the root's writes instead
        library.enable_propagation()
    if verbose:
        diffusers_logging.set_verbosity_debug()
        transformers_logging.set_verbosity_debug()
    else:
        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
        warnings.filterwarnings("ignore", module=_LIBRARIES)
        # spandrel's architectures use torch.jit.script, which torch now warns about on import:
        # nothing a user can act on.
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
    if verbose and bars:
        return
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # this turns the hub's bars off too
    if bars and not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        enable_progress_bars()
    elif not bars:
        disable_progress_bars()
