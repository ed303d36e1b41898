"""The job service: everything a front end can ask of the bot, with no platform types.

Front ends call these methods with a `UserRef` (who) and an `Origin` (where to answer) and get
a `Ticket` or a `Reply` back; a request the bot turns down raises `Refusal`, whose reply says
why in the user's language. Nothing is written when a request is refused.

Every method that reads or writes the database is a coroutine: the store's calls run on its
own threads (`Store.threads`), so a slow database never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, time
from pathlib import Path

from PIL import Image

from bot.core.buttons import Action, parse_action
from bot.core.config import NO_CAP, CoreConfig
from bot.core.dispatcher import CancelOutcome, Dispatcher, jobs_by_id
from bot.core.durations import utc_text
from bot.core.events import EventHandler, Origin, Refusal, Reply, Ticket, UserRef
from bot.core.messages import Key, Localized, Message, error_text, job_count, normalise_locale
from bot.core.options import (
    CATEGORY_FLAGS,
    ImagineOptions,
    OptionsError,
    options_from_fields,
    parse_restore_faces,
)
from bot.core.setting_choices import MENU_SETTINGS, SettingMenu, setting_menu
from bot.core.sources import ReloadReport
from bot.core.words import first_match, nsfw_allowed, nsfw_word
from bot.core.work import (
    KIND_KEYS,
    child_work,
    prompt_preview,
    remix_line,
    with_model,
    work_of,
)
from bot.store import (
    ControlState,
    JobKind,
    JobRecord,
    JobStatus,
    NewJob,
    Role,
    SettingsRecord,
    Store,
    UserRecord,
)
from pipeline.errors import InvalidRequestError
from pipeline.executors import PreparedWork, Work
from pipeline.face_steps import resolve_face_restorer
from pipeline.images import Infotext, format_infotext, read_infotext
from pipeline.lora_names import UnknownLoraError
from pipeline.outpaint import Move, build_canvas, canvas_size, outpaint_request
from pipeline.presets import PresetLoraMissingError, Presets
from pipeline.prompts.vocabulary import Vocabulary
from pipeline.request import CODEFORMER_WEIGHT, GenerationRequest, ImageRef, UpscaleRequest
from pipeline.text import clean_text
from pipeline.validation import check_input_size
from pipeline.variations import STRONG_DENOISING, request_from_infotext, strong_variation

log = logging.getLogger(__name__)
HISTORY_PAGE = 5
_SETTING_FLAGS = {
    **CATEGORY_FLAGS,
    "aspect_ratio": "ar",
    "steps": "steps",
    "sampler": "sampler",
    "preset": "preset",
    "restore_faces": "restore-faces",
}
# Settings are shown by the names people type in `/settings name=value`.
_SETTING_SHOWN = {"aspect_ratio": "ar"}
_SETTING_ALIASES = {
    "light": "lighting",
    "ar": "aspect_ratio",
    "aspect": "aspect_ratio",
    "comp": "composition",
    "faces": "restore_faces",
    "restore-faces": "restore_faces",
}
_CLEAR = {"", "-", "none", "default", "off"}
# Settings that are on or off: `private` (results shared with no chat), `plain_text` (in a
# private chat, a line without a command is an /imagine; on by default).
_SWITCHES = ("private", "plain_text")
_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}
# Vary of any image is img2img from its pixels (the image may come from another model, so its
# seed alone would not give it back); subtle keeps more of it than strong (the V buttons').
SUBTLE_IMAGE_DENOISING = 0.4
ETA_SECONDS_UNTIL = 90  # shorter waits are given in seconds, longer ones in minutes
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
        reload: Callable[[], ReloadReport] | None = None,
        default_model: str | None = None,
    ) -> None:
        """`reload`: read presets.toml and the vocabulary again now (`Sources.reload`); without
        it, `reload_sources` reports what `presets` gives. `default_model`: the checkpoint
        jobs are queued for while no operator chose one (`easel models use`); None: whichever
        is loaded when they run."""
        self.store = store
        self.db = dispatcher.db  # where every store call runs: the store's own threads
        self.dispatcher = dispatcher
        self.config = config
        self.vocabulary = vocabulary
        self.presets = presets
        self.native_size = native_size
        self.default_model = default_model
        self._reload = reload
        dispatcher.on_control_change(self._control_changed)

    async def current_model(self) -> str | None:
        """The checkpoint a job queued now is for: the operator's choice (read afresh, so a
        job queued after `easel models use` runs on it), else the default."""
        return (await self.db.run(self.store.control_state)).model or self.default_model

    def _control_changed(self, before: ControlState, after: ControlState) -> None:
        """Another process changed the shared row: a reload asked for, a checkpoint chosen."""
        if after.sources_revision != before.sources_revision:
            self._reload_asked(after.changed_by)
        if after.model != before.model:
            chosen = after.model or f"the default ({self.default_model or 'the loaded one'})"
            log.info(
                "Checkpoint for new jobs: %s (chosen by %s); queued jobs keep theirs",
                chosen,
                after.changed_by or "another process",
            )

    def _reload_asked(self, changed_by: str | None) -> None:
        try:
            report = self.reload_sources()
        except Exception:  # a reload must never stop the bot
            log.exception("Reloading presets.toml and the vocabulary failed")
            return
        who = changed_by or "another process"
        log.info(
            "Reloaded presets and vocabulary (asked by %s): presets %s",
            who,
            ", ".join(report.presets) or "none",
        )
        if report.presets_error:
            log.warning(
                "presets.toml is not used, the last good presets stay: %s", report.presets_error
            )
        if report.vocabulary_error:
            log.warning(
                "The vocabulary override is not used, the last good one stays: %s",
                report.vocabulary_error,
            )

    def reload_sources(self) -> ReloadReport:
        """Re-read presets.toml and the vocabulary; the next job uses them. A broken file
        leaves the previous version in use, and the report says what is wrong."""
        if self._reload is not None:
            return self._reload()
        return ReloadReport(tuple(self.presets().ids()))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.dispatcher.start()

    async def stop(self) -> int:
        """Stop gracefully (see Dispatcher.stop); how many running jobs the shutdown
        timeout stopped."""
        return await self.dispatcher.stop()

    async def failed(self) -> Exception:
        """Wait until the database fails for good (deleted, replaced, corrupted): the bot
        must stop, and the error says why."""
        return await self.dispatcher.failed()

    def is_busy(self) -> bool:
        """Whether a batch is running now."""
        return bool(self.dispatcher.running_jobs())

    def stop_now(self) -> int:
        """During `stop`: stop the running batch now; its jobs run again at the next start.
        How many jobs that was."""
        return self.dispatcher.stop_now()

    def subscribe(self, platform: str, handler: EventHandler, previews: bool = False) -> None:
        """Receive the events of jobs from `platform`; results it missed while no front end
        was listening are delivered by `deliver_missed`. `previews`: PROGRESS events carry a
        small JPEG of the images being made (computed only when someone shows them)."""
        self.dispatcher.bus.subscribe(platform, handler, previews)

    async def bind_status_message(self, job_id: int, message_id: str) -> None:
        """The front end's own message about a job (the one it edits with progress); every
        later event of the job carries it, also after a restart."""
        await self.dispatcher.bind_status_message(job_id, message_id)

    async def grant_role(self, user: UserRef, role: Role) -> None:
        """For the operator's own seat (the console's user is an admin)."""
        record = await self.user(user)
        await self.db.run(self.store.set_role, record.id, role)

    async def deliver_missed(self, platform: str) -> int:
        return await self.dispatcher.redeliver(platform)

    async def wait_until_idle(self, platform: str) -> None:
        await self.dispatcher.wait_until_idle(platform)

    async def wait_until_idle_or_paused(self, platform: str) -> int:
        """Wait until the platform's jobs are done, or until the queue is paused and none of
        them runs: how many stay queued (0: all are done)."""
        return await self.dispatcher.wait_until_idle_or_paused(platform)

    async def user(self, user: UserRef) -> UserRecord:
        """The stored user; names from a platform are made valid text first (a lone
        surrogate in a platform's JSON cannot be stored)."""
        name = clean_text(user.display_name) if user.display_name is not None else None
        return await self.db.run(
            self.store.user,
            user.platform,
            clean_text(user.platform_user_id),
            name,
            _locale_or_none(user),
        )

    async def locale(self, user: UserRef) -> str:
        """The language to answer in: the one the platform gives now, else the one it gave
        last time."""
        return normalise_locale((await self.user(user)).locale)

    # ------------------------------------------------------------------ imagine

    async def options(
        self,
        user: UserRef,
        text: str,
        origin: Origin | None = None,
        init_image: bytes | ImageRef | None = None,
        control_image: bytes | ImageRef | None = None,
        **fields: object,
    ) -> ImagineOptions:
        """Parse an /imagine line (and typed fields) with the user's saved defaults.
        `init_image` (an attachment's bytes, or an image Easel stored) makes it img2img, or
        is the control image of a line with `--cn`; `control_image` is one given apart.

        The preset is, first to last: `--preset` in the line (or a typed field), the user's
        saved preset (`/settings preset=...`), then the default preset of the chat `origin`
        names (`/admin rules preset NAME`): what a person chose for themselves wins over the
        room's default."""
        if init_image is not None:
            fields["init_image"] = self._input_image(init_image)
        if control_image is not None:
            fields["control_image"] = self._input_image(control_image)
        record = await self.user(user)
        saved = await self.db.run(self.store.settings, record.id)
        defaults = {
            flag: _setting_text(getattr(saved, name)) for name, flag in _SETTING_FLAGS.items()
        }
        if origin is not None and not defaults["preset"]:
            chat = await self.db.run(self.store.chat, origin.platform, origin.chat)
            defaults["preset"] = chat.default_preset or ""
        try:
            return options_from_fields(
                text, self.vocabulary(), self.config.limits, defaults=defaults, **fields
            )
        except OptionsError as error:
            raise _options_refusal(error) from None

    async def imagine(
        self,
        user: UserRef,
        options: ImagineOptions,
        origin: Origin,
        kind: JobKind = JobKind.IMAGINE,
        parent_id: int | None = None,
    ) -> Ticket:
        record = await self.user(user)
        request = self._request_of(options)
        await self._check_words(request.prompt, origin)
        await self._admit(record, request.image_count)
        prepared = await self._prepare(request)
        if request.init_image is not None and request.init_image.data is not None:
            stored = await asyncio.to_thread(self._store_input, request.init_image.data)
            prepared = _with_init(prepared, stored)
        control = prepared.work.control if isinstance(prepared.work, GenerationRequest) else None
        if control is not None and control.image.data is not None:
            stored = await asyncio.to_thread(self._store_input, control.image.data)
            prepared = _with_control_image(prepared, stored)
        return await self._enqueue(record, kind, prepared, origin, parent_id)

    def _request_of(self, options: ImagineOptions) -> GenerationRequest:
        """The options as a request, or a localised refusal."""
        try:
            return options.to_request(self.vocabulary(), self.native_size, self.presets())
        except OptionsError as error:
            raise _options_refusal(error) from None
        except PresetLoraMissingError as error:
            raise _preset_refusal(error) from None
        except InvalidRequestError as error:
            raise Refusal(Message(Key.INVALID_REQUEST, {"detail": error_text(error)})) from None

    def _input_image(self, image: bytes | ImageRef) -> ImageRef:
        """An img2img input, checked from its header alone (no pixels decoded)."""
        reference = image if isinstance(image, ImageRef) else ImageRef(data=image)
        try:
            width, height = reference.size()
        except Exception:  # Pillow raises many kinds for what is not an image
            raise Refusal(Message(Key.NOT_AN_IMAGE)) from None
        try:
            check_input_size((width, height), self.config.limits, "The image", "이미지")
        except InvalidRequestError as error:
            raise Refusal(Message(Key.INVALID_REQUEST, {"detail": error_text(error)})) from None
        return reference

    def _store_input(self, data: bytes) -> ImageRef:
        """Keep an uploaded image beside the outputs, so the job row holds a path and a
        restart still has it."""
        digest = hashlib.sha256(data).hexdigest()
        folder = self.config.outputs_dir / "inputs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digest[:32]}.img"
        if not path.exists():
            partial = path.with_suffix(".part")
            partial.write_bytes(data)
            partial.replace(path)
        else:
            # Used again: its age is how `easel prune` tells a forgotten upload.
            with contextlib.suppress(OSError):
                path.touch()
        return ImageRef(path=str(path))

    # ------------------------------------------------------------------ remix

    async def remix_line(self, user: UserRef, job_id: int, origin: Origin | None = None) -> str:
        """The job's prompt and flags as one editable line."""
        job = await self._visible_job(job_id, await self.user(user), origin)
        work = work_of(job)
        if not isinstance(work, GenerationRequest):
            raise Refusal(Message(Key.JOB_NOT_READY, {"job": job.id}))
        return remix_line(work)

    async def remix(self, user: UserRef, job_id: int, text: str, origin: Origin) -> Ticket:
        """Queue an edited line as a new job linked to the one it remixes; an img2img job
        keeps its input image, a ControlNet job its control image (the line's --cn flags say
        whether it is still used)."""
        job = await self._visible_job(job_id, await self.user(user), origin)
        work = work_of(job)
        if not isinstance(work, GenerationRequest):
            raise Refusal(Message(Key.JOB_NOT_READY, {"job": job.id}))
        kept = work.control.image if work.control is not None else None
        options = await self.options(
            user, text, origin, init_image=work.init_image, kept_control_image=kept
        )
        if work.is_inpaint:
            return await self._remix_canvas(user, job, work, options, origin)
        return await self.imagine(user, options, origin, kind=JobKind.REMIX, parent_id=job.id)

    async def _remix_canvas(
        self,
        user: UserRef,
        job: JobRecord,
        work: GenerationRequest,
        options: ImagineOptions,
        origin: Origin,
    ) -> Ticket:
        """The remix of a zoom out or pan (or of a job made from one): the edited line paints
        the same canvas through the same mask, at the canvas's size."""
        record = await self.user(user)
        request = self._request_of(options)
        canvas = (work.width, work.height)
        if request.width is not None and (request.width, request.height) != canvas:
            args = {"job": job.id, "width": work.width, "height": work.height}
            raise Refusal(Message(Key.REMIX_CANVAS_SIZE, args))
        request = replace(
            request,
            width=work.width,
            height=work.height,
            init_image=work.init_image,
            mask_image=work.mask_image,
        )
        await self._check_words(request.prompt, origin)
        await self._admit(record, request.image_count)
        prepared = await self._prepare(request)
        return await self._enqueue(record, JobKind.REMIX, prepared, origin, job.id)

    # ------------------------------------------------------------------ buttons

    async def act(
        self, user: UserRef, job_id: int, action: str | Action, origin: Origin | None = None
    ) -> Ticket:
        """U1-U4, V1-V4, S1-S4 or reroll on a grid, zoom out or pan on an upscaled image;
        anyone may press, and it counts against the presser's limits. The child goes to
        `origin`, or to the grid's own chat."""
        record = await self.user(user)
        chosen = parse_action(action) if isinstance(action, str) else action
        if chosen is None or chosen.kind is JobKind.REMIX:  # remix: remix_line, then remix
            raise Refusal(Message(Key.UNKNOWN_ACTION, {"action": str(action)}))
        await self._visible_job(job_id, record, origin)
        if chosen.move is not None:
            return await self._outpaint(record, job_id, chosen, origin)
        parent, chosen = await self._acted_on(job_id, chosen)
        image = self._chosen_image(parent, chosen)
        work = work_of(parent)
        if not isinstance(work, GenerationRequest):  # an upscale whose original is gone
            raise Refusal(Message(Key.JOB_NOT_READY, {"job": parent.id}))
        count = 1 if chosen.kind is JobKind.UPSCALE else min(4, self.config.limits.max_images)
        if chosen.kind is JobKind.REROLL:
            count = work.image_count
        await self._admit(record, count)
        faces = await self._saved_faces(record) if chosen.kind is JobKind.UPSCALE else None
        child = child_work(chosen, work, image, count, self._upscaler(), faces)
        prepared = await self._prepare(child)
        where = origin or Origin(parent.origin_platform, parent.origin_chat)
        return await self._enqueue(record, chosen.kind, prepared, where, parent.id, chosen.index)

    async def _acted_on(self, job_id: int, action: Action) -> tuple[JobRecord, Action]:
        parent = await self.db.run(self.store.job, job_id, with_images=True)
        if parent is None:
            raise Refusal(Message(Key.JOB_NOT_FOUND, {"job": job_id}))
        if parent.kind is JobKind.UPSCALE and parent.parent_id is not None:
            # A button on an upscaled image acts on the image it was made from.
            original = await self.db.run(self.store.job, parent.parent_id, with_images=True)
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

    async def _outpaint(
        self, user: UserRecord, job_id: int, action: Action, origin: Origin | None
    ) -> Ticket:
        """Zoom out or pan: the upscaled image itself (not the grid image it came from) on a
        bigger canvas, and a grid of new pictures painted around it with the grid's request.
        The canvas and its mask are kept as files, so the job row holds paths."""
        assert action.move is not None
        upscaled = await self.db.run(self.store.job, job_id, with_images=True)
        if upscaled is None:
            raise Refusal(Message(Key.JOB_NOT_FOUND, {"job": job_id}))
        if upscaled.kind is not JobKind.UPSCALE or upscaled.parent_id is None:
            raise Refusal(Message(Key.OUTPAINT_NEEDS_UPSCALE, {"job": job_id}))
        if upscaled.status is not JobStatus.DONE or not upscaled.images:
            raise Refusal(Message(Key.JOB_NOT_READY, {"job": job_id}))
        grid = await self.db.run(self.store.job, upscaled.parent_id, with_images=True)
        if grid is None:
            raise Refusal(Message(Key.JOB_NOT_FOUND, {"job": upscaled.parent_id}))
        work = work_of(grid)
        if not isinstance(work, GenerationRequest) or not grid.images:
            raise Refusal(Message(Key.JOB_NOT_READY, {"job": grid.id}))
        limits = self.config.limits
        count = min(4, limits.max_images)
        await self._admit(user, count)
        width = work.width or grid.images[0].width
        height = work.height or grid.images[0].height
        size = canvas_size(action.move, width, height, limits.max_area)
        image = Path(upscaled.images[0].path)
        try:
            canvas, mask = await asyncio.to_thread(self._store_canvas, image, action.move, size)
        except OSError:  # the image's file is gone (deleted by hand)
            raise Refusal(Message(Key.JOB_NOT_READY, {"job": job_id})) from None
        request = outpaint_request(work, canvas, mask, size, count)
        if self.config.inpaint_model:  # an inpainting checkpoint paints the new frame
            request = replace(request, model=self.config.inpaint_model)
        prepared = await self._prepare(request)
        where = origin or Origin(upscaled.origin_platform, upscaled.origin_chat)
        return await self._enqueue(user, action.kind, prepared, where, upscaled.id)

    def _store_canvas(
        self, image_path: Path, move: Move, size: tuple[int, int]
    ) -> tuple[ImageRef, ImageRef]:
        """The outpainting canvas and its mask from an image file, stored as uploads are
        (`_store_input`). Resizing and filling take a while: call it off the event loop."""
        with Image.open(image_path) as image:
            canvas = build_canvas(image, move, size)
        return self._store_input(_png(canvas.image)), self._store_input(_png(canvas.mask))

    async def _saved_faces(self, user: UserRecord) -> tuple[str, float] | None:
        """The user's restore-faces setting, for their U upscales (None: not set, or no
        longer a valid choice)."""
        saved = await self.db.run(self.store.settings, user.id)
        if not saved.restore_faces:
            return None
        try:
            return parse_restore_faces(saved.restore_faces)
        except OptionsError:
            return None

    def _upscaler(self) -> str | None:
        from pipeline.upscale import find_upscalers

        if self.config.upscaler:
            return self.config.upscaler
        found = find_upscalers(self.config.models_dir)
        return found[0].name if found else None

    # ------------------------------------------------------------------ any image

    async def upscale_image(self, user: UserRef, image: bytes, origin: Origin) -> Ticket:
        """U on an image from anywhere (a chat message): enlarged 2x, then the detail pass
        with the A1111 parameters the image carries (none: a plain enlargement)."""
        record = await self.user(user)
        self._input_image(image)
        info = await self._image_parameters(image)
        if info is not None:
            await self._check_words(info.prompt, origin)
        await self._admit(record, 1)
        stored = await asyncio.to_thread(self._store_input, image)
        faces = await self._saved_faces(record)
        work = UpscaleRequest(image=stored, scale=2, upscaler=self._upscaler())
        if faces is not None:
            work = replace(work, face_restoration=faces[0], codeformer_weight=faces[1])
        prepared = await self._prepare(work)
        return await self._enqueue(record, JobKind.UPSCALE, prepared, origin)

    async def vary_image(
        self, user: UserRef, image: bytes, origin: Origin, strong: bool = False
    ) -> Ticket:
        """Variations of an image from anywhere: img2img from its pixels with the prompt,
        negative prompt, steps, CFG, sampler and size of its A1111 parameters. An image
        without them is varied with an empty prompt, the user's saved steps, at
        its own size (fitted within the size limit): the picture alone guides it."""
        record = await self.user(user)
        reference = self._input_image(image)
        info = await self._image_parameters(image)
        base = await self._vary_base(record, info, reference.size())
        await self._check_words(base.prompt, origin)
        count = min(4, self.config.limits.max_images)
        await self._admit(record, count)
        stored = await asyncio.to_thread(self._store_input, image)
        strength = STRONG_DENOISING if strong else SUBTLE_IMAGE_DENOISING
        request = strong_variation(base, stored, count, strength)
        # img2img runs steps x strength steps: at least one.
        request = replace(request, steps=max(request.steps, math.ceil(1 / strength)))
        prepared = await self._prepare(request)
        kind = JobKind.VARY_STRONG if strong else JobKind.VARY_SUBTLE
        return await self._enqueue(record, kind, prepared, origin)

    async def _image_parameters(self, image: bytes) -> Infotext | None:
        try:
            return await asyncio.to_thread(read_infotext, image)
        except InvalidRequestError:
            return None

    async def _vary_base(
        self, user: UserRecord, info: Infotext | None, size: tuple[int, int]
    ) -> GenerationRequest:
        limits = self.config.limits
        if info is not None:
            base = request_from_infotext(info)
        else:
            saved = await self.db.run(self.store.settings, user.id)
            base = GenerationRequest(prompt="")
            if saved.steps is not None:
                base = replace(base, steps=int(saved.steps))
        width, height = _fitted(
            (base.width, base.height) if base.width and base.height else size, limits.max_area
        )
        return replace(
            base,
            width=width,
            height=height,
            steps=min(max(base.steps, limits.min_steps), limits.max_steps),
            cfg_scale=min(max(base.cfg_scale, limits.min_cfg), limits.max_cfg),
            clip_skip=min(base.clip_skip, limits.max_clip_skip),
        )

    # ------------------------------------------------------------------ queueing

    async def _check_words(self, prompt: str, origin: Origin) -> None:
        chat = await self.db.run(self.store.chat, origin.platform, origin.chat)
        word = first_match(prompt, (*self.config.banned_words, *chat.banned_words))
        if word is not None:
            raise Refusal(Message(Key.BANNED_WORD, {"word": word}))
        if not nsfw_allowed(origin.adult_ok, chat.nsfw_allowed):
            word = nsfw_word(prompt)
            if word is not None:
                raise Refusal(Message(Key.NSFW_WORD, {"word": word}))

    async def _admit(self, user: UserRecord, images: int) -> None:
        """Bans, the daily quota and the queue caps; raises Refusal, writes nothing."""
        if user.banned_now():
            raise Refusal(_ban_message(user))
        daily = self.config.daily_cap(user.role, user.daily_images)
        midnight = datetime.combine(datetime.now(UTC).date(), time(0), tzinfo=UTC)
        # No cap, no count: this runs twice per request.
        if daily != NO_CAP:
            made = await self.db.run(self.store.images_since, user.id, midnight)
            if made + images > daily:
                raise Refusal(Message(Key.DAILY_QUOTA, {"limit": daily}))
        # The queue caps after the count's await: the queue as it is now.
        queued = self.config.queued_cap(user.role, user.max_queued)
        if self.dispatcher.scheduler.queued_for(user.id) >= queued:
            raise Refusal(Message(Key.QUEUE_FULL_USER, {"jobs": job_count(queued)}))
        if len(self.dispatcher.scheduler) >= self.config.max_queue:
            limit = job_count(self.config.max_queue)
            raise Refusal(Message(Key.QUEUE_FULL_GLOBAL, {"jobs": limit}))

    async def _prepare(self, work: Work) -> PreparedWork:
        """Checked work, for the checkpoint it is queued for (see `current_model`)."""
        work = with_model(work, await self.current_model())
        try:
            return await self.dispatcher.executor.prepare(work)
        except OptionsError as error:
            raise _options_refusal(error) from None
        except UnknownLoraError as error:
            available = _available_loras(error.available)
            raise Refusal(
                Message(Key.UNKNOWN_LORA, {"name": error.name, "available": available})
            ) from None
        except InvalidRequestError as error:
            raise Refusal(Message(Key.INVALID_REQUEST, {"detail": error_text(error)})) from None

    async def _enqueue(
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
        new = NewJob(
            user_id=user.id,
            kind=kind,
            request=work.to_json(),
            batch_key=prepared.batch_key,
            image_count=images,
            cost=prepared.cost,
            origin_platform=origin.platform,
            origin_chat=origin.chat,
            origin_message=origin.message,
            parent_id=parent_id,
            image_index=image_index,
        )
        # The checks again, and the row, with no other job queued in between (the lock):
        # requests that arrived while this one was being prepared may have filled the queue.
        async with self.dispatcher.queue_lock:
            await self._admit(user, images)
            job = await self.db.run(self.store.add_job, new)
            # From here to the QUEUED event, no await: the job joins the queue as written.
            position = self.dispatcher.enqueue(job, user)
            eta = self.dispatcher.eta_seconds(job.id, position)
            # What preparing changed (a size rounded to multiples of 8) is said, not hidden.
            notes = tuple(Message(Key.NOTE, {"text": note}) for note in prepared.notes)
            if self.dispatcher.paused():
                notes = (*notes, Message(Key.QUEUE_PAUSED))
            reply = Reply(_queued_message(job.id, position, eta), lines=notes)
            self.dispatcher.announce_queued(job, reply, position)
        return Ticket(job.id, position, eta, reply)

    # ------------------------------------------------------------------ the rest

    async def cancel(self, user: UserRef, job_id: int, origin: Origin | None = None) -> Reply:
        """The owner or an admin may cancel a queued or running job."""
        record = await self.user(user)
        job = await self._visible_job(job_id, record, origin)
        if job.user_id != record.id and record.role is not Role.ADMIN:
            raise Refusal(Message(Key.NOT_YOUR_JOB, {"job": job_id}))
        outcome = await self.dispatcher.cancel(job)
        if outcome is CancelOutcome.CANCELLED:
            return Reply(Message(Key.CANCELLED, {"job": job_id}))
        if outcome is CancelOutcome.STOPPING:
            return Reply(Message(Key.CANCEL_REQUESTED, {"job": job_id}))
        job = await self.db.run(self.store.job, job_id) or job
        status = Message(_STATUS_KEYS[job.status])
        raise Refusal(Message(Key.ALREADY_FINISHED, {"job": job_id, "status": status}))

    async def info(
        self, job_id: int, user: UserRef | None = None, origin: Origin | None = None
    ) -> Reply:
        """A job's details, for those who may see it (`_visible_job`); with no `user`, for
        the operator's own tools."""
        if user is None:
            found = await self.db.run(self.store.job, job_id, with_images=True)
            if found is None:
                raise Refusal(Message(Key.JOB_NOT_FOUND, {"job": job_id}))
            job = found
        else:
            asker = await self.user(user)
            job = await self._visible_job(job_id, asker, origin, with_images=True)
        owner = await self.db.run(self.store.user_by_id, job.user_id)
        kind, status = Message(KIND_KEYS[job.kind]), Message(_STATUS_KEYS[job.status])
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
                "images": _image_count(job),
                "prompt": prompt_preview(job),
            },
        )
        if job.status is not JobStatus.DONE:
            return Reply(summary)
        result = await self.dispatcher.result_reply(job)
        return Reply(
            summary,
            result.images,
            result.grid,
            result.buttons,
            result.parameters,
            result.private,
            attachments=result.attachments,
        )

    async def history(self, user: UserRef, page: int = 1) -> Reply:
        record = await self.user(user)
        found = await self.db.run(self.store.history, record.id, max(1, page), HISTORY_PAGE)
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
                    "kind": Message(KIND_KEYS[job.kind]),
                    "status": Message(_STATUS_KEYS[job.status]),
                    "prompt": prompt_preview(job, 60),
                },
            )
            for job in found.jobs
        )
        return Reply(header, lines=lines)

    async def settings(self, user: UserRef) -> Reply:
        record = await self.user(user)
        return Reply(Message(Key.SETTINGS), lines=await self._setting_lines(record.id))

    async def plain_text_prompts(self, user: UserRef) -> bool:
        """Whether a line without a command, in a private chat, is an /imagine for this user
        (`/settings plain_text=off` turns it off)."""
        record = await self.user(user)
        return (await self.db.run(self.store.settings, record.id)).plain_text

    async def update_settings(self, user: UserRef, changes: Mapping[str, str]) -> Reply:
        """Save defaults for new jobs (`style=watercolor`, `ar=3:2`, `private=on`); an empty
        value, `none` or `default` clears one. All are checked before any is saved."""
        record = await self.user(user)
        values: dict[str, str | int | bool | None] = {}
        for raw_name, raw in changes.items():
            name = _SETTING_ALIASES.get(raw_name.lower(), raw_name.lower())
            try:
                values[name] = self._setting_value(name, raw.strip())
            except Refusal as refusal:
                raise _as_typed(refusal, raw_name) from None
        saved = await self.db.run(self.store.update_settings, record.id, **values)
        return Reply(Message(Key.SETTINGS_UPDATED), lines=_setting_lines_of(saved))

    async def setting_menus(
        self, user: UserRef, per_page: int, pages: Mapping[str, int] | None = None
    ) -> tuple[SettingMenu, ...]:
        """The settings with a menu (style, shot, lighting, quality, aspect), each at page
        `pages[name]`, else at the page holding the saved value; `per_page` choices a page."""
        record = await self.user(user)
        saved = await self.db.run(self.store.settings, record.id)
        return tuple(
            setting_menu(
                name,
                self.vocabulary(),
                _setting_text(getattr(saved, name)) or None,
                per_page,
                (pages or {}).get(name),
            )
            for name in MENU_SETTINGS
        )

    def _setting_value(self, name: str, raw: str) -> str | int | bool | None:
        if name in _SWITCHES:
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            detail = Localized("use on or off", "on 또는 off를 쓰세요")
            raise Refusal(
                Message(Key.SETTINGS_BAD_VALUE, {"name": name, "value": raw, "detail": detail})
            )
        if name not in _SETTING_FLAGS:
            allowed = ", ".join([*(_SETTING_SHOWN.get(n, n) for n in _SETTING_FLAGS), *_SWITCHES])
            raise Refusal(Message(Key.SETTINGS_UNKNOWN, {"name": name, "allowed": allowed}))
        if raw.lower() in _CLEAR:
            return None
        flag = _SETTING_FLAGS[name]
        try:
            parsed = options_from_fields("x", self.vocabulary(), self.config.limits, **{flag: raw})
            if name == "preset":
                self.presets().usable(raw)
        except PresetLoraMissingError as error:
            raise _preset_refusal(error) from None
        except (OptionsError, InvalidRequestError) as error:
            detail = error_text(error)
            raise Refusal(
                Message(Key.SETTINGS_BAD_VALUE, {"name": name, "value": raw, "detail": detail})
            ) from None
        if name == "aspect_ratio":
            return raw.replace(" ", "")
        if name == "restore_faces":
            assert parsed.restore_faces is not None
            try:  # a restorer this bot's models folder has, as a job is checked against
                resolve_face_restorer(parsed.restore_faces[0], self.config.models_dir)
            except InvalidRequestError as error:
                detail = error_text(error)
                args = {"name": name, "value": raw, "detail": detail}
                raise Refusal(Message(Key.SETTINGS_BAD_VALUE, args)) from None
            return _faces_text(parsed.restore_faces)
        value = getattr(parsed, "lighting" if name == "lighting" else name)
        return value

    async def _setting_lines(self, user_id: int) -> tuple[Message, ...]:
        return _setting_lines_of(await self.db.run(self.store.settings, user_id))

    async def _visible_job(
        self,
        job_id: int,
        asker: UserRecord,
        origin: Origin | None,
        with_images: bool = False,
    ) -> JobRecord:
        """A job the asker may see and act on: their own; any, for an admin; or one posted in
        the shared chat they are asking from, where the chat shares results and the owner
        did not make theirs private. Everyone else is told it does not exist, as for a
        number nobody used: job ids are sequential, so anything else would leak."""
        job = await self.db.run(self.store.job, job_id, with_images=with_images)
        if job is not None and (
            job.user_id == asker.id
            or asker.role is Role.ADMIN
            or await self._shared_with(job, origin)
        ):
            return job
        raise Refusal(Message(Key.JOB_NOT_FOUND, {"job": job_id}))

    async def _shared_with(self, job: JobRecord, origin: Origin | None) -> bool:
        if origin is None or (origin.platform, origin.chat) != (
            job.origin_platform,
            job.origin_chat,
        ):
            return False
        chat = await self.db.run(self.store.chat, origin.platform, origin.chat)
        if not chat.shared_results:
            return False
        return not (await self.db.run(self.store.settings, job.user_id)).private

    async def last_grid(self, user: UserRef, origin: Origin) -> int:
        """The job `/u 2` without a number acts on: the newest grid in this chat that the
        user may act on."""
        job = await self.db.run(self.store.last_grid, origin.platform, origin.chat)
        if job is None:
            raise Refusal(Message(Key.NO_LAST_GRID))
        return (await self._visible_job(job.id, await self.user(user), origin)).id

    async def active_jobs(self, user: UserRef) -> list[JobRecord]:
        """The user's own jobs that can still be cancelled: running ones first, then the
        queued ones in the queue's order (both as they were when the user was read)."""
        record = await self.user(user)
        running = [job for job in self.dispatcher.running_jobs() if job.user_id == record.id]
        queued = [
            item.job_id for item in self.dispatcher.scheduler.jobs() if item.user_id == record.id
        ]
        return running + await self.db.run(jobs_by_id, self.store, queued)

    async def queue_status(self, user: UserRef) -> Reply:
        """How long the queue is, and where the user's own jobs are in it."""
        record = await self.user(user)
        scheduler = self.dispatcher.scheduler
        running = self.dispatcher.running_jobs()
        header = Message(Key.QUEUE_STATUS, {"queued": len(scheduler), "running": len(running)})
        lines = [
            Message(
                Key.QUEUE_MINE_RUNNING,
                {"job": job.id, "status": Message(Key.STATUS_RUNNING)},
            )
            for job in running
            if job.user_id == record.id
        ]
        lines += [
            Message(
                Key.QUEUE_MINE,
                {
                    "job": item.job_id,
                    "status": Message(Key.STATUS_QUEUED),
                    "position": scheduler.position(item.job_id) + 1,
                },
            )
            for item in scheduler.jobs()
            if item.user_id == record.id
        ]
        if not lines:
            lines.append(Message(Key.QUEUE_MINE_NONE))
        if self.dispatcher.paused():
            lines.insert(0, Message(Key.QUEUE_PAUSED))
        return Reply(header, lines=tuple(lines))

    async def pnginfo(self, image: bytes) -> Reply:
        """The parameters stored in an image; read off the event loop (a hostile file must
        not stall the chats)."""
        return await asyncio.to_thread(self._pnginfo, image)

    def _pnginfo(self, image: bytes) -> Reply:
        try:
            info = read_infotext(image)
        except InvalidRequestError as error:
            if str(error).startswith("not an image"):
                raise Refusal(Message(Key.NOT_AN_IMAGE)) from None
            raise Refusal(Message(Key.INVALID_REQUEST, {"detail": error_text(error)})) from None
        if info is None:
            return Reply(Message(Key.PNGINFO_NONE))
        parameters = format_infotext(info)
        return Reply(Message(Key.PNGINFO, {"parameters": parameters}), parameters=parameters)


def _queued_message(job_id: int, position: int, eta: float | None) -> Message:
    if eta is None:
        return Message(Key.QUEUED, {"job": job_id, "position": position})
    if eta < ETA_SECONDS_UNTIL:
        seconds = max(5, 5 * math.ceil(eta / 5))
        return Message(
            Key.QUEUED_ETA_SECONDS, {"job": job_id, "position": position, "seconds": seconds}
        )
    minutes = math.ceil(eta / 60)
    return Message(Key.QUEUED_ETA, {"job": job_id, "position": position, "minutes": minutes})


def _image_count(job: JobRecord) -> Message:
    """What /info says of a job's images: made, asked for, or none (cancelled, failed)."""
    if job.status is JobStatus.DONE:
        return Message(Key.IMAGES_MADE, {"count": len(job.images) or job.image_count})
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return Message(Key.IMAGES_REQUESTED, {"count": job.image_count})
    return Message(Key.IMAGES_NONE)


def _with_init(prepared: PreparedWork, image: ImageRef) -> PreparedWork:
    assert isinstance(prepared.work, GenerationRequest)
    return replace(prepared, work=replace(prepared.work, init_image=image))


def _with_control_image(prepared: PreparedWork, image: ImageRef) -> PreparedWork:
    """The prepared job with its control image kept as a stored file."""
    assert isinstance(prepared.work, GenerationRequest) and prepared.work.control is not None
    control = replace(prepared.work.control, image=image)
    return replace(prepared, work=replace(prepared.work, control=control))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fitted(size: tuple[int, int], max_area: int) -> tuple[int, int]:
    """A size scaled down to `max_area` pixels where it is larger, in multiples of 8."""
    width, height = size
    scale = min(1.0, math.sqrt(max_area / (width * height)))
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)


def _preset_refusal(error: PresetLoraMissingError) -> Refusal:
    """The operator's message names folders on the server; a chat user gets the gist."""
    files = ", ".join(error.missing)
    return Refusal(Message(Key.PRESET_UNAVAILABLE, {"preset": error.preset_id, "files": files}))


def _options_refusal(error: OptionsError) -> Refusal:
    return Refusal(Message(Key.INVALID_OPTIONS, {"detail": Localized(error.en, error.ko)}))


def _locale_or_none(user: UserRef) -> str | None:
    return normalise_locale(user.locale) if user.locale else None


def _setting_lines_of(saved: SettingsRecord) -> tuple[Message, ...]:
    lines = []
    for name in (*_SETTING_FLAGS, *_SWITCHES):
        value = getattr(saved, name)
        shown: str | Message = Message(Key.SETTINGS_NOT_SET) if value is None else str(value)
        if name in _SWITCHES:
            shown = "on" if value else "off"
        label = _SETTING_SHOWN.get(name, name)
        lines.append(Message(Key.SETTING_LINE, {"name": label, "value": shown}))
    return tuple(lines)


def _faces_text(choice: tuple[str, float] | None) -> str | None:
    """A restore-faces choice as it is saved: `gfpgan`, or `codeformer:0.7` off the default
    weight."""
    if choice is None:
        return None
    name, weight = choice
    return name if weight == CODEFORMER_WEIGHT else f"{name}:{weight:g}"


def _setting_text(value: object) -> str:
    return "" if value is None else str(value)


def _available_loras(names: Sequence[str]) -> Message:
    if not names:
        return Message(Key.LORAS_NONE)
    return Message(Key.LORAS_HERE, {"names": ", ".join(names)})


def _as_typed(refusal: Refusal, typed: str) -> Refusal:
    """A refused setting named as the user typed it (`ar`, not `aspect_ratio`)."""
    message = refusal.reply.message
    if message.key is not Key.SETTINGS_BAD_VALUE:
        return refusal
    named = Message(message.key, {**message.args, "name": typed})
    return Refusal(named)


def _ban_message(user: UserRecord) -> Message:
    """What a banned user is told: the reason, and until when when the ban has an end."""
    reason = user.ban_reason
    if user.banned_until is not None:
        until = utc_text(user.banned_until)
        if reason:
            return Message(Key.BANNED_UNTIL, {"reason": reason, "until": until})
        return Message(Key.BANNED_UNTIL_NO_REASON, {"until": until})
    if reason:
        return Message(Key.BANNED, {"reason": reason})
    return Message(Key.BANNED_NO_REASON)
