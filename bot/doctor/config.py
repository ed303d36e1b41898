"""The settings: every bad variable on a line of its own, the bot tokens (present and
well-formed, never shown), variables Easel does not know, and where the Telegram webhook
listens (A1111 answered only on localhost until `--listen`; the webhook is Easel's one
listening socket)."""

from __future__ import annotations

import difflib
import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from bot.doctor.checks import Check
from bot.settings import SECRET_VARIABLES, Settings, settings_problems, variable_name

ENV_FILE = Path(".env")
# EASEL_ variables read outside Settings.
OTHER_VARIABLES = frozenset({"EASEL_LANG", "EASEL_HYPOTHESIS"})
TOKEN_VARIABLES = ("DISCORD_TOKEN", "TELEGRAM_TOKEN")
# Shorter values are not searched for in the output (they would blank out ordinary words);
# real tokens and secrets are far longer.
MIN_SECRET_LENGTH = 6
# The ports Telegram posts webhooks to (Bot API, setWebhook); a local Bot API server takes any.
TELEGRAM_WEBHOOK_PORTS = (443, 80, 88, 8443)
WEBHOOK_VARIABLES = frozenset(
    {
        "EASEL_TELEGRAM_WEBHOOK_URL",
        "EASEL_TELEGRAM_WEBHOOK_LISTEN",
        "EASEL_TELEGRAM_WEBHOOK_PORT",
        "EASEL_TELEGRAM_API_URL",
    }
)
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def load_settings() -> tuple[Settings, list[Check]]:
    """The settings, and a check for each bad variable (named by it, never repeating a
    secret's value). The settings returned keep every good value and the default for each bad
    one, so the other checks still run."""
    try:
        return Settings(), [Check.ok("settings", "the environment and .env are valid")]
    except ValidationError as error:
        checks = [_bad_setting(line) for line in settings_problems(error)]
        bad = {str(problem["loc"][0]) for problem in error.errors() if problem["loc"]}
        try:
            settings = Settings(**{key: _default(key) for key in bad})
        except ValidationError:
            settings = Settings.model_construct()
        return settings, checks
    except (OSError, UnicodeDecodeError) as error:  # a .env that cannot be read
        return Settings.model_construct(), [
            Check.fail(
                "settings",
                f"cannot read the settings: {type(error).__name__}: {error}",
                f"make {ENV_FILE.absolute()} a readable UTF-8 file (or remove it)",
            )
        ]


def _bad_setting(line: str) -> Check:
    name, _, text = line.partition(": ")
    fix = f"correct {name} in .env or the environment, or remove it for the default"
    if name in TOKEN_VARIABLES:
        fix = f"copy the token again into {name} (whole, without quotes or spaces)"
    return Check.fail(name, text, fix)


def _default(key: str) -> object:
    for name, field in Settings.model_fields.items():
        if key in (name, field.validation_alias):
            return field.get_default(call_default_factory=True)
    return None


def known_variables() -> frozenset[str]:
    return frozenset(variable_name(name) for name in Settings.model_fields) | OTHER_VARIABLES


def check_unknown_variables(env_file: Path = ENV_FILE) -> list[Check]:
    """EASEL_ variables in the environment or .env that no setting reads: usually a typo,
    silently ignored otherwise."""
    given = {name for name in os.environ if name.upper().startswith("EASEL_")}
    given |= {name for name in _env_file_names(env_file) if name.upper().startswith("EASEL_")}
    known = known_variables()
    checks = []
    for name in sorted(given):
        if name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "remove it or check the README's Settings"
        checks.append(Check.warn(name, "Easel reads no such variable; it is ignored", hint))
    return checks


def _env_file_names(env_file: Path) -> list[str]:
    return list(_env_file_values(env_file))


def _env_file_values(env_file: Path) -> dict[str, str]:
    if not env_file.is_file():
        return {}
    from dotenv import dotenv_values

    return {name: value for name, value in dotenv_values(env_file).items() if name and value}


def secret_values(settings: Settings, env_file: Path = ENV_FILE) -> frozenset[str]:
    """Every secret's value as given (well-formed or not) and as read, and the database
    password: what must never appear in what doctor prints."""
    values: set[str] = set()
    raw = {**_env_file_values(env_file), **os.environ}
    for name in SECRET_VARIABLES - {"DATABASE_URL"}:
        given = raw.get(name)
        if given:
            values |= {given, given.strip().strip("'\"")}
    for secret in (
        settings.discord_token,
        settings.telegram_token,
        settings.telegram_webhook_secret,
    ):
        if secret is not None:
            values.add(secret.get_secret_value())
    for url in (settings.database_url, raw.get("DATABASE_URL")):
        password = _url_password(url)
        if password:
            values.add(password)
    return frozenset(value for value in values if len(value) >= MIN_SECRET_LENGTH)


def _url_password(url: str | None) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not url:
        return None
    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        return None


def check_tokens(settings: Settings, bad_variables: frozenset[str]) -> Check:
    """Which bot tokens are set and well-formed (their shape: whether Discord or Telegram
    accepts them is only known when the bot connects). Values are never shown."""
    states = []
    for name in TOKEN_VARIABLES:
        if name in bad_variables:
            states.append(f"{name} malformed (its own line says why)")
        elif getattr(settings, name.lower()) is None:
            states.append(f"{name} not set")
        else:
            states.append(f"{name} set and well-formed")
    detail = "; ".join(states)
    if any(name in bad_variables for name in TOKEN_VARIABLES):
        return Check.fail("tokens", detail, "fix the malformed token (see its line)")
    if settings.discord_token is None and settings.telegram_token is None:
        return Check.warn(
            "tokens",
            f"{detail}: `easel run` has no chat to serve; only `easel chat` (the console) works",
            "put DISCORD_TOKEN and/or TELEGRAM_TOKEN in .env (README: Discord / Telegram first "
            "steps)",
        )
    return Check.ok("tokens", detail)


def check_telegram_webhook(settings: Settings, bad_variables: frozenset[str]) -> Check:
    """Long polling needs nothing reachable; a webhook needs Telegram to reach the URL, and
    the URL to lead to EASEL_TELEGRAM_WEBHOOK_LISTEN:EASEL_TELEGRAM_WEBHOOK_PORT."""
    name = "Telegram webhook"
    if settings.telegram_token is None and "TELEGRAM_TOKEN" not in bad_variables:
        return Check.ok(name, "not used (no TELEGRAM_TOKEN)")
    broken = sorted(WEBHOOK_VARIABLES & bad_variables)
    if broken:
        return Check.warn(
            name, f"not checked: {', '.join(broken)} is malformed", "fix it first (see its line)"
        )
    url = settings.telegram_webhook_url
    if url is None:
        return Check.ok(name, "long polling: Easel connects out, nothing listens, no port to open")
    parsed = urlsplit(url.strip())
    listen, port = settings.telegram_webhook_listen, settings.telegram_webhook_port
    where = f"{listen}:{port}"
    path = parsed.path or "/"
    if settings.telegram_api_url is None:  # api.telegram.org's rules for the URL
        problem = _public_webhook_problem(parsed.scheme, parsed.port or _default_port(parsed))
        if problem is not None:
            return Check.fail(
                name, f"EASEL_TELEGRAM_WEBHOOK_URL {url}: {problem}", _proxy_fix(where, path)
            )
    if _is_loopback(listen):
        return Check.warn(
            name,
            f"listens on {where} (this machine only) for {url}: Telegram cannot reach that "
            "by itself",
            _proxy_fix(where, path),
        )
    if _is_all_interfaces(listen):
        return Check.ok(
            name,
            f"listens on every interface, port {port}, for {url}: the firewall must let port "
            f"{port} in (or put a reverse proxy in front and set "
            "EASEL_TELEGRAM_WEBHOOK_LISTEN=127.0.0.1)",
        )
    return Check.ok(
        name,
        f"listens on {where} for {url}: that address must be reachable from the URL's host, "
        f"and the firewall must let port {port} in",
    )


def _public_webhook_problem(scheme: str, port: int) -> str | None:
    if scheme != "https":
        return "Telegram posts only to https:// URLs (a self-hosted Bot API server allows http)"
    if port not in TELEGRAM_WEBHOOK_PORTS:
        ports = ", ".join(str(allowed) for allowed in TELEGRAM_WEBHOOK_PORTS)
        return f"Telegram posts only to ports {ports}, not {port}"
    return None


def _default_port(parsed: Any) -> int:
    return 443 if parsed.scheme == "https" else 80


def _proxy_fix(where: str, path: str) -> str:
    return (
        "serve the public https:// URL (port 443, 80, 88 or 8443, a valid certificate) from a "
        f"reverse proxy (nginx, Caddy) forwarding {path} to http://{where}{path}; or set "
        "EASEL_TELEGRAM_WEBHOOK_LISTEN=0.0.0.0 and open the port, or leave "
        "EASEL_TELEGRAM_WEBHOOK_URL empty for long polling"
    )


def _is_loopback(host: str) -> bool:
    if host.strip().lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _is_all_interfaces(host: str) -> bool:
    return host.strip().strip("[]") in ("0.0.0.0", "::", "")
