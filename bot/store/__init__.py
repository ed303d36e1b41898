"""The bot's durable store: users, settings, chats and jobs in SQL, migrated with Alembic."""

from bot.store.database import SETTING_NAMES, UNSET, NotFoundError, Store
from bot.store.faults import (
    BotAlreadyRunningError,
    BotLock,
    DatabaseCorruptError,
    DatabaseReplacedError,
    StoreError,
    missing_sqlite_file,
)
from bot.store.models import Delivery, JobKind, JobStatus, Role
from bot.store.records import (
    CancelResult,
    ChatRecord,
    ControlState,
    HistoryPage,
    ImageRecord,
    JobFiles,
    JobRecord,
    NewImage,
    NewJob,
    Recovery,
    SettingsRecord,
    UserRecord,
)

__all__ = [
    "SETTING_NAMES",
    "UNSET",
    "BotAlreadyRunningError",
    "BotLock",
    "CancelResult",
    "ChatRecord",
    "ControlState",
    "DatabaseCorruptError",
    "DatabaseReplacedError",
    "Delivery",
    "HistoryPage",
    "ImageRecord",
    "JobFiles",
    "JobKind",
    "JobRecord",
    "JobStatus",
    "NewImage",
    "NewJob",
    "NotFoundError",
    "Recovery",
    "Role",
    "SettingsRecord",
    "Store",
    "StoreError",
    "UserRecord",
    "missing_sqlite_file",
]
