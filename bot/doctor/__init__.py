"""`easel doctor`: is this machine ready to run Easel, and if not, what to do.

Each check is a function returning a `Check` (or a list of them): ok, warn or fail, one line
of what was found, and for anything not ok, one line of what to do. No check raises: an
unexpected error becomes a failed check of its own. Nothing here downloads, migrates or writes
anything but a temporary file that shows a folder is writable. Secrets (the bot tokens, the
webhook secret, the database password) are never printed, not even in part.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from bot.doctor.checks import Check, Status, guarded, guarded_all
from bot.doctor.config import (
    check_telegram_webhook,
    check_tokens,
    check_unknown_variables,
    load_settings,
    secret_values,
)
from bot.doctor.files import (
    check_checkpoints,
    check_disk_space,
    check_loras,
    check_models_folder,
    check_presets,
    check_toolbox,
    check_upscalers,
    check_vocabulary,
    check_writable_folders,
)
from bot.doctor.storage import check_database
from bot.doctor.system import check_gpu, check_python, check_tcmalloc, check_torch
from bot.doctor.workers import check_workers
from bot.logs import PASSWORD as HIDDEN
from bot.logs import Secret, SecretMask, configured_secrets, secrets_of
from bot.settings import Settings

__all__ = ["Check", "Status", "exit_code", "run_checks"]


def run_checks() -> list[Check]:
    """Every check, in the order `easel doctor` prints them."""
    settings, setting_checks = load_settings()
    settings = _absolute_paths(settings)
    bad_variables = frozenset(check.name for check in setting_checks if check.status is Status.FAIL)
    checks = [
        guarded("Python", check_python),
        guarded("torch", check_torch),
        guarded("GPU", lambda: check_gpu(settings)),
        guarded("TCMalloc", check_tcmalloc),
        *setting_checks,
        *guarded_all("variables", check_unknown_variables),
        guarded("tokens", lambda: check_tokens(settings, bad_variables)),
        guarded("Telegram webhook", lambda: check_telegram_webhook(settings, bad_variables)),
        guarded("models folder", lambda: check_models_folder(settings)),
        guarded("checkpoints", lambda: check_checkpoints(settings)),
        guarded("LoRAs", lambda: check_loras(settings)),
        guarded("upscalers", lambda: check_upscalers(settings)),
        guarded("toolbox", lambda: check_toolbox(settings)),
        *guarded_all("presets", lambda: check_presets(settings)),
        guarded("vocabulary", lambda: check_vocabulary(settings)),
        guarded("database", lambda: check_database(settings)),
        *guarded_all("GPU workers", lambda: check_workers(settings)),
        guarded("disk space", lambda: check_disk_space(settings)),
        *guarded_all("write access", lambda: check_writable_folders(settings)),
    ]
    return redact(checks, doctor_secrets(settings))


def doctor_secrets(settings: Settings) -> list[str]:
    """Every secret value doctor must not print: the ones the logs mask (the tokens, their
    secret halves, the database password) and each value as it was given. Never raises: a
    source that fails (an unreadable .env, whose own check says so) leaves out only its part."""
    values = [secret.value for secret in configured_secrets()]
    for source in (
        lambda: [secret.value for secret in secrets_of(settings)],
        lambda: list(secret_values(settings)),
    ):
        try:
            values.extend(source())
        except Exception:
            continue
    return values


def redact(checks: list[Check], secrets: Iterable[str]) -> list[Check]:
    """The checks passed through the logs' masking, every secret written as ***: the last
    guard, for a secret that turns up where it should not (a webhook URL whose path is the
    bot token, say). Bot API URLs and any URL's password are masked whatever their value."""
    scrub = SecretMask(Secret(value, HIDDEN) for value in secrets).mask
    return [
        replace(
            check,
            name=scrub(check.name),
            detail=scrub(check.detail),
            fix=None if check.fix is None else scrub(check.fix),
        )
        for check in checks
    ]


def _absolute_paths(settings: Settings) -> Settings:
    """Folders as absolute paths: what the checks print is unambiguous wherever it is read."""
    return settings.model_copy(
        update={
            "models_dir": settings.models_dir.absolute(),
            "outputs_dir": settings.outputs_dir.absolute(),
            "cache_dir": settings.cache_dir.absolute(),
        }
    )


def exit_code(checks: list[Check]) -> int:
    """1 when any check failed; warnings alone leave it 0."""
    return 1 if any(check.status is Status.FAIL for check in checks) else 0
