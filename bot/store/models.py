"""The store's tables as SQLAlchemy 2.0 typed models: SQLite now, PostgreSQL must work too."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints keep Alembic's batch mode (SQLite) and PostgreSQL migrations deterministic.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
ENUM_LENGTH = 32


class Role(StrEnum):
    USER = "user"
    VIP = "vip"
    ADMIN = "admin"


class JobKind(StrEnum):
    IMAGINE = "imagine"
    UPSCALE = "upscale"
    VARY_SUBTLE = "vary-subtle"
    VARY_STRONG = "vary-strong"
    REROLL = "reroll"
    REMIX = "remix"
    ZOOM = "zoom-out"  # Zoom Out 2x / 1.5x under an upscaled image
    PAN = "pan"  # the pan arrows under an upscaled image


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Delivery(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC; SQLite hands back naive values, read as UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _enum_values(enum: type[StrEnum]) -> list[str]:
    return [member.value for member in enum]


def _enum(enum: type[StrEnum]) -> sa.Enum:
    """A VARCHAR holding the enum's values (not names); no native type, no CHECK to migrate."""
    return sa.Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=ENUM_LENGTH,
        values_callable=_enum_values,
        validate_strings=True,
    )


# BIGINT on PostgreSQL; SQLite only autoincrements a column declared exactly INTEGER.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (sa.UniqueConstraint("platform", "platform_user_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(sa.String(32))
    platform_user_id: Mapped[str] = mapped_column(sa.String(64))
    display_name: Mapped[str | None] = mapped_column(sa.String(255))
    locale: Mapped[str] = mapped_column(sa.String(16), default="en")
    role: Mapped[Role] = mapped_column(_enum(Role), default=Role.USER)
    banned: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    ban_reason: Mapped[str | None] = mapped_column(sa.Text())
    banned_until: Mapped[datetime | None] = mapped_column(UTCDateTime())  # None: no end
    max_queued: Mapped[int | None] = mapped_column(sa.Integer())
    max_running: Mapped[int | None] = mapped_column(sa.Integer())
    daily_images: Mapped[int | None] = mapped_column(sa.Integer())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UserSettings(Base):
    __tablename__ = "user_settings"

    user_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    style: Mapped[str | None] = mapped_column(sa.String(64))
    shot: Mapped[str | None] = mapped_column(sa.String(64))
    lighting: Mapped[str | None] = mapped_column(sa.String(64))
    quality: Mapped[str | None] = mapped_column(sa.String(64))
    face: Mapped[str | None] = mapped_column(sa.String(64))
    composition: Mapped[str | None] = mapped_column(sa.String(64))
    aspect_ratio: Mapped[str | None] = mapped_column(sa.String(16))
    steps: Mapped[int | None] = mapped_column(sa.Integer())
    sampler: Mapped[str | None] = mapped_column(sa.String(64))
    preset: Mapped[str | None] = mapped_column(sa.String(64))
    # A1111's "Restore faces" for new images and U upscales: a restorer, or with a weight.
    restore_faces: Mapped[str | None] = mapped_column(sa.String(64))
    private: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    # In a private chat, a line without a command is an /imagine (Telegram).
    plain_text: Mapped[bool] = mapped_column(
        sa.Boolean(), default=True, server_default=sa.true(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_status_id", "status", "id"),
        sa.Index("ix_jobs_user_id_created_at", "user_id", "created_at"),
        sa.Index("ix_jobs_status_delivery", "status", "delivery"),
        sa.Index("ix_jobs_parent_id", "parent_id"),
        sa.Index("ix_jobs_origin_platform_delivery", "origin_platform", "delivery"),
        sa.Index("ix_jobs_created_at", "created_at"),
        sa.Index("ix_jobs_status_lease_until", "status", "lease_until"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("users.id"))
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind))
    # A variation outlives nothing it needs from its parent, so deleting the parent keeps it.
    parent_id: Mapped[int | None] = mapped_column(
        BigId, sa.ForeignKey("jobs.id", ondelete="SET NULL")
    )
    image_index: Mapped[int | None] = mapped_column(sa.Integer())
    request: Mapped[str] = mapped_column(sa.Text())
    batch_key: Mapped[str | None] = mapped_column(sa.String(64))
    image_count: Mapped[int] = mapped_column(sa.Integer())
    # UNet work in plain images: more than image_count for AND parts and long prompts.
    cost: Mapped[float] = mapped_column(sa.Float(), default=1.0, server_default="1")
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(sa.Integer(), default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(sa.Text())
    origin_platform: Mapped[str] = mapped_column(sa.String(32))
    origin_chat: Mapped[str] = mapped_column(sa.String(64))
    origin_message: Mapped[str | None] = mapped_column(sa.String(64))
    status_message: Mapped[str | None] = mapped_column(sa.String(64))
    delivery: Mapped[Delivery] = mapped_column(_enum(Delivery), default=Delivery.PENDING)
    grid_path: Mapped[str | None] = mapped_column(sa.String(1024))
    # The operator's side of a failure (a traceback); users see `error` only.
    failure_trace: Mapped[str | None] = mapped_column(sa.Text())
    delivery_attempts: Mapped[int] = mapped_column(sa.Integer(), default=0, server_default="0")
    # A running job someone asked to stop (maybe from another process); the bot stops it.
    cancel_requested: Mapped[bool] = mapped_column(
        sa.Boolean(), default=False, server_default=sa.false()
    )
    gpu_seconds: Mapped[float | None] = mapped_column(sa.Float())  # its share of its batch
    # A run on a GPU worker (scale-out), set only while the job is running: the run's id (the
    # Celery task id), the worker that claimed it, and until when its lease holds the job.
    run_id: Mapped[str | None] = mapped_column(sa.String(64))
    worker: Mapped[str | None] = mapped_column(sa.String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # lazy="raise": records are built inside the session, so a lazy load would be a bug.
    images: Mapped[list[Image]] = relationship(
        order_by="Image.index", lazy="raise", passive_deletes=True
    )


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (sa.UniqueConstraint("job_id", "index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(sa.Integer())
    path: Mapped[str] = mapped_column(sa.String(1024))
    seed: Mapped[int] = mapped_column(sa.BigInteger())
    width: Mapped[int] = mapped_column(sa.Integer())
    height: Mapped[int] = mapped_column(sa.Integer())
    sha256: Mapped[str] = mapped_column(sa.String(64))


class Chat(Base):
    __tablename__ = "chats"
    __table_args__ = (sa.UniqueConstraint("platform", "chat_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(sa.String(32))
    chat_id: Mapped[str] = mapped_column(sa.String(64))
    banned_words: Mapped[list[str]] = mapped_column(sa.JSON(), default=list)
    nsfw_allowed: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    default_preset: Mapped[str | None] = mapped_column(sa.String(64))
    # Members of a shared chat may see and act on each other's jobs posted there.
    shared_results: Mapped[bool] = mapped_column(
        sa.Boolean(), default=True, server_default=sa.true()
    )


class QueueState(Base):
    """One row (id 1) that every process shares: whether the queue is paused, which checkpoint
    new jobs use, and a revision that every change a running bot must act on bumps. The
    running bot re-reads it, so a command line in another process acts on it."""

    __tablename__ = "queue_state"

    id: Mapped[int] = mapped_column(sa.Integer(), primary_key=True, autoincrement=False)
    paused: Mapped[bool] = mapped_column(sa.Boolean(), default=False, server_default=sa.false())
    changed_by: Mapped[str | None] = mapped_column(sa.String(128))
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revision: Mapped[int] = mapped_column(sa.Integer(), default=0, server_default="0")
    model: Mapped[str | None] = mapped_column(sa.String(255))  # None: the configured one
    sources_revision: Mapped[int] = mapped_column(sa.Integer(), default=0, server_default="0")
