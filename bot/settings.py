"""Settings from the environment and `.env`: `EASEL_*`, plus the bot tokens by their usual names."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.acceleration import Acceleration, CompileTarget
from pipeline.validation import Limits

# A webhook's secret token (Bot API, setWebhook): 1-256 characters of A-Z, a-z, 0-9, _ and -.
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
# A Discord bot token: three base64url parts separated by dots (the first is the bot's id).
DISCORD_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# A Telegram bot token as BotFather gives it: the bot's numeric id, a colon, about 35 characters.
TELEGRAM_TOKEN_SHAPE = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{30,50}")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# text: lines for people; json: one JSON object a line, for log shippers.
LOG_FORMATS = ("text", "json")
# How a batch's rows are cut into UNet calls (pipeline/batching.py).
BATCH_MODES = ("fixed", "whole")
# The platforms EASEL_ADMINS may name; the console's users have names, the others numeric ids.
ADMIN_PLATFORMS = ("discord", "telegram", "console")
_NUMERIC_ID_PLATFORMS = ("discord", "telegram")
EXECUTORS = ("local", "celery")
# EASEL_COMPILE's values: what torch.compile compiles.
COMPILE_TARGETS = tuple(target.value for target in CompileTarget)
_SIZE = re.compile(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*")
# Settings whose values are never printed, not even in an error about them.
SECRET_VARIABLES = frozenset(
    {
        "DISCORD_TOKEN",
        "TELEGRAM_TOKEN",
        "DATABASE_URL",
        "EASEL_TELEGRAM_WEBHOOK_SECRET",
        "EASEL_BROKER_URL",
        "EASEL_RESULT_URL",
    }
)


def _default_cache() -> Path:
    return Path.home() / ".cache" / "easel"


class EarlySettings(BaseSettings):
    """What is needed before anything else runs (logging, the Hugging Face hub's offline
    switch): read from the environment and `.env` like every other setting."""

    model_config = SettingsConfigDict(
        env_prefix="EASEL_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    log_level: str = Field(
        default="WARNING", description="DEBUG, INFO, WARNING or ERROR: what is logged."
    )
    log_format: str = Field(
        default="text", description="text (for people) or json (one object a line)."
    )
    debug: bool = Field(
        default=False, description="Log at DEBUG and show the traceback of an unexpected error."
    )
    hf_hub_offline: bool = Field(
        default=False,
        validation_alias="HF_HUB_OFFLINE",
        description="Never ask the Hugging Face hub (local models only).",
    )

    @field_validator("debug", "hf_hub_offline", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return False if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().upper() or "WARNING"
            if value not in LOG_LEVELS:
                raise ValueError(f"one of {', '.join(LOG_LEVELS)}, not {value!r}")
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _known_format(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower() or "text"
            if value not in LOG_FORMATS:
                raise ValueError(f"text or json, not {value!r}")
        return value

    def logging_level(self) -> int:
        return logging.DEBUG if self.debug else int(logging.getLevelName(self.log_level))


class Settings(EarlySettings):
    model: str | None = Field(
        default=None,
        description="Checkpoint name, path or Hugging Face repo id; empty picks the default.",
    )
    models_dir: Path = Field(default=Path("models"), description="Where weights live.")
    outputs_dir: Path = Field(default=Path("outputs"), description="Where images are saved.")
    cache_dir: Path = Field(default_factory=_default_cache, description="Hashes and configs.")
    device: str = Field(default="auto", description="auto, cuda, cuda:N, mps or cpu.")
    dtype: str = Field(default="auto", description="auto, float16, bfloat16 or float32.")
    batch_mode: str = Field(
        default="fixed",
        description="fixed: UNet calls of a fixed size, so an image is the same whichever jobs "
        "share its batch; whole: one call per batch (fastest, images may differ by a level).",
    )
    batch_rows: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Rows per UNet call in fixed mode at the model's native size (an image "
        "takes two: its prompt and negative prompt); fewer above it.",
    )
    exact_batches: bool | None = Field(
        default=None, description="Older name: true is batch_mode=fixed, false is whole."
    )
    compile: str = Field(
        default="off",
        description="torch.compile: off, unet, or unet+vae (the VAE's decoder too); compiles at "
        "start, then steps run faster on a GPU.",
    )
    warmup_sizes: str = Field(
        default="",
        description="With EASEL_COMPILE on: sizes compiled at start besides the model's own, "
        "WIDTHxHEIGHT comma-separated (e.g. 512x768,768x512).",
    )
    channels_last: bool | None = Field(
        default=None, description="Channels-last memory format; empty: on for CUDA, off else."
    )
    vae_tile_area: int = Field(
        default=1536 * 1536,
        ge=0,
        description="Pixels above which the VAE works in tiles (less memory); 0: never.",
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch's threads on the CPU; empty: OMP_NUM_THREADS when set, else one per "
        "physical core this process may use.",
    )

    max_area: int = Field(default=1024 * 1024, ge=64 * 64)
    max_steps: int = Field(default=100, ge=1)
    max_images: int = Field(default=4, ge=1)
    min_cfg: float = Field(default=1.0, ge=0)
    max_cfg: float = Field(default=30.0, ge=1)
    max_and_parts: int = Field(default=8, ge=1, description="Most AND parts in one prompt.")
    max_input_pixels: int = Field(
        default=4096 * 4096, ge=64 * 64, description="Most pixels of an image given in."
    )
    max_output_pixels: int = Field(
        default=4096 * 4096, ge=64 * 64, description="Most pixels of an upscaled image."
    )

    database_url: str = Field(
        default="sqlite:///easel.db",
        validation_alias="DATABASE_URL",
        description="Any SQLAlchemy URL; SQLite by default.",
    )
    executor: str = Field(
        default="local",
        description="Where batches run: local (this process's GPU) or celery (GPU workers "
        "started with `easel worker`, through EASEL_BROKER_URL).",
    )
    broker_url: str | None = Field(
        default=None,
        description="The Redis that carries batches to GPU workers, e.g. redis://host:6379/0.",
    )
    result_url: str | None = Field(
        default=None, description="Where workers' results wait; empty: the broker's Redis."
    )
    worker_name: str | None = Field(
        default=None,
        description="This GPU worker's name (unique per worker); empty: the host's name, "
        "with the device when not the default.",
    )
    lease_seconds: float = Field(
        default=30.0,
        ge=1,
        description="A remote job's lease: its worker renews it; a worker silent this long "
        "is taken for lost and its jobs run again.",
    )
    max_transfer_mb: int = Field(
        default=64,
        ge=1,
        description="The largest batch or result sent between the bot and a GPU worker (MB).",
    )
    max_batch_images: int | None = Field(
        default=None, ge=1, description="Images per pipeline call; empty: 4 on CPU, 8 on GPU."
    )
    max_queued_per_user: int = Field(default=10, ge=1, description="vip: twice; admin: no cap.")
    max_running_per_user: int = Field(default=4, ge=1)
    max_queue: int = Field(default=1000, ge=1, description="Queued jobs of all users together.")
    daily_images: int = Field(
        default=0, ge=0, description="Images per user per UTC day; 0: no cap."
    )
    banned_words: str = Field(default="", description="Comma-separated; refused in every chat.")
    upscaler: str | None = Field(
        default=None,
        description="Upscaler for U buttons (models/upscale); empty: the first, else Lanczos.",
    )
    inpaint_model: str | None = Field(
        default=None,
        description="Inpainting checkpoint for zoom out and pan; empty: the grid's own.",
    )
    progress_interval: float = Field(default=2.0, ge=0, description="Seconds between updates.")
    progress_chat_interval: float = Field(
        default=1.0, ge=0, description="Seconds between progress updates in one chat."
    )
    shutdown_timeout: float = Field(
        default=60.0, ge=0, description="Seconds a running batch may take to finish on shutdown."
    )
    console_user: str = Field(default="local", description="The console chat's user name.")
    admins: str = Field(
        default="",
        description="Admins from the start, PLATFORM:USER_ID comma-separated "
        "(e.g. discord:1234,telegram:5678).",
    )

    discord_token: SecretStr | None = Field(default=None, validation_alias="DISCORD_TOKEN")
    discord_api_url: str | None = Field(
        default=None,
        description="Discord's REST base (a proxy such as nirn-proxy), e.g. http://proxy/api/v10.",
    )
    discord_gateway_url: str | None = Field(
        default=None,
        description="Discord's gateway websocket (discord.py does not take it from the REST base).",
    )
    discord_guilds: str = Field(
        default="",
        description="Comma-separated guild ids: the commands are synced there too at start, "
        "where they show at once (a global sync can take up to an hour).",
    )
    telegram_token: SecretStr | None = Field(default=None, validation_alias="TELEGRAM_TOKEN")
    telegram_api_url: str | None = Field(
        default=None,
        description="A self-hosted Bot API server (larger files, faster uploads), e.g. "
        "http://localhost:8081; empty: api.telegram.org.",
    )
    telegram_local_mode: bool = Field(
        default=False,
        description="The Bot API server at EASEL_TELEGRAM_API_URL runs with --local on this "
        "machine: files are read from and handed over on its disk (uploads up to 2000 MB).",
    )
    telegram_webhook_url: str | None = Field(
        default=None,
        description="The public URL Telegram posts updates to; empty: long polling.",
    )
    telegram_webhook_secret: SecretStr | None = Field(
        default=None,
        description="The webhook's secret token (1-256 of A-Z a-z 0-9 _ -); empty: a new one "
        "at each start.",
    )
    telegram_webhook_listen: str = Field(
        default="0.0.0.0", description="The address the webhook server listens on."
    )
    telegram_webhook_port: int = Field(
        default=8443, ge=1, le=65535, description="The port the webhook server listens on."
    )
    telegram_group_interval: float = Field(
        default=3.0,
        ge=0,
        description="Seconds between progress updates in one Telegram group (20 messages a "
        "minute at most there).",
    )

    @field_validator("executor", mode="before")
    @classmethod
    def _known_executor(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower() or "local"
            if value not in EXECUTORS:
                raise ValueError(f"must be one of {', '.join(EXECUTORS)}, not {value!r}")
        return value

    @model_validator(mode="after")
    def _broker_for_celery(self) -> Settings:
        if self.executor == "celery" and not self.broker_url:
            raise ValueError(
                "EASEL_EXECUTOR=celery needs EASEL_BROKER_URL (the Redis both the bot and "
                "the workers reach, e.g. redis://10.0.0.5:6379/0)"
            )
        return self

    @field_validator("batch_mode", mode="before")
    @classmethod
    def _known_batch_mode(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower() or "fixed"
            if value not in BATCH_MODES:
                raise ValueError(f"fixed or whole, not {value!r}")
        return value

    @model_validator(mode="after")
    def _older_exact_batches(self) -> Settings:
        if self.exact_batches is not None and "batch_mode" not in self.model_fields_set:
            self.batch_mode = "fixed" if self.exact_batches else "whole"
        return self

    @field_validator("models_dir", "outputs_dir", "cache_dir", mode="after")
    @classmethod
    def _expand_home(cls, path: Path) -> Path:
        return path.expanduser()

    @field_validator("discord_guilds", mode="after")
    @classmethod
    def _guild_ids(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip() and not part.strip().isdigit():
                raise ValueError(f"{part.strip()!r} is not a guild id")
        return value

    @field_validator(
        "model",
        "discord_token",
        "discord_api_url",
        "discord_gateway_url",
        "telegram_token",
        "telegram_api_url",
        "telegram_webhook_url",
        "telegram_webhook_secret",
        "upscaler",
        "inpaint_model",
        "max_batch_images",
        "exact_batches",
        "channels_last",
        "cpu_threads",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_target(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower().replace(" ", "") or "off"
            if value not in COMPILE_TARGETS:
                raise ValueError(f"one of {', '.join(COMPILE_TARGETS)}, not {value!r}")
        return value

    @field_validator("warmup_sizes", mode="after")
    @classmethod
    def _warmup_sizes(cls, value: str) -> str:
        parse_sizes(value)
        return value

    @field_validator("telegram_webhook_secret", mode="after")
    @classmethod
    def _secret_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _SECRET_TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("discord_token", mode="after")
    @classmethod
    def _discord_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not DISCORD_TOKEN_SHAPE.fullmatch(value.get_secret_value()):
            raise ValueError(
                "does not look like a Discord bot token (three parts of A-Z a-z 0-9 _ - "
                "separated by dots); copy it again from the Developer Portal's Bot tab"
            )
        return value

    @field_validator("telegram_token", mode="after")
    @classmethod
    def _telegram_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not TELEGRAM_TOKEN_SHAPE.fullmatch(value.get_secret_value()):
            raise ValueError(
                "does not look like a Telegram bot token (the bot's numeric id, a colon and "
                "about 35 characters of A-Z a-z 0-9 _ -, as BotFather gives it)"
            )
        return value

    @field_validator("telegram_webhook_url", mode="after")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            parsed = urlsplit(value.strip())
            if parsed.scheme not in ("https", "http") or not parsed.hostname or " " in value:
                raise ValueError(f"{value!r} is not an https:// (or http://) URL with a host")
        return value

    @field_validator("admins", mode="after")
    @classmethod
    def _check_admins(cls, value: str) -> str:
        for platform, user_id in parse_admins(value):
            check_admin(platform, user_id)
        return value

    def admin_list(self) -> tuple[tuple[str, str], ...]:
        """EASEL_ADMINS as (platform, platform user id) pairs."""
        return parse_admins(self.admins)

    def warmup_size_list(self) -> tuple[tuple[int, int], ...]:
        """EASEL_WARMUP_SIZES as (width, height) pairs."""
        return parse_sizes(self.warmup_sizes)

    def acceleration(self) -> Acceleration:
        return Acceleration(
            compile=CompileTarget(self.compile),
            channels_last=self.channels_last,
            vae_tile_area=self.vae_tile_area or None,
        )

    def banned_word_list(self) -> tuple[str, ...]:
        return tuple(word.strip() for word in self.banned_words.split(",") if word.strip())

    def discord_guild_ids(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.discord_guilds.split(",") if part.strip())

    def limits(self) -> Limits:
        return Limits(
            max_area=self.max_area,
            max_steps=self.max_steps,
            max_images=self.max_images,
            min_cfg=self.min_cfg,
            max_cfg=self.max_cfg,
            max_and_parts=self.max_and_parts,
            max_input_pixels=self.max_input_pixels,
            max_output_pixels=self.max_output_pixels,
        )


def parse_admins(text: str) -> tuple[tuple[str, str], ...]:
    """`discord:1234, telegram:5678` -> (("discord", "1234"), ("telegram", "5678"))."""
    admins = []
    for item in text.split(","):
        if not item.strip():
            continue
        platform, _, user_id = item.strip().partition(":")
        platform, user_id = platform.strip().lower(), user_id.strip()
        if not platform or not user_id:
            raise ValueError(
                f"{item.strip()!r} is not PLATFORM:USER_ID (e.g. discord:1234,telegram:5678)"
            )
        admins.append((platform, user_id))
    return tuple(admins)


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """`512x768, 768x512` -> ((512, 768), (768, 512)); each side a multiple of 8 from 64."""
    sizes = []
    for item in text.split(","):
        if not item.strip():
            continue
        match = _SIZE.fullmatch(item)
        if match is None:
            raise ValueError(f"{item.strip()!r} is not WIDTHxHEIGHT (e.g. 512x768,768x512)")
        width, height = int(match[1]), int(match[2])
        if width < 64 or height < 64 or width % 8 or height % 8:
            raise ValueError(f"{item.strip()!r}: each side is a multiple of 8, at least 64")
        sizes.append((width, height))
    return tuple(dict.fromkeys(sizes))


def check_admin(platform: str, user_id: str) -> None:
    """A platform Easel has, and a user id of its kind (Discord's and Telegram's are numbers,
    the console's is a name)."""
    if platform not in ADMIN_PLATFORMS:
        raise ValueError(
            f"'{platform}:{user_id}': unknown platform {platform!r} "
            f"(one of {', '.join(ADMIN_PLATFORMS)})"
        )
    if platform in _NUMERIC_ID_PLATFORMS and not user_id.isdigit():
        raise ValueError(
            f"'{platform}:{user_id}': a {platform.capitalize()} user id is a number "
            "(Discord: Developer Mode, right-click, Copy User ID)"
        )


def variable_name(field: str) -> str:
    """The environment variable a setting is read from (`max_steps` -> EASEL_MAX_STEPS)."""
    for model in (Settings, EarlySettings):
        info = model.model_fields.get(field)
        if info is not None and isinstance(info.validation_alias, str):
            return info.validation_alias
    return field if field.isupper() else f"EASEL_{field.upper()}"


def settings_problems(error: ValidationError) -> list[str]:
    """One line per bad setting, naming its variable: `EASEL_MAX_STEPS: Input should be a
    valid integer, ... (got 'abc')`. A secret's value is never repeated."""
    lines = []
    for problem in error.errors(include_url=False):
        name = variable_name(str(problem["loc"][0])) if problem["loc"] else "settings"
        text = str(problem["msg"]).removeprefix("Value error, ")
        given = problem.get("input")
        shown = isinstance(given, str | int | float) and name not in SECRET_VARIABLES
        if problem["type"] != "value_error" and shown:
            text += f" (got {given!r})"
        lines.append(f"{name}: {text}")
    return lines
