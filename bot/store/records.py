"""Plain frozen values the store hands out and takes in; ORM objects never leave the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from bot.store.models import Delivery, JobKind, JobStatus, Role


@dataclass(frozen=True)
class UserRecord:
    id: int
    platform: str
    platform_user_id: str
    display_name: str | None
    locale: str
    role: Role
    banned: bool
    ban_reason: str | None
    max_queued: int | None
    max_running: int | None
    daily_images: int | None
    created_at: datetime
    banned_until: datetime | None = None  # None: banned until unbanned (when banned)

    def banned_now(self, now: datetime | None = None) -> bool:
        """Whether the ban is in force: a ban whose end has passed is no ban."""
        if not self.banned:
            return False
        return self.banned_until is None or self.banned_until > (now or datetime.now(UTC))


@dataclass(frozen=True)
class SettingsRecord:
    """A user's remembered choices; None means not set (the bot's default applies)."""

    user_id: int
    style: str | None = None
    shot: str | None = None
    lighting: str | None = None
    quality: str | None = None
    face: str | None = None
    composition: str | None = None
    aspect_ratio: str | None = None
    steps: int | None = None
    sampler: str | None = None
    preset: str | None = None
    restore_faces: str | None = None  # "gfpgan", "codeformer:0.7": new images and U upscales
    private: bool = False
    plain_text: bool = True  # a plain line in a private chat is an /imagine
    updated_at: datetime | None = None


@dataclass(frozen=True)
class ChatRecord:
    platform: str
    chat_id: str
    banned_words: tuple[str, ...] = ()
    nsfw_allowed: bool = False
    default_preset: str | None = None
    shared_results: bool = True


@dataclass(frozen=True)
class ImageRecord:
    id: int
    job_id: int
    index: int
    path: str
    seed: int
    width: int
    height: int
    sha256: str


@dataclass(frozen=True)
class JobRecord:
    """One job; `images` is filled only where the store says so (empty otherwise)."""

    id: int
    user_id: int
    kind: JobKind
    parent_id: int | None
    image_index: int | None
    request: str
    batch_key: str | None
    image_count: int
    status: JobStatus
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    origin_platform: str
    origin_chat: str
    origin_message: str | None
    status_message: str | None
    delivery: Delivery
    grid_path: str | None
    failure_trace: str | None = None
    delivery_attempts: int = 0
    cost: float = 1.0
    cancel_requested: bool = False
    gpu_seconds: float | None = None
    run_id: str | None = None  # the current run on a GPU worker (while running)
    worker: str | None = None  # the worker that claimed that run
    lease_until: datetime | None = None  # the worker holds the job until then
    images: tuple[ImageRecord, ...] = ()


@dataclass(frozen=True)
class NewJob:
    user_id: int
    kind: JobKind
    request: str
    batch_key: str | None
    image_count: int
    origin_platform: str
    origin_chat: str
    origin_message: str | None = None
    parent_id: int | None = None
    image_index: int | None = None
    cost: float = 1.0


@dataclass(frozen=True)
class NewImage:
    index: int
    path: str
    seed: int
    width: int
    height: int
    sha256: str


@dataclass(frozen=True)
class HistoryPage:
    jobs: tuple[JobRecord, ...]
    page: int
    pages: int
    total: int


@dataclass(frozen=True)
class Recovery:
    """What became of running jobs nobody runs any more: queued again, failed (out of
    attempts), cancelled (someone asked to stop them), or left alone because a worker still
    holds them under a live lease."""

    requeued: tuple[int, ...]
    failed: tuple[int, ...]
    cancelled: tuple[int, ...] = ()
    leased: tuple[int, ...] = ()


@dataclass(frozen=True)
class JobFiles:
    """What the database knows of a job's files: when the job was made, and the paths its
    images and grid are recorded at."""

    job_id: int
    status: JobStatus
    created_at: datetime
    paths: frozenset[str]


@dataclass(frozen=True)
class ControlState:
    """The row every process shares (queue_state): a running bot polls it and acts when
    `revision` moves."""

    paused: bool = False
    revision: int = 0
    model: str | None = None  # the checkpoint `easel models use` chose; None: the configured
    sources_revision: int = 0
    changed_by: str | None = None
    changed_at: datetime | None = None


class CancelResult(StrEnum):
    CANCELLED = "cancelled"  # it was queued; it is cancelled now
    STOPPING = "stopping"  # it is running; the bot that runs it stops it within a step
    NOT_ACTIVE = "not_active"  # it had already ended
