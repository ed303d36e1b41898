"""Whether a Hugging Face hub model can be had: in the hub cache, or the hub reachable.

Light on purpose (huggingface_hub only, no torch or diffusers): the command line asks this
before it spends seconds importing the engine, so an offline start without a model fails at
once.
"""

from __future__ import annotations

import os
import socket

from pipeline.errors import ModelLoadError, first_line

HUB_PROBE_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_INDEX_FILE = "model_index.json"  # every diffusers repo has it; cached with the rest


class HubUnavailableError(ModelLoadError):
    """A hub model that is not in the cache, while the hub cannot be used (offline)."""

    def __init__(self, repo_id: str, reason: str) -> None:
        self.repo_id = repo_id
        self.reason = reason
        super().__init__(f"{repo_id} is not in the Hugging Face cache and {reason}.")


def hub_unreachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub's host cannot be reached, or None when it answers (or a proxy is set, which
    a direct connection cannot judge). One connection attempt instead of the hub client's
    retries, which take half a minute offline."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as error:
        return f"{host}: {first_line(error)}"


def hub_unusable() -> str | None:
    """Why nothing can be downloaded from the hub now, or None when it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    unreachable = hub_unreachable()
    if unreachable is not None:
        return f"the hub cannot be reached ({unreachable})"
    return None


def require_hub_model(repo_id: str) -> None:
    """Raise HubUnavailableError when `repo_id` is not in the hub cache and cannot be
    downloaded. A cached repo passes; whether all its weights are there is the loader's
    question."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, _INDEX_FILE), str):
        return
    reason = hub_unusable()
    if reason is not None:
        raise HubUnavailableError(repo_id, reason)
