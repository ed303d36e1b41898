"""Replies as data: a message key with arguments, rendered per locale from the catalogs.

The catalogs (`bot/core/locales/en.toml`, `ko.toml`) hold one `str.format` template per key.
A test checks that every key below is in both catalogs with the same placeholders.
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TypeAlias

from pipeline.errors import InvalidRequestError

LOCALES = ("en", "ko")
DEFAULT_LOCALE = "en"
_CATALOGS = Path(__file__).parent / "locales"


class Key(StrEnum):
    QUEUED = "queued"
    QUEUED_ETA = "queued_eta"
    STARTED = "started"
    PROGRESS = "progress"
    FINISHED = "finished"
    FINISHED_UPSCALE = "finished_upscale"
    FAILED_OUT_OF_MEMORY = "failed_out_of_memory"
    FAILED_INVALID = "failed_invalid"
    FAILED_ERROR = "failed_error"
    FAILED_CRASHED = "failed_crashed"
    FAILED_WORKER_LOST = "failed_worker_lost"
    FAILED_INTERNAL = "failed_internal"
    FAILED_DISK_FULL = "failed_disk_full"
    FAILED_NOT_WRITABLE = "failed_not_writable"
    INTERNAL_ERROR = "internal_error"
    CANCELLED = "cancelled"
    CANCEL_REQUESTED = "cancel_requested"
    INVALID_OPTIONS = "invalid_options"
    INVALID_REQUEST = "invalid_request"
    NSFW_WORD = "nsfw_word"
    BANNED = "banned"
    BANNED_NO_REASON = "banned_no_reason"
    BANNED_WORD = "banned_word"
    QUEUE_FULL_USER = "queue_full_user"
    QUEUE_FULL_GLOBAL = "queue_full_global"
    DAILY_QUOTA = "daily_quota"
    JOB_NOT_FOUND = "job_not_found"
    JOB_NOT_READY = "job_not_ready"
    NO_SUCH_IMAGE = "no_such_image"
    NOT_YOUR_JOB = "not_your_job"
    ALREADY_FINISHED = "already_finished"
    UNKNOWN_ACTION = "unknown_action"
    UNKNOWN_BUTTON = "unknown_button"
    INFO = "info"
    INFO_ERROR = "info_error"
    HISTORY_HEADER = "history_header"
    HISTORY_LINE = "history_line"
    HISTORY_EMPTY = "history_empty"
    SETTINGS = "settings"
    SETTINGS_UPDATED = "settings_updated"
    SETTINGS_UNKNOWN = "settings_unknown"
    SETTINGS_NOT_SET = "settings_not_set"
    SETTING_LINE = "setting_line"
    SETTINGS_BAD_VALUE = "settings_bad_value"
    PNGINFO = "pnginfo"
    PNGINFO_NONE = "pnginfo_none"
    NO_LAST_GRID = "no_last_grid"
    UNKNOWN_COMMAND = "unknown_command"
    RUN_CONSOLE = "run_console"
    STARTUP_DEVICE = "startup_device"
    PRESET_UNAVAILABLE = "preset_unavailable"
    UNKNOWN_LORA = "unknown_lora"
    ABOUT_CHILD = "about_child"
    ABOUT_IMAGE_CHILD = "about_image_child"
    SEEDS_WITH_VARIATIONS = "seeds_with_variations"
    STARTUP_CPU = "startup_cpu"
    STARTUP_CPU_CHOSEN = "startup_cpu_chosen"
    STARTUP_NO_GPU = "startup_no_gpu"
    STARTUP_LOADING = "startup_loading"
    STARTUP_MODEL = "startup_model"
    SHUTTING_DOWN = "shutting_down"
    BUTTON_REROLL = "button_reroll"
    BUTTON_REMIX = "button_remix"
    KIND_IMAGINE = "kind_imagine"
    KIND_UPSCALE = "kind_upscale"
    KIND_VARY_SUBTLE = "kind_vary_subtle"
    KIND_VARY_STRONG = "kind_vary_strong"
    KIND_REROLL = "kind_reroll"
    STATUS_QUEUED = "status_queued"
    STATUS_RUNNING = "status_running"
    STATUS_DONE = "status_done"
    STATUS_FAILED = "status_failed"
    STATUS_CANCELLED = "status_cancelled"
    QUEUED_ETA_SECONDS = "queued_eta_seconds"
    IMAGES_MADE = "images_made"
    IMAGES_REQUESTED = "images_requested"
    IMAGES_NONE = "images_none"
    KIND_REMIX = "kind_remix"
    REMIX_LINE = "remix_line"
    REMIX_COPY_LINE = "remix_copy_line"
    NOT_A_JOB_NUMBER = "not_a_job_number"
    NEED_JOB_NUMBER = "need_job_number"
    NEED_IMAGE = "need_image"
    NEED_FILE = "need_file"
    INIT_NEEDS_FILE = "init_needs_file"
    NOT_A_PAGE_NUMBER = "not_a_page_number"
    QUITTING = "quitting"
    NOTE = "note"
    INVALID_TEXT = "invalid_text"
    NOT_AN_IMAGE = "not_an_image"
    NO_SUCH_FILE = "no_such_file"
    DID_YOU_MEAN = "did_you_mean"
    QUEUE_STATUS = "queue_status"
    QUEUE_MINE = "queue_mine"
    QUEUE_MINE_RUNNING = "queue_mine_running"
    QUEUE_MINE_NONE = "queue_mine_none"
    HELP_HEADER = "help_header"
    HELP_LINE = "help_line"
    STOPPED_NOW = "stopped_now"
    PREVIEW_SAVED = "preview_saved"
    CMD_IMAGINE = "cmd_imagine"
    CMD_U = "cmd_u"
    CMD_V = "cmd_v"
    CMD_S = "cmd_s"
    CMD_REROLL = "cmd_reroll"
    CMD_REMIX = "cmd_remix"
    CMD_HISTORY = "cmd_history"
    CMD_INFO = "cmd_info"
    CMD_CANCEL = "cmd_cancel"
    CMD_QUEUE = "cmd_queue"
    CMD_SETTINGS = "cmd_settings"
    CMD_PNGINFO = "cmd_pnginfo"
    CMD_WAIT = "cmd_wait"
    CMD_HELP = "cmd_help"
    CMD_QUIT = "cmd_quit"
    ARG_PROMPT = "arg_prompt"
    ARG_INDEX = "arg_index"
    ARG_JOB = "arg_job"
    ARG_PAGE = "arg_page"
    ARG_CHANGES = "arg_changes"
    ARG_IMAGE = "arg_image"
    ARG_LINE = "arg_line"
    ARG_NEGATIVE = "arg_negative"
    ARG_ASPECT = "arg_aspect"
    ARG_COUNT = "arg_count"
    ARG_SEED = "arg_seed"
    # /imagine's options on Discord, and localized command names
    ARG_STYLE = "arg_style"
    ARG_SHOT = "arg_shot"
    ARG_LIGHTING = "arg_lighting"
    ARG_QUALITY = "arg_quality"
    ARG_PRESET = "arg_preset"
    ARG_STEPS = "arg_steps"
    ARG_CFG = "arg_cfg"
    ARG_SAMPLER = "arg_sampler"
    ARG_TILE = "arg_tile"
    ARG_HIRES = "arg_hires"
    ARG_INIT_IMAGE = "arg_init_image"
    ARG_STRENGTH = "arg_strength"
    ARG_CONTROL = "arg_control"
    ARG_CONTROL_IMAGE = "arg_control_image"
    IMAGE_TOO_LARGE = "image_too_large"
    ATTACHMENT_UNREADABLE = "attachment_unreadable"
    NAME_IMAGINE = "name_imagine"
    NAME_PROMPT = "name_prompt"
    NAME_NEGATIVE = "name_negative"
    NAME_STYLE = "name_style"
    NAME_SHOT = "name_shot"
    NAME_LIGHTING = "name_lighting"
    NAME_QUALITY = "name_quality"
    NAME_ASPECT = "name_aspect"
    NAME_PRESET = "name_preset"
    NAME_SEED = "name_seed"
    NAME_STEPS = "name_steps"
    NAME_CFG = "name_cfg"
    NAME_SAMPLER = "name_sampler"
    NAME_COUNT = "name_count"
    NAME_TILE = "name_tile"
    NAME_HIRES = "name_hires"
    NAME_IMAGE = "name_image"
    NAME_STRENGTH = "name_strength"
    NAME_CONTROL = "name_control"
    NAME_CONTROL_IMAGE = "name_control_image"
    CHOICE_HIRES_OFF = "choice_hires_off"
    CHOICE_HIRES_ON = "choice_hires_on"
    NAME_HISTORY = "name_history"
    NAME_INFO = "name_info"
    NAME_CANCEL = "name_cancel"
    NAME_QUEUE = "name_queue"
    NAME_HELP = "name_help"
    NAME_SETTINGS = "name_settings"
    NAME_PNGINFO = "name_pnginfo"
    NAME_PAGE = "name_page"
    NAME_JOB = "name_job"
    NAME_CHANGES = "name_changes"
    NAME_ADMIN = "name_admin"
    NAME_BAN = "name_ban"
    NAME_UNBAN = "name_unban"
    NAME_ROLE = "name_role"
    NAME_PAUSE = "name_pause"
    NAME_RESUME = "name_resume"
    NAME_RELOAD = "name_reload"
    NAME_RULES = "name_rules"
    NAME_USER = "name_user"
    NAME_REASON = "name_reason"
    NAME_NSFW = "name_nsfw"
    CHOICE_ROLE_USER = "choice_role_user"
    CHOICE_ROLE_VIP = "choice_role_vip"
    CHOICE_ROLE_ADMIN = "choice_role_admin"
    # Discord's message context menus, the remix modal and the settings menus.
    MENU_PNGINFO = "menu_pnginfo"
    MENU_UPSCALE = "menu_upscale"
    MENU_VARY = "menu_vary"
    MENU_NO_IMAGE = "menu_no_image"
    MENU_IMAGE_UNREADABLE = "menu_image_unreadable"
    MENU_IMAGE_TOO_LARGE = "menu_image_too_large"
    FINISHED_UPSCALE_IMAGE = "finished_upscale_image"
    REMIX_MODAL_TITLE = "remix_modal_title"
    REMIX_MODAL_LABEL = "remix_modal_label"
    SETTINGS_MENU_HINT = "settings_menu_hint"
    SETTINGS_MENU_PLACEHOLDER = "settings_menu_placeholder"
    SETTINGS_MENU_CLEAR = "settings_menu_clear"
    SETTINGS_MENU_NEXT = "settings_menu_next"
    SETTINGS_MENU_PREVIOUS = "settings_menu_previous"
    SETTING_ASPECT = "setting_aspect"
    # Admin operations (bot/core/admin.py) and the paused queue
    ADMIN_ONLY = "admin_only"
    ADMIN_USAGE = "admin_usage"
    ADMIN_NEED_USER = "admin_need_user"
    ADMIN_OTHER_PLATFORM = "admin_other_platform"
    ADMIN_NOT_YOURSELF = "admin_not_yourself"
    ADMIN_BANNED = "admin_banned"
    ADMIN_BANNED_NO_REASON = "admin_banned_no_reason"
    ADMIN_UNBANNED = "admin_unbanned"
    ADMIN_WAS_NOT_BANNED = "admin_was_not_banned"
    ADMIN_UNKNOWN_ROLE = "admin_unknown_role"
    ADMIN_ROLE_SET = "admin_role_set"
    ADMIN_PAUSED = "admin_paused"
    ADMIN_RESUMED = "admin_resumed"
    ADMIN_RELOADED = "admin_reloaded"
    ADMIN_RELOAD_PROBLEM = "admin_reload_problem"
    ADMIN_WHAT_PRESETS = "admin_what_presets"
    ADMIN_WHAT_VOCABULARY = "admin_what_vocabulary"
    ADMIN_NONE = "admin_none"
    ADMIN_RULES = "admin_rules"
    ADMIN_NSFW_ALLOWED = "admin_nsfw_allowed"
    ADMIN_NSFW_ALLOWED_NOT_HERE = "admin_nsfw_allowed_not_here"
    ADMIN_NSFW_REFUSED = "admin_nsfw_refused"
    ADMIN_RULES_UPDATED = "admin_rules_updated"
    ADMIN_BAD_SWITCH = "admin_bad_switch"
    QUEUE_PAUSED = "queue_paused"
    CMD_ADMIN = "cmd_admin"
    CMD_ADMIN_BAN = "cmd_admin_ban"
    CMD_ADMIN_UNBAN = "cmd_admin_unban"
    CMD_ADMIN_ROLE = "cmd_admin_role"
    CMD_ADMIN_PAUSE = "cmd_admin_pause"
    CMD_ADMIN_RESUME = "cmd_admin_resume"
    CMD_ADMIN_RELOAD = "cmd_admin_reload"
    CMD_ADMIN_RULES = "cmd_admin_rules"
    ARG_ADMIN_ACTION = "arg_admin_action"
    ARG_USER = "arg_user"
    ARG_REASON = "arg_reason"
    ARG_ROLE = "arg_role"
    ARG_NSFW = "arg_nsfw"
    ARG_CHAT_PRESET = "arg_chat_preset"
    # Delivery of results (Discord's size limit, a result that goes by DM)
    RESULT_REENCODED = "result_reencoded"
    RESULT_BY_DM = "result_by_dm"
    # Telegram: asking for a prompt, the remix reply, photos and their parameters
    TELEGRAM_ASK_PROMPT = "telegram_ask_prompt"
    TELEGRAM_REMIX_LINE = "telegram_remix_line"
    TELEGRAM_PHOTO_NO_PNGINFO = "telegram_photo_no_pnginfo"
    TELEGRAM_AS_DOCUMENT = "telegram_as_document"
    # Telegram's /style picker (bot/telegram/picker.py)
    CMD_STYLE = "cmd_style"
    PICKER_HINT = "picker_hint"
    PICKER_CHOOSE = "picker_choose"
    PICKER_BACK = "picker_back"
    PICKER_SAVED = "picker_saved"
    PICKER_NOT_YOURS = "picker_not_yours"
    PICKER_STALE = "picker_stale"
    # Shutdown: the graceful stop's timeout ran out
    STOPPED_AT_TIMEOUT = "stopped_at_timeout"
    # Console and admin wording: counts, usages, a paused queue at the console's end
    JOB_COUNT_ONE = "job_count_one"
    JOB_COUNT = "job_count"
    PAUSED_JOBS_STAY = "paused_jobs_stay"
    PAUSED_WAIT = "paused_wait"
    ADMIN_NOT_YOUR_ROLE = "admin_not_your_role"
    ADMIN_ROLE_USAGE = "admin_role_usage"
    IMAGE_ACTION_USAGE = "image_action_usage"
    SETTINGS_USAGE = "settings_usage"
    LORAS_HERE = "loras_here"
    LORAS_NONE = "loras_none"
    # Users managed from the command line (easel users): bans with an end
    BANNED_UNTIL = "banned_until"
    BANNED_UNTIL_NO_REASON = "banned_until_no_reason"
    ADMIN_BANNED_UNTIL = "admin_banned_until"
    ADMIN_BANNED_UNTIL_NO_REASON = "admin_banned_until_no_reason"
    ADMIN_BAD_DURATION = "admin_bad_duration"
    # The operator's command line: a job another process queued (a retry) joins the queue
    QUEUED_BY_OPERATOR = "queued_by_operator"
    # Zoom out and pan under an upscaled image (pipeline/outpaint.py)
    BUTTON_ZOOM_2 = "button_zoom_2"
    BUTTON_ZOOM_1_5 = "button_zoom_1_5"
    KIND_ZOOM = "kind_zoom"
    KIND_PAN = "kind_pan"
    OUTPAINT_NEEDS_UPSCALE = "outpaint_needs_upscale"
    REMIX_CANVAS_SIZE = "remix_canvas_size"


@dataclass(frozen=True)
class Localized:
    """A text that arrives already written in each language (an options error)."""

    en: str
    ko: str

    def in_locale(self, locale: str) -> str:
        return self.ko if locale == "ko" else self.en


def error_text(error: InvalidRequestError) -> Localized:
    """A refused request's message as a catalog argument, shown in the reader's language
    (English where the error carries no Korean)."""
    return Localized(error.en, error.ko if error.ko is not None else error.en)


Argument: TypeAlias = "str | int | float | Localized | Message"


@dataclass(frozen=True)
class Message:
    key: Key
    args: dict[str, Argument] = field(default_factory=dict)

    def render(self, locale: str) -> str:
        return render(self, locale)


def normalise_locale(locale: str | None) -> str:
    """`ko-KR`, `ko_KR` and `ko` are Korean; anything unknown is English."""
    if not locale:
        return DEFAULT_LOCALE
    language = locale.replace("_", "-").split("-", 1)[0].lower()
    return language if language in LOCALES else DEFAULT_LOCALE


@cache
def catalog(locale: str) -> dict[str, str]:
    with (_CATALOGS / f"{locale}.toml").open("rb") as handle:
        return tomllib.load(handle)


def render(message: Message, locale: str) -> str:
    language = normalise_locale(locale)
    template = catalog(language).get(message.key.value) or catalog(DEFAULT_LOCALE)[message.key]
    values = {name: _argument(value, language) for name, value in message.args.items()}
    return template.format(**values)


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _argument(value: Argument, locale: str) -> str | int | float:
    if isinstance(value, Localized):
        return value.in_locale(locale)
    if isinstance(value, Message):
        return render(value, locale)
    return value


def job_count(count: int) -> Message:
    """`1 job`, `3 jobs` (an argument for a sentence that counts jobs)."""
    return Message(Key.JOB_COUNT_ONE if count == 1 else Key.JOB_COUNT, {"count": count})
