"""The core's own settings, as a plain dataclass (built from `bot.settings.Settings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bot.store import Role
from pipeline.validation import Limits

NO_CAP = 1 << 30
MAX_ATTEMPTS = 3  # a job the bot died in this many times fails instead of running again
DEFAULT_BATCH_IMAGES = {"cpu": 4, "gpu": 8}


@dataclass(frozen=True)
class CoreConfig:
    outputs_dir: Path
    models_dir: Path = Path("models")
    limits: Limits = field(default_factory=Limits)
    max_batch_images: int = DEFAULT_BATCH_IMAGES["cpu"]
    max_queued_per_user: int = 10
    max_running_per_user: int = 4
    max_queue: int = 1000
    daily_images: int = 0  # 0: no cap
    banned_words: tuple[str, ...] = ()
    upscaler: str | None = None  # None: Lanczos
    inpaint_model: str | None = None  # zoom out and pan's checkpoint; None: the grid's own
    progress_interval: float = 2.0
    shutdown_timeout: float = 60.0
    max_attempts: int = MAX_ATTEMPTS
    # Remote workers: a worker renews its jobs' lease this often x3; a job whose worker was
    # lost this many times fails rather than take down yet another worker.
    lease_seconds: float = 30.0
    max_worker_losses: int = 2
    progress_chat_interval: float = 1.0  # progress edits in one chat, at most this often
    # A result a front end failed to deliver is tried again after these many seconds (the
    # last one repeats) while the bot runs, and at the next start.
    delivery_retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)

    def queued_cap(self, role: Role, override: int | None) -> int:
        if override is not None:
            return override
        return {Role.ADMIN: NO_CAP, Role.VIP: 2 * self.max_queued_per_user}.get(
            role, self.max_queued_per_user
        )

    def running_cap(self, role: Role, override: int | None) -> int:
        """At least 1: a user with a cap of 0 could never run anything (ban them instead)."""
        if override is not None:
            return max(1, override)
        return NO_CAP if role is Role.ADMIN else self.max_running_per_user

    def daily_cap(self, role: Role, override: int | None) -> int:
        if override is not None:
            return override or NO_CAP
        if role is Role.ADMIN or not self.daily_images:
            return NO_CAP
        return self.daily_images


TIERS = {Role.ADMIN: 0, Role.VIP: 1, Role.USER: 2}
