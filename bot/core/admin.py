"""What Easel's admins do: ban and unban users, set roles, pause and resume the queue, reload
presets and the vocabulary, and set a chat's rules.

Every operation names its actor (a `UserRef`) and is checked here against Easel's own roles (the
`Role` stored for the actor), whatever the platform also checks: anyone else is refused with a
`Refusal` (its reply localized) and nothing changes. Each returns the `Reply` the admin reads.
A target user is named by a platform's user id (the actor's platform, or another known one:
an operator at the console manages Discord and Telegram users), and gets a row on first
mention. Front ends (Discord's `/admin` group, the text router's `/admin ...`) only map
their input onto these calls, and await them: the store's work runs off the event loop.
"""

from __future__ import annotations

from datetime import datetime

from bot.core.durations import DurationError, end_after, is_duration, parse_duration, utc_text
from bot.core.events import Origin, Refusal, Reply, UserRef
from bot.core.messages import Argument, Key, Message, error_text
from bot.core.options import NO_PRESET_WORDS
from bot.core.service import JobService
from bot.store import UNSET, Role, Store, UserRecord
from bot.store.people import ban_user
from bot.store.threads import StoreThreads
from pipeline.errors import InvalidRequestError
from pipeline.presets import PresetLoraMissingError
from pipeline.text import clean_text

# Words that clear a chat's default preset.
NO_PRESET = NO_PRESET_WORDS
ON_WORDS = frozenset({"on", "true", "yes", "1", "allow", "allowed"})
OFF_WORDS = frozenset({"off", "false", "no", "0", "refuse", "refused"})
# The platforms a target user may be on (the front ends Easel has).
KNOWN_PLATFORMS = frozenset({"console", "discord", "telegram"})


class AdminService:
    def __init__(self, service: JobService) -> None:
        self.service = service

    @property
    def store(self) -> Store:
        return self.service.store

    @property
    def db(self) -> StoreThreads:
        return self.service.db

    # ------------------------------------------------------------------ users

    async def ban(self, actor: UserRef, target: UserRef, reason: str | None = None) -> Reply:
        """Ban `target` from queueing anything; `reason` is what they are told. A reason that
        starts with a length (`7d spamming`, `12h`) bans until then. Their queued jobs are
        cancelled (the dispatcher hears of it through the shared revision)."""
        admin = await self._admin(actor)
        user = await self._target(actor, target, "ban")
        if user.id == admin.id:
            raise Refusal(Message(Key.ADMIN_NOT_YOURSELF))
        text = clean_text(reason).strip() if reason else ""
        until, text = _leading_duration(text)
        banned = await self.db.run(ban_user, self.store, user.id, text or None, until, _who(actor))
        return Reply(_banned_message(banned.user))

    async def unban(self, actor: UserRef, target: UserRef) -> Reply:
        await self._admin(actor)
        user = await self._target(actor, target, "unban")
        if not user.banned_now():
            return Reply(Message(Key.ADMIN_WAS_NOT_BANNED, {"user": _shown(user)}))
        unbanned = await self.db.run(self.store.unban, user.id)
        return Reply(Message(Key.ADMIN_UNBANNED, {"user": _shown(unbanned)}))

    async def set_role(self, actor: UserRef, target: UserRef, role: Role | str) -> Reply:
        """user, vip or admin. Not one's own: an admin who stepped down could not undo it
        (the console's user would lose /admin until a restart)."""
        admin = await self._admin(actor)
        chosen = parse_role(role)
        user = await self._target(actor, target, "role")
        if user.id == admin.id:
            raise Refusal(Message(Key.ADMIN_NOT_YOUR_ROLE))
        changed = await self.db.run(self.store.set_role, user.id, chosen)
        # The dispatcher keeps owners it has read; their next job takes the new tier.
        self.service.dispatcher.remember_user(changed)
        args: dict[str, Argument] = {
            "user": _shown(changed),
            "role": changed.role.value,
            "old": user.role.value,
        }
        return Reply(Message(Key.ADMIN_ROLE_SET, args))

    # ------------------------------------------------------------------ the queue

    async def pause(self, actor: UserRef) -> Reply:
        """No new batch starts until `resume` (a running one finishes); jobs still queue. The
        flag is in the database, so a bot in another process pauses too."""
        await self._admin(actor)
        await self.service.dispatcher.set_paused(True, _who(actor))
        return Reply(Message(Key.ADMIN_PAUSED))

    async def resume(self, actor: UserRef) -> Reply:
        await self._admin(actor)
        await self.service.dispatcher.set_paused(False, _who(actor))
        queued = len(self.service.dispatcher.scheduler)
        return Reply(Message(Key.ADMIN_RESUMED, {"queued": queued}))

    # ------------------------------------------------------------------ files

    async def reload(self, actor: UserRef) -> Reply:
        """Re-read presets.toml and the vocabulary; the next job uses them. A broken file
        leaves the previous version in use and the reply says what is wrong."""
        await self._admin(actor)
        report = self.service.reload_sources()
        presets: Argument = ", ".join(report.presets) or Message(Key.ADMIN_NONE)
        lines = []
        if report.presets_error:
            lines.append(_problem(Key.ADMIN_WHAT_PRESETS, report.presets_error))
        if report.vocabulary_error:
            lines.append(_problem(Key.ADMIN_WHAT_VOCABULARY, report.vocabulary_error))
        return Reply(Message(Key.ADMIN_RELOADED, {"presets": presets}), lines=tuple(lines))

    # ------------------------------------------------------------------ chats

    async def rules(
        self,
        actor: UserRef,
        origin: Origin,
        nsfw_allowed: bool | None = None,
        default_preset: str | None = None,
    ) -> Reply:
        """The rules of the chat `origin` names: whether NSFW prompts are allowed, and its
        default preset (used when neither `--preset` nor the user's saved preset names one).
        None leaves a rule as it is; a preset of "none" clears the default. With no change,
        the rules are shown. The preset is checked first: a bad one changes nothing."""
        await self._admin(actor)
        if nsfw_allowed is None and default_preset is None:
            return Reply(await self._rules_message(Key.ADMIN_RULES, origin))
        preset = UNSET if default_preset is None else self._chat_preset(default_preset)
        nsfw = UNSET if nsfw_allowed is None else nsfw_allowed
        await self.db.run(
            self.store.update_chat,
            origin.platform,
            origin.chat,
            nsfw_allowed=nsfw,
            default_preset=preset,
        )
        return Reply(await self._rules_message(Key.ADMIN_RULES_UPDATED, origin))

    def _chat_preset(self, name: str) -> str | None:
        if name.strip().lower() in NO_PRESET or not name.strip():
            return None
        try:
            return self.service.presets().usable(name.strip()).id
        except PresetLoraMissingError as error:
            files = ", ".join(error.missing)
            raise Refusal(
                Message(Key.PRESET_UNAVAILABLE, {"preset": error.preset_id, "files": files})
            ) from None
        except InvalidRequestError as error:  # no such preset; the error suggests one
            raise Refusal(Message(Key.INVALID_REQUEST, {"detail": error_text(error)})) from None

    async def _rules_message(self, key: Key, origin: Origin) -> Message:
        chat = await self.db.run(self.store.chat, origin.platform, origin.chat)
        if not chat.nsfw_allowed:
            nsfw = Message(Key.ADMIN_NSFW_REFUSED)
        elif origin.adult_ok is False:  # the platform still refuses them in this channel
            nsfw = Message(Key.ADMIN_NSFW_ALLOWED_NOT_HERE)
        else:
            nsfw = Message(Key.ADMIN_NSFW_ALLOWED)
        preset: Argument = chat.default_preset or Message(Key.ADMIN_NONE)
        return Message(key, {"nsfw": nsfw, "preset": preset})

    # ------------------------------------------------------------------ checks

    async def is_admin(self, user: UserRef) -> bool:
        return (await self.service.user(user)).role is Role.ADMIN

    async def _admin(self, actor: UserRef) -> UserRecord:
        record = await self.service.user(actor)
        if record.role is not Role.ADMIN:
            raise Refusal(Message(Key.ADMIN_ONLY))
        return record

    async def _target(self, actor: UserRef, target: UserRef, action: str) -> UserRecord:
        if target.platform != actor.platform and target.platform not in KNOWN_PLATFORMS:
            raise Refusal(Message(Key.ADMIN_OTHER_PLATFORM, {"platform": actor.platform}))
        user_id = clean_text(target.platform_user_id).strip().removeprefix("@")
        if not user_id:
            args = {"platform": actor.platform, "action": action}
            raise Refusal(Message(Key.ADMIN_NEED_USER, args))
        # No locale: the target's own language is theirs to give.
        return await self.service.user(UserRef(target.platform, user_id, target.display_name))


def parse_role(role: Role | str) -> Role:
    if isinstance(role, Role):
        return role
    try:
        return Role(role.strip().lower())
    except ValueError:
        raise Refusal(Message(Key.ADMIN_UNKNOWN_ROLE, {"role": role})) from None


def parse_switch(text: str) -> bool:
    """on/off (yes/no, true/false, allow/refuse)."""
    word = text.strip().lower()
    if word in ON_WORDS:
        return True
    if word in OFF_WORDS:
        return False
    raise Refusal(Message(Key.ADMIN_BAD_SWITCH, {"value": text}))


def _leading_duration(reason: str) -> tuple[datetime | None, str]:
    """`7d spamming` -> (now + 7 days, "spamming"); a reason without a length is kept whole."""
    first, _, rest = reason.partition(" ")
    if not is_duration(first):
        return None, reason
    try:
        return end_after(parse_duration(first)), rest.strip()
    except DurationError:
        raise Refusal(Message(Key.ADMIN_BAD_DURATION, {"value": first})) from None


def _banned_message(user: UserRecord) -> Message:
    args: dict[str, Argument] = {"user": _shown(user)}
    if user.banned_until is not None:
        args["until"] = utc_text(user.banned_until)
        if user.ban_reason:
            return Message(Key.ADMIN_BANNED_UNTIL, {**args, "reason": user.ban_reason})
        return Message(Key.ADMIN_BANNED_UNTIL_NO_REASON, args)
    if user.ban_reason:
        return Message(Key.ADMIN_BANNED, {**args, "reason": user.ban_reason})
    return Message(Key.ADMIN_BANNED_NO_REASON, args)


def _shown(user: UserRecord) -> str:
    if user.display_name and user.display_name != user.platform_user_id:
        return f"{user.display_name} ({user.platform_user_id})"
    return user.platform_user_id


def _who(actor: UserRef) -> str:
    return f"{actor.platform}:{actor.platform_user_id}"


def _problem(what: Key, error: str) -> Message:
    return Message(Key.ADMIN_RELOAD_PROBLEM, {"what": Message(what), "error": error})
