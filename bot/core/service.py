"""The job service: everything a front end can ask of the bot, with no platform types.

Front ends call these methods with a `UserRef` (who) and an `Origin` (where to answer) and get
a `Ticket` or a `Reply` back; a request the bot turns down raises `Refusal`, whose reply says
why in the user's language. Nothing is written when a request is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, time
from pathlib import Path

from bot.core.buttons import Action, parse_action
from bot.core.config import CoreConfig
from bot.core.dispatcher import Dispatcher
from bot.core.events import EventHandler, Origin, Refusal, Reply, Ticket, UserRef
from bot.core.messages import Key, Localized, Message, normalise_locale
from bot.core.options import ImagineOptions, OptionsError, options_from_fields
from bot.core.work import child_work, prompt_preview, work_of
from bot.store import JobKind, JobRecord, JobStatus, NewJob, Role, Store, UserRecord
from pipeline.errors import InvalidRequestError
from pipeline.executors import PreparedWork, Work
from pipeline.images import format_infotext, read_infotext
from pipeline.presets import Presets
from pipeline.prompts.vocabulary import Vocabulary
from pipeline.request import GenerationRequest

HISTORY_PAGE = 5
# Refused where a chat does not allow NSFW (a chat setting); operators add more with banned words.
NSFW_WORDS = (
    "nsfw",
    "nude",
    "nudity",
    "naked",
    "porn",
    "hentai",
    "sex",
    "explicit",
    "누드",
    "야동",
)
_SETTING_FLAGS = {
    "style": "style",
    "shot": "shot",
    "lighting": "light",
    "quality": "quality",
    "aspect_ratio": "ar",
    "steps": "steps",
    "sampler": "sampler",
    "preset": "preset",
}
_SETTING_ALIASES = {"light": "lighting", "ar": "aspect_ratio", "aspect": "aspect_ratio"}
_CLEAR = {"", "-", "none", "default", "off"}
_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}
_KIND_KEYS = {
    JobKind.IMAGINE: Key.KIND_IMAGINE,
    JobKind.UPSCALE: Key.KIND_UPSCALE,
    JobKind.VARY_SUBTLE: Key.KIND_VARY_SUBTLE,
    JobKind.VARY_STRONG: Key.KIND_VARY_STRONG,
    JobKind.REROLL: Key.KIND_REROLL,
}
_STATUS_KEYS = {
    JobStatus.QUEUED: Key.STATUS_QUEUED,
    JobStatus.RUNNING: Key.STATUS_RUNNING,
    JobStatus.DONE: Key.STATUS_DONE,
    JobStatus.FAILED: Key.STATUS_FAILED,
    JobStatus.CANCELLED: Key.STATUS_CANCELLED,
}


class JobService:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        config: CoreConfig,
        vocabulary: Callable[[], Vocabulary],
        presets: Callable[[], Presets],
        native_size: int,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.config = config
        self.vocabulary = vocabulary
        self.presets = presets
        self.native_size = native_size

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.dispatcher.start()

    async def stop(self) -> None:
        await self.dispatcher.stop()

    def subscribe(self, platform: str, handler: EventHandler) -> None:
        """Receive the events of jobs from `platform`; results it missed while no front end
        was listening are delivered by `deliver_missed`."""
        self.dispatcher.bus.subscribe(platform, handler)

    async def deliver_missed(self, platform: str) -> int:
        return await self.dispatcher.redeliver(platform)

    async def wait_until_idle(self, platform: str) -> None:
        await self.dispatcher.wait_until_idle(platform)

    def user(self, user: UserRef) -> UserRecord:
        return self.store.user(
            user.platform, user.platform_user_id, user.display_name, _locale_or_none(user)
        )

    def locale(self, user: UserRef) -> str:
        """The language to answer in: the one the platform gives now, else the one it gave
        last time."""
        return normalise_locale(self.user(user).locale)

    # ------------------------------------------------------------------ imagine

    def options(
        self, user: UserRef, text: str, origin: Origin | None = None, **fields: object
    ) -> ImagineOptions:
        """Parse an /imagine line (and typed fields) with the user's saved defaults."""
        record = self.user(user)
        saved = self.store.settings(record.id)
        defaults = {
            flag: _setting_text(getattr(saved, name)) for name, flag in _SETTING_FLAGS.items()
        }
        if origin is not None and not defaults["preset"]:
            defaults["preset"] = self.store.chat(origin.platform, origin.chat).default_preset or ""
        try:
            return options_from_fields(
                text, self.vocabulary(), self.config.limits, defaults=defaults, **fields
            )
        except OptionsError as error:
            raise _options_refusal(error) from None

    async def imagine(self, user: UserRef, options: ImagineOptions, origin: Origin) -> Ticket:
        record = self.user(user)
        try:
            request = options.to_request(self.vocabulary(), self.native_size, self.presets())
        except OptionsError as error:
            raise _options_refusal(error) from None
        except InvalidRequestError as error:
            raise Refusal(Message(Key.INVALID_REQUEST, {"detail": str(error)})) from None
        self._check_words(request.prompt, origin)
        self._admit(record, request.image_count)
        prepared = await self._prepare(request)
        return self._enqueue(record, JobKind.IMAGINE, prepared, origin)

    # ------------------------------------------------------------------ buttons

    async def act(
        self, user: UserRef, job_id: int, action: str | Action, origin: Origin | None = None
    ) -> Ticket:
        """U1-U4, V1-V4, S1-S4 or reroll on a grid; anyone may press, and it counts against
        the presser's limits. The child goes to `origin`, or to the grid's own chat."""
        record = self.user(user)
        chosen = parse_action(action) if isinstance(action, str) else action
        if chosen is None:
            raise Refusal(Message(Key.UNKNOWN_ACTION, {"action": str(action)}))
        parent, chosen = self._acted_on(job_id, chosen)
        image = self._chosen_image(parent, chosen)
        work = work_of(parent)
        if not isinstance(work, GenerationRequest):  # an upscale whose original is gone
            raise Refusal(Message(Key.JOB_NOT_READY, {"job": parent.id}))
        count = 1 if chosen.kind is JobKind.UPSCALE else min(4, self.config.limits.max_images)
        if chosen.kind is JobKind.REROLL:
            count = work.image_count
        self._admit(record, count)
        child = child_work(chosen, work, image, count, self._upscaler())
        prepared = await self._prepare(child)
        where = origin or Origin(parent.origin_platform, parent.origin_chat)
        return self._enqueue(record, chosen.kind, prepared, where, parent.id, chosen.index)

    def _acted_on(self, job_id: int, action: Action) -> tuple[JobRecord, Action]:
        parent = self.store.job(job_id, with_images=True)
        if parent is None:
            raise Refusal(Message(Key.JOB_NOT_FOUND, {"job": job_id}))
        if parent.kind is JobKind.UPSCALE and parent.parent_id is not None:
            # A button on an upscaled image acts on the image it was made from.
            original = self.store.job(parent.parent_id, with_images=True)
            if original is not None:
                index = parent.image_index if action.index is not None else None
                return original, Action(action.kind, index)
        return parent, action

    def _chosen_image(self, parent: JobRecord, action: Action) -> Path | None:
        if action.kind is JobKind.REROLL:
            return None
        if parent.status is not JobStatus.DONE or not parent.images:
            raise Refusal(Message(Key.JOB_NOT_READY, {"job": parent.id}))
        assert action.index is not None
        if action.index >= len(parent.images):
            args = {"job": parent.id, "index": action.index + 1, "count": len(parent.images)}
            raise Refusal(Message(Key.NO_SUCH_IMAGE, args))
        return Path(parent.images[action.index].path)

    def _upscaler(self) -> str | None:
        from pipeline.upscale import find_upscalers

        if self.config.upscaler:
            return self.config.upscaler
        found = find_upscalers(self.config.models_dir)
        return found[0].name if found else None

    # ------------------------------------------------------------------ queueing

    def _check_words(self, prompt: str, origin: Origin) -> None:
        chat = self.store.chat(origin.platform, origin.chat)
        word = _first_match(prompt, (*self.config.banned_words, *chat.banned_words))
        if word is not None:
            raise Refusal(Message(Key.BANNED_WORD, {"word": word}))
        if not chat.nsfw_allowed:
            word = _first_match(prompt, NSFW_WORDS)
            if word is not None:
                raise Refusal(Message(Key.NSFW_WORD, {"word": word}))

    def _admit(self, user: UserRecord, images: int) -> None:
        """Bans, the daily quota and the queue caps; raises Refusal, writes nothing."""
        if user.banned:
            if user.ban_reason:
                raise Refusal(Message(Key.BANNED, {"reason": user.ban_reason}))
            raise Refusal(Message(Key.BANNED_NO_REASON))
        daily = self.config.daily_cap(user.role, user.daily_images)
        midnight = datetime.combine(datetime.now(UTC).date(), time(0), tzinfo=UTC)
        if self.store.images_since(user.id, midnight) + images > daily:
            raise Refusal(Message(Key.DAILY_QUOTA, {"limit": daily}))
        queued = self.config.queued_cap(user.role, user.max_queued)
        if self.dispatcher.scheduler.queued_for(user.id) >= queued:
            raise Refusal(Message(Key.QUEUE_FULL_USER, {"limit": queued}))
        if len(self.dispatcher.scheduler) >= self.config.max_queue:
            raise Refusal(Message(Key.QUEUE_FULL_GLOBAL, {"limit": self.config.max_queue}))

    async def _prepare(self, work: Work) -> PreparedWork:
        try:
            return await self.dispatcher.executor.prepare(work)
        except OptionsError as error:
            raise _options_refusal(error) from None
        except InvalidRequestError as error:
            raise Refusal(Message(Key.INVALID_REQUEST, {"detail": str(error)})) from None

    def _enqueue(
        self,
        user: UserRecord,
        kind: JobKind,
        prepared: PreparedWork,
        origin: Origin,
        parent_id: int | None = None,
        image_index: int | None = None,
    ) -> Ticket:
        work = prepared.work
        images = 1 if kind is JobKind.UPSCALE else len(getattr(work, "seeds", (0,)))
        # Again, with no await until the row is written: requests that arrived while this
        # one was being prepared may have filled the queue.
        self._admit(user, images)
        job = self.store.add_job(
            NewJob(
                user_id=user.id,
                kind=kind,
                request=work.to_json(),
                batch_key=prepared.batch_key,
                image_count=images,
                origin_platform=origin.platform,
                origin_chat=origin.chat,
                origin_message=origin.message,
                parent_id=parent_id,
                image_index=image_index,
            )
        )
        position = self.dispatcher.enqueue(job, user)
        eta = self.dispatcher.eta_seconds(position, images)
        if eta is None:
            message = Message(Key.QUEUED, {"job": job.id, "position": position})
        else:
            minutes = max(1, math.ceil(eta / 60))
            message = Message(
                Key.QUEUED_ETA, {"job": job.id, "position": position, "minutes": minutes}
            )
        reply = Reply(message)
        self.dispatcher.announce_queued(job, reply, position)
        return Ticket(job.id, position, eta, reply)

    # ------------------------------------------------------------------ the rest

    async def cancel(self, user: UserRef, job_id: int) -> Reply:
        """The owner or an admin may cancel a queued or running job."""
        record = self.user(user)
        job = self.store.job(job_id)
        if job is None:
            raise Refusal(Message(Key.JOB_NOT_FOUND, {"job": job_id}))
        if job.user_id != record.id and record.role is not Role.ADMIN:
            raise Refusal(Message(Key.NOT_YOUR_JOB, {"job": job_id}))
        if job.status is JobStatus.QUEUED and await self.dispatcher.unqueue(job_id):
            self.store.mark_cancelled(job_id)
            self.dispatcher.announce_cancelled(job)
            return Reply(Message(Key.CANCELLED, {"job": job_id}))
        if self.dispatcher.is_running(job_id):
            self.dispatcher.cancel_running(job_id)
            return Reply(Message(Key.CANCEL_REQUESTED, {"job": job_id}))
        status = Message(_STATUS_KEYS[job.status])
        raise Refusal(Message(Key.ALREADY_FINISHED, {"job": job_id, "status": status}))

    def info(self, job_id: int, user: UserRef | None = None) -> Reply:
        """A job's details; the images of a private result only for its owner or an admin
        (or when no `user` is given: the operator's own tools)."""
        job = self.store.job(job_id, with_images=True)
        if job is None:
            raise Refusal(Message(Key.JOB_NOT_FOUND, {"job": job_id}))
        owner = self.store.user_by_id(job.user_id)
        asker = self.user(user) if user is not None else None
        kind, status = Message(_KIND_KEYS[job.kind]), Message(_STATUS_KEYS[job.status])
        if job.status is JobStatus.FAILED and job.error:
            error = self.dispatcher.failure_message(job)
            return Reply(
                Message(
                    Key.INFO_ERROR, {"job": job.id, "kind": kind, "status": status, "error": error}
                )
            )
        summary = Message(
            Key.INFO,
            {
                "job": job.id,
                "kind": kind,
                "status": status,
                "user": (owner.display_name or owner.platform_user_id) if owner else "?",
                "created": f"{job.created_at:%Y-%m-%d %H:%M} UTC",
                "count": job.image_count,
                "prompt": prompt_preview(job),
            },
        )
        if job.status is not JobStatus.DONE:
            return Reply(summary)
        result = self.dispatcher.result_reply(job)
        allowed = asker is None or asker.id == job.user_id or asker.role is Role.ADMIN
        if result.private and not allowed:
            return Reply(summary, private=True)
        return Reply(
            summary, result.images, result.grid, result.buttons, result.parameters, result.private
        )

    def history(self, user: UserRef, page: int = 1) -> Reply:
        record = self.user(user)
        found = self.store.history(record.id, max(1, page), HISTORY_PAGE)
        if not found.total:
            return Reply(Message(Key.HISTORY_EMPTY))
        header = Message(
            Key.HISTORY_HEADER, {"page": found.page, "pages": found.pages, "total": found.total}
        )
        lines = tuple(
            Message(
                Key.HISTORY_LINE,
                {
                    "job": job.id,
                    "when": f"{job.created_at:%m-%d %H:%M}",
                    "kind": Message(_KIND_KEYS[job.kind]),
                    "status": Message(_STATUS_KEYS[job.status]),
                    "prompt": prompt_preview(job, 60),
                },
            )
            for job in found.jobs
        )
        return Reply(header, lines=lines)

    def settings(self, user: UserRef) -> Reply:
        return Reply(Message(Key.SETTINGS), lines=self._setting_lines(self.user(user).id))

    def update_settings(self, user: UserRef, changes: Mapping[str, str]) -> Reply:
        """Save defaults for new jobs (`style=watercolor`, `ar=3:2`, `private=on`); an empty
        value, `none` or `default` clears one. All are checked before any is saved."""
        record = self.user(user)
        values: dict[str, str | int | bool | None] = {}
        for raw_name, raw in changes.items():
            name = _SETTING_ALIASES.get(raw_name.lower(), raw_name.lower())
            values[name] = self._setting_value(name, raw.strip())
        self.store.update_settings(record.id, **values)
        return Reply(Message(Key.SETTINGS_UPDATED), lines=self._setting_lines(record.id))

    def _setting_value(self, name: str, raw: str) -> str | int | bool | None:
        if name == "private":
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            detail = Localized("use on or off", "on 또는 off를 쓰세요")
            raise Refusal(
                Message(Key.SETTINGS_BAD_VALUE, {"name": name, "value": raw, "detail": detail})
            )
        if name not in _SETTING_FLAGS:
            allowed = ", ".join([*_SETTING_FLAGS, "private"])
            raise Refusal(Message(Key.SETTINGS_UNKNOWN, {"name": name, "allowed": allowed}))
        if raw.lower() in _CLEAR:
            return None
        flag = _SETTING_FLAGS[name]
        try:
            parsed = options_from_fields("x", self.vocabulary(), self.config.limits, **{flag: raw})
            if name == "preset":
                self.presets().get(raw)
        except (OptionsError, InvalidRequestError) as error:
            detail = (
                Localized(error.en, error.ko) if isinstance(error, OptionsError) else str(error)
            )
            raise Refusal(
                Message(Key.SETTINGS_BAD_VALUE, {"name": name, "value": raw, "detail": detail})
            ) from None
        if name == "aspect_ratio":
            return raw.replace(" ", "")
        value = getattr(parsed, "lighting" if name == "lighting" else name)
        return value

    def _setting_lines(self, user_id: int) -> tuple[Message, ...]:
        saved = self.store.settings(user_id)
        lines = []
        for name in (*_SETTING_FLAGS, "private"):
            value = getattr(saved, name)
            shown: str | Message = Message(Key.SETTINGS_NOT_SET) if value is None else str(value)
            if name == "private":
                shown = "on" if value else "off"
            lines.append(Message(Key.SETTING_LINE, {"name": name, "value": shown}))
        return tuple(lines)

    def pnginfo(self, image: bytes) -> Reply:
        try:
            info = read_infotext(image)
        except InvalidRequestError as error:
            raise Refusal(Message(Key.INVALID_REQUEST, {"detail": str(error)})) from None
        if info is None:
            return Reply(Message(Key.PNGINFO_NONE))
        parameters = format_infotext(info)
        return Reply(Message(Key.PNGINFO, {"parameters": parameters}), parameters=parameters)


def _options_refusal(error: OptionsError) -> Refusal:
    return Refusal(Message(Key.INVALID_OPTIONS, {"detail": Localized(error.en, error.ko)}))


def _locale_or_none(user: UserRef) -> str | None:
    return normalise_locale(user.locale) if user.locale else None


def _setting_text(value: object) -> str:
    return "" if value is None else str(value)


def _first_match(prompt: str, words: tuple[str, ...]) -> str | None:
    """The first listed word in the prompt: whole words for Latin text, anywhere for Hangul."""
    lowered = prompt.lower()
    for word in words:
        needle = word.strip().lower()
        if not needle:
            continue
        if needle.isascii():
            if re.search(rf"(?<![\w]){re.escape(needle)}(?![\w])", lowered):
                return word
        elif needle in lowered:
            return word
    return None
