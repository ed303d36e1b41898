"""`easel users list|show|ban|unban|role|quota|export|forget`: the people who use the bot.

A user is named by their number in `easel users list` or as PLATFORM:ID (`discord:1234`,
`telegram:99`, `console:me`). Every change is written to the database with the shared revision
bumped, so a running bot acts on it within its poll (half a second)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich import box
from rich.table import Table

from bot.cli.common import HELP_STYLE, err, operator_name, operator_store, out
from bot.cli.output import JsonOption, human_bytes, print_json, to_plain
from bot.cli.texts import bilingual
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.core.config import CoreConfig
    from bot.store import JobRecord, Role, Store, UserRecord
    from bot.store.people import ForgetPlan, UserActivity

RECENT_JOBS = 10
DEFAULT_WORDS = frozenset({"default", "none"})  # a quota option's word for "the global one"
UNLIMITED_WORDS = frozenset({"unlimited", "no-cap"})

users_app = typer.Typer(
    help=bilingual(
        "The bot's users: list them, ban, set roles and quotas, export or forget one.",
        "봇 사용자: 목록, 차단, 역할과 할당량 설정, 한 사람의 데이터 내보내기와 삭제.",
    ),
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
)

UserArgument = Annotated[
    str,
    typer.Argument(
        metavar="USER",
        help=bilingual(
            "The user's number in `easel users list`, or PLATFORM:ID (discord:1234, "
            "telegram:99, console:me).",
            "`easel users list`의 번호, 또는 PLATFORM:ID(discord:1234, telegram:99, console:me).",
        ),
        show_default=False,
    ),
]


# ---------------------------------------------------------------------------- what is printed


@dataclass(frozen=True)
class Limit:
    """A limit as the bot applies it: `value` None is no cap; `own` when it is the user's own
    override rather than the global setting."""

    value: int | None
    own: bool


@dataclass(frozen=True)
class UserView:
    id: int
    platform: str
    platform_user_id: str
    name: str | None
    locale: str
    role: str
    banned: bool  # a ban in force now (one whose end has passed is none)
    ban_reason: str | None
    banned_until: datetime | None
    daily_images: Limit
    max_queued: Limit
    max_running: Limit
    jobs_today: int
    jobs_total: int
    images_today: int
    images_total: int
    last_seen: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class JobLine:
    id: int
    kind: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    image_count: int
    prompt: str | None


@dataclass(frozen=True)
class UserDetails:
    user: UserView
    settings: dict[str, Any]
    recent_jobs: list[JobLine] = field(default_factory=list)


def view(activity: UserActivity, config: CoreConfig) -> UserView:
    from bot.core.config import NO_CAP

    user = activity.user
    banned = user.banned_now()

    def limit(value: int, override: int | None) -> Limit:
        return Limit(None if value >= NO_CAP else value, override is not None)

    return UserView(
        id=user.id,
        platform=user.platform,
        platform_user_id=user.platform_user_id,
        name=user.display_name,
        locale=user.locale,
        role=user.role.value,
        banned=banned,
        ban_reason=user.ban_reason if banned else None,
        banned_until=user.banned_until if banned else None,
        daily_images=limit(config.daily_cap(user.role, user.daily_images), user.daily_images),
        max_queued=limit(config.queued_cap(user.role, user.max_queued), user.max_queued),
        max_running=limit(config.running_cap(user.role, user.max_running), user.max_running),
        jobs_today=activity.jobs_today,
        jobs_total=activity.jobs_total,
        images_today=activity.images_today,
        images_total=activity.images_total,
        last_seen=activity.last_seen,
        created_at=user.created_at,
    )


def job_line(job: JobRecord) -> JobLine:
    from bot.store.people import request_document

    request = request_document(job)
    prompt = request.get("prompt") if isinstance(request, dict) else None
    return JobLine(
        id=job.id,
        kind=job.kind.value,
        status=job.status.value,
        created_at=job.created_at,
        finished_at=job.finished_at,
        image_count=job.image_count,
        prompt=prompt if isinstance(prompt, str) else None,
    )


# ---------------------------------------------------------------------------- reading


@users_app.command(
    "list",
    help=bilingual(
        "List users: role, ban, daily quota, jobs and images today and in all, last seen.",
        "사용자 목록: 역할, 차단, 하루 할당량, 오늘과 전체 작업과 이미지 수, 마지막 활동.",
    ),
)
def list_command(
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            metavar="user|vip|admin",
            help=bilingual("Only users with this role.", "이 역할의 사용자만."),
        ),
    ] = None,
    banned: Annotated[
        bool,
        typer.Option(
            "--banned",
            help=bilingual("Only users banned now.", "지금 차단된 사용자만."),
        ),
    ] = False,
    platform: Annotated[
        str | None,
        typer.Option(
            "--platform",
            metavar="console|discord|telegram",
            help=bilingual("Only users of this platform.", "이 플랫폼의 사용자만."),
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    from bot.store.people import list_users

    chosen_role = _role(role) if role is not None else None
    chosen_platform = _platform(platform) if platform is not None else None
    settings = Settings()
    with _opened(settings) as store:
        people = list_users(
            store, role=chosen_role, banned=True if banned else None, platform=chosen_platform
        )
    config = _config(settings)
    views = [view(person, config) for person in people]
    if as_json:
        print_json(views)
        return
    if not views:
        out.print(bilingual("No users.", "사용자가 없습니다."))
        return
    out.print(_users_table(views))


@users_app.command(
    "show",
    help=bilingual(
        "Show one user: what `list` shows, their settings and their newest jobs.",
        "한 사용자: `list`의 내용과 설정, 최근 작업.",
    ),
)
def show_command(user: UserArgument, as_json: JsonOption = False) -> None:
    from bot.store.people import recent_jobs, user_activity

    settings = Settings()
    with _opened(settings) as store:
        record = _resolve(store, user)
        activity = user_activity(store, record.id)
        user_settings = store.settings(record.id)
        jobs = recent_jobs(store, record.id, RECENT_JOBS)
    chosen = {
        name: value
        for name, value in to_plain(user_settings).items()
        if name not in ("user_id", "updated_at")
    }
    details = UserDetails(
        user=view(activity, _config(settings)),
        settings=chosen,
        recent_jobs=[job_line(job) for job in jobs],
    )
    if as_json:
        print_json(details)
        return
    _print_details(details)


# ---------------------------------------------------------------------------- changing


@users_app.command(
    "ban",
    help=bilingual(
        "Ban a user: they can queue nothing, and their queued jobs are cancelled. A running "
        "bot obeys within a second. PLATFORM:ID of someone never seen bans them in advance.",
        "사용자를 차단합니다. 새 작업을 넣을 수 없고 대기 중인 작업은 취소됩니다. 실행 중인 "
        "봇에 1초 안에 적용됩니다. 아직 본 적 없는 PLATFORM:ID도 미리 차단할 수 있습니다.",
    ),
)
def ban_command(
    user: UserArgument,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            metavar="TEXT",
            help=bilingual("What the user is told.", "사용자에게 알려 줄 이유."),
        ),
    ] = None,
    length: Annotated[
        str | None,
        typer.Option(
            "--for",
            metavar="30m|12h|7d|2w",
            help=bilingual(
                "How long the ban lasts; without it, until `easel users unban`.",
                "차단 기간. 없으면 `easel users unban` 할 때까지.",
            ),
        ),
    ] = None,
) -> None:
    from bot.core.durations import end_after
    from bot.store.people import ban_user, running_jobs

    until = end_after(_duration(length)) if length is not None else None
    text = reason.strip() if reason else None
    with _opened() as store:
        record = _resolve(store, user, create=True)
        result = ban_user(store, record.id, text or None, until, operator_name())
        running = running_jobs(store, record.id)
    out.print(_ban_line(result.user))
    if result.cancelled:
        ids = _ids(result.cancelled)
        out.print(
            bilingual(
                f"Cancelled {len(result.cancelled)} queued job(s): {ids}.",
                f"대기 중인 작업 {len(result.cancelled)}개를 취소했습니다: {ids}.",
            )
        )
    if running:
        out.print(
            bilingual(
                f"Still running: {_ids(running)} (it finishes; `easel jobs cancel N` stops it).",
                f"실행 중: {_ids(running)} (끝까지 실행됩니다. "
                "`easel jobs cancel N`으로 멈춥니다).",
            )
        )


@users_app.command(
    "unban",
    help=bilingual("Lift a user's ban.", "사용자의 차단을 풉니다."),
)
def unban_command(user: UserArgument) -> None:
    from bot.store.people import unban_user

    with _opened() as store:
        record = _resolve(store, user)
        if not record.banned_now():
            out.print(
                bilingual(
                    f"{_name(record)} was not banned; nothing changed.",
                    f"{_name(record)}은(는) 차단되어 있지 않았습니다. 바뀐 것은 없습니다.",
                )
            )
            return
        unban_user(store, record.id, operator_name())
    out.print(
        bilingual(f"{_name(record)} is no longer banned.", f"{_name(record)}의 차단을 풀었습니다.")
    )


@users_app.command(
    "role",
    help=bilingual(
        "Set a user's role: user, vip or admin (their queue tier and limits).",
        "사용자의 역할을 정합니다: user, vip, admin(대기열 순위와 한도).",
    ),
)
def role_command(
    user: UserArgument,
    role: Annotated[
        str,
        typer.Argument(
            metavar="ROLE",
            help=bilingual("The new role: user, vip or admin.", "새 역할: user, vip, admin."),
            show_default=False,
        ),
    ],
) -> None:
    from bot.store.people import set_user_role

    chosen = _role(role)
    with _opened() as store:
        record = _resolve(store, user, create=True)
        changed = set_user_role(store, record.id, chosen, operator_name())
    out.print(
        bilingual(
            f"{_name(changed)}: role {record.role.value} -> {changed.role.value}.",
            f"{_name(changed)}: 역할 {record.role.value} -> {changed.role.value}.",
        )
    )


@users_app.command(
    "quota",
    help=bilingual(
        "Set a user's own limits (images a day, jobs queued, jobs running); `default` goes "
        "back to the global setting. With no option, shows the limits in force.",
        "사용자별 한도(하루 이미지 수, 대기 작업 수, 실행 작업 수)를 정합니다. `default`는 전체 "
        "설정으로 되돌립니다. 옵션이 없으면 적용 중인 한도를 보여 줍니다.",
    ),
)
def quota_command(
    user: UserArgument,
    daily: Annotated[
        str | None,
        typer.Option(
            "--daily",
            metavar="N|unlimited|default",
            help=bilingual(
                "Images a day (UTC): N, unlimited, or default (EASEL_DAILY_IMAGES).",
                "하루(UTC) 이미지 수: N, unlimited, 또는 default(EASEL_DAILY_IMAGES).",
            ),
        ),
    ] = None,
    max_queued: Annotated[
        str | None,
        typer.Option(
            "--max-queued",
            metavar="N|default",
            help=bilingual(
                "Jobs waiting at once: N, or default (EASEL_MAX_QUEUED_PER_USER).",
                "동시에 대기하는 작업 수: N, 또는 default(EASEL_MAX_QUEUED_PER_USER).",
            ),
        ),
    ] = None,
    max_running: Annotated[
        str | None,
        typer.Option(
            "--max-running",
            metavar="N|default",
            help=bilingual(
                "Jobs running at once: N, or default (EASEL_MAX_RUNNING_PER_USER).",
                "동시에 실행되는 작업 수: N, 또는 default(EASEL_MAX_RUNNING_PER_USER).",
            ),
        ),
    ] = None,
    clear: Annotated[
        bool,
        typer.Option(
            "--clear",
            help=bilingual(
                "Remove all three of the user's own limits.",
                "사용자별 한도 세 가지를 모두 지웁니다.",
            ),
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    from bot.store import UNSET
    from bot.store.people import set_user_quota, user_activity

    changes: dict[str, Any] = {}
    if clear:
        changes = {"daily_images": None, "max_queued": None, "max_running": None}
    if daily is not None:
        changes["daily_images"] = _daily(daily)
    if max_queued is not None:
        changes["max_queued"] = _count(max_queued, "--max-queued")
    if max_running is not None:
        changes["max_running"] = _count(max_running, "--max-running")
    settings = Settings()
    with _opened(settings) as store:
        record = _resolve(store, user, create=bool(changes))
        if changes:
            values = {name: changes.get(name, UNSET) for name in _QUOTAS}
            set_user_quota(store, record.id, operator_name(), **values)
        shown = view(user_activity(store, record.id), _config(settings))
    if as_json:
        print_json(shown)
        return
    heading = bilingual("Limits now", "현재 한도") if changes else bilingual("Limits", "한도")
    out.print(f"{_name_of(shown)}: {heading}")
    for label, limit in _limit_rows(shown):
        out.print(f"  {label}: {_limit_text(limit)}")


_QUOTAS = ("daily_images", "max_queued", "max_running")


# ---------------------------------------------------------------------------- export, forget


@users_app.command(
    "export",
    help=bilingual(
        "Everything kept about a user as JSON: their record, settings, and jobs with requests, "
        "times and image paths.",
        "한 사용자에 대해 저장된 모든 것을 JSON으로: 기록, 설정, 요청과 시간과 이미지 경로가 "
        "담긴 작업.",
    ),
)
def export_command(
    user: UserArgument,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help=bilingual("Write it to FILE instead of stdout.", "표준 출력 대신 FILE에 씁니다."),
        ),
    ] = None,
) -> None:
    from bot.store.people import export_user, request_document

    with _opened() as store:
        record = _resolve(store, user)
        exported = export_user(store, record.id)
    document = {
        "exported_at": datetime.now(UTC),
        "user": exported.user,
        "settings": exported.settings,
        "jobs": [
            {
                "id": job.id,
                "kind": job.kind,
                "status": job.status,
                "parent_id": job.parent_id,
                "image_index": job.image_index,
                "request": request_document(job),
                "image_count": job.image_count,
                "created_at": job.created_at,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
                "error": job.error,
                "origin_platform": job.origin_platform,
                "origin_chat": job.origin_chat,
                "gpu_seconds": job.gpu_seconds,
                "grid_path": job.grid_path,
                "images": [
                    {
                        "index": image.index,
                        "path": image.path,
                        "seed": image.seed,
                        "width": image.width,
                        "height": image.height,
                        "sha256": image.sha256,
                    }
                    for image in job.images
                ],
            }
            for job in exported.jobs
        ],
    }
    if output is None:
        print_json(document)
        return
    text = json.dumps(to_plain(document), ensure_ascii=False, indent=2) + "\n"
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        _fail(
            f"Cannot write {output}: {error.strerror or error}",
            f"{output}에 쓸 수 없습니다: {error.strerror or error}",
        )
    count = len(exported.jobs)
    out.print(
        bilingual(
            f"Wrote {_name(record)}: {count} job(s) to {output}.",
            f"{_name(record)}의 데이터(작업 {count}개)를 {output}에 썼습니다.",
        )
    )


@users_app.command(
    "forget",
    help=bilingual(
        "Delete a user: their jobs, images (rows and files in the outputs folder), uploads, "
        "settings and record; files other users' jobs use stay. Without --yes, says what "
        "would be deleted and changes nothing.",
        "사용자를 삭제합니다: 작업, 이미지(기록과 출력 폴더의 파일), 올린 이미지, 설정, 사용자 "
        "기록. 다른 사용자의 작업이 쓰는 파일은 남습니다. --yes가 없으면 삭제할 것만 보여 주고 "
        "아무것도 바꾸지 않습니다.",
    ),
)
def forget_command(
    user: UserArgument,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            help=bilingual("Really delete.", "실제로 삭제합니다."),
        ),
    ] = False,
) -> None:
    from bot.store.people import UserBusyError, forget_user, plan_forget

    settings = Settings()
    with _opened(settings) as store:
        record = _resolve(store, user)
        plan = plan_forget(store, record.id, settings.outputs_dir)
        if not yes:
            _print_plan(plan)
            if plan.running:
                _print_running(plan.running)
            out.print(
                bilingual(
                    "Nothing was changed: add --yes to delete.",
                    "아무것도 바뀌지 않았습니다. 삭제하려면 --yes를 붙이세요.",
                )
            )
            return
        try:
            result = forget_user(store, record.id, settings.outputs_dir, operator_name())
        except UserBusyError as error:
            _print_running(error.running)
            raise typer.Exit(1) from None
    done = result.plan
    out.print(
        bilingual(
            f"Forgot {_name(record)}: {done.jobs} job(s), {done.images} image row(s), "
            f"{result.files_removed} file(s) ({human_bytes(result.bytes_removed)}) deleted.",
            f"{_name(record)}을(를) 삭제했습니다: 작업 {done.jobs}개, 이미지 기록 {done.images}개, "
            f"파일 {result.files_removed}개({human_bytes(result.bytes_removed)}).",
        )
    )
    for failure in result.failed:
        err.print(bilingual(f"Not removed: {failure}", f"지우지 못함: {failure}"))
    if result.failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------- helpers


@contextmanager
def _opened(settings: Settings | None = None) -> Iterator[Store]:
    """The operator's store (`operator_store`), closed at the end; a missing or outdated
    database, or a user deleted meanwhile, is one line and exit 1."""
    from bot.store import NotFoundError, StoreError

    try:
        store = operator_store(settings)
    except StoreError as error:
        _fail(str(error), str(error))
    with store:
        try:
            yield store
        except NotFoundError:  # forgotten by someone else meanwhile
            _fail("That user no longer exists.", "그 사용자는 더 이상 없습니다.")


def _platforms() -> tuple[str, ...]:
    """The platforms a user can be on (the chat admins' list), in order."""
    from bot.core.admin import KNOWN_PLATFORMS

    return tuple(sorted(KNOWN_PLATFORMS))


def _resolve(store: Store, text: str, create: bool = False) -> UserRecord:
    """The user a command line names: a store id, or PLATFORM:ID. `create`: a PLATFORM:ID
    never seen, on a platform Easel has, gets its row (an admin may ban or promote someone
    before they write), as `/admin ban` does."""
    from bot.store.people import find_user
    from pipeline.text import clean_text

    given = clean_text(text).strip()
    if given.isdigit():
        record = store.user_by_id(int(given)) if len(given) < 19 else None
        if record is None:
            _fail(
                f"No user {given}: see `easel users list`.",
                f"사용자 {given}이(가) 없습니다. `easel users list`를 보세요.",
            )
        return record
    prefix, colon, rest = given.partition(":")
    platform, platform_user_id = prefix.strip().lower(), rest.strip().removeprefix("@")
    if not colon or not platform or not platform_user_id:
        raise typer.BadParameter(
            bilingual(
                f"{text!r}: name a user by their number in `easel users list` or as "
                "PLATFORM:ID (discord:1234, telegram:99, console:me).",
                f"{text!r}: `easel users list`의 번호나 PLATFORM:ID(discord:1234, telegram:99, "
                "console:me)로 사용자를 지정하세요.",
            ),
            param_hint="USER",
        )
    found = find_user(store, platform, platform_user_id)
    if found is not None:
        return found
    platforms = _platforms()
    if create and platform in platforms:
        return store.user(platform, platform_user_id)
    if create:
        raise typer.BadParameter(
            bilingual(
                f"{text!r}: no such user, and a new one must be on {', '.join(platforms)}.",
                f"{text!r}: 그런 사용자가 없고, 새 사용자는 {', '.join(platforms)} 중 하나여야 "
                "합니다.",
            ),
            param_hint="USER",
        )
    _fail(
        f"No user {platform}:{platform_user_id} is known: they have never used the bot.",
        f"{platform}:{platform_user_id} 사용자는 없습니다. 봇을 쓴 적이 없습니다.",
    )


def _role(text: str) -> Role:
    from bot.store import Role

    try:
        return Role(text.strip().lower())
    except ValueError:
        raise typer.BadParameter(
            bilingual(
                f"{text!r} is not a role: user, vip or admin.",
                f"{text!r}은(는) 역할이 아닙니다: user, vip, admin 중 하나.",
            )
        ) from None


def _platform(text: str) -> str:
    platform = text.strip().lower()
    platforms = _platforms()
    if platform not in platforms:
        raise typer.BadParameter(
            bilingual(
                f"{text!r} is not a platform: {', '.join(platforms)}.",
                f"{text!r}은(는) 플랫폼이 아닙니다: {', '.join(platforms)}.",
            ),
            param_hint="--platform",
        )
    return platform


def _duration(text: str) -> timedelta:
    from bot.core.durations import DurationError, parse_duration

    try:
        return parse_duration(text)
    except DurationError:
        raise typer.BadParameter(
            bilingual(
                f"{text!r}: give minutes, hours, days or weeks up to 10 years (30m, 12h, 7d, "
                "2w), or leave --for out for a ban without an end.",
                f"{text!r}: 분, 시간, 일, 주 단위로 10년까지(30m, 12h, 7d, 2w) 쓰거나, 기한 없는 "
                "차단이면 --for를 빼세요.",
            ),
            param_hint="--for",
        ) from None


def _daily(text: str) -> int | None:
    """None: the global EASEL_DAILY_IMAGES applies; 0: no cap for this user (how the core
    reads a per-user 0); N: N images a day."""
    word = text.strip().lower()
    if word in DEFAULT_WORDS:
        return None
    if word in UNLIMITED_WORDS:
        return 0
    if word == "0":
        raise typer.BadParameter(
            bilingual(
                "0 images a day would shut the user out: ban them instead (`easel users ban`); "
                "`--daily unlimited` lifts their cap.",
                "하루 0장은 사용자를 막는 것과 같습니다. 대신 차단하세요(`easel users ban`). "
                "`--daily unlimited`는 한도를 없앱니다.",
            ),
            param_hint="--daily",
        )
    return _count(text, "--daily")


def _count(text: str, option: str) -> int | None:
    word = text.strip().lower()
    if word in DEFAULT_WORDS:
        return None
    if not word.isdigit() or not 1 <= int(word) <= 1_000_000:
        raise typer.BadParameter(
            bilingual(
                f"{text!r}: give a whole number from 1 to 1000000, or default.",
                f"{text!r}: 1부터 1000000까지의 정수나 default를 쓰세요.",
            ),
            param_hint=option,
        )
    return int(word)


def _config(settings: Settings) -> CoreConfig:
    from bot.runtime import core_config

    return core_config(settings, on_gpu=False)


def _fail(en: str, ko: str) -> NoReturn:
    err.print(bilingual(en, ko))
    raise typer.Exit(1)


def _name(user: UserRecord) -> str:
    who = f"{user.platform}:{user.platform_user_id}"
    return f"{who} ({user.display_name})" if user.display_name else who


def _name_of(shown: UserView) -> str:
    who = f"#{shown.id} {shown.platform}:{shown.platform_user_id}"
    return f"{who} ({shown.name})" if shown.name else who


def _ids(ids: Any) -> str:
    return ", ".join(f"#{job_id}" for job_id in ids)


def _when(moment: datetime | None) -> str:
    from bot.core.durations import utc_text

    return utc_text(moment) if moment is not None else "-"


def _ban_line(user: UserRecord) -> str:
    name = _name(user)
    reason = f": {user.ban_reason}" if user.ban_reason else "."
    if user.banned_until is not None:
        until = _when(user.banned_until)
        return bilingual(
            f"Banned {name} until {until}{reason}", f"{name}을(를) {until}까지 차단했습니다{reason}"
        )
    return bilingual(
        f"Banned {name} until unbanned{reason}", f"{name}을(를) 기한 없이 차단했습니다{reason}"
    )


def _banned_text(shown: UserView) -> str:
    if not shown.banned:
        return bilingual("no", "아니요")
    if shown.banned_until is None:
        return bilingual("yes", "예")
    return bilingual(f"until {_when(shown.banned_until)}", f"{_when(shown.banned_until)}까지")


def _limit_text(limit: Limit) -> str:
    value = bilingual("no cap", "제한 없음") if limit.value is None else str(limit.value)
    return f"{value} ({bilingual('own', '개별')})" if limit.own else value


def _limit_rows(shown: UserView) -> list[tuple[str, Limit]]:
    return [
        (bilingual("Images a day", "하루 이미지"), shown.daily_images),
        (bilingual("Jobs queued at once", "동시 대기 작업"), shown.max_queued),
        (bilingual("Jobs running at once", "동시 실행 작업"), shown.max_running),
    ]


def _users_table(views: list[UserView]) -> Table:
    table = Table(
        title=bilingual("Users", "사용자"),
        box=box.SIMPLE_HEAD,
        caption=bilingual(
            "Banned: until when, or yes without an end. Today and Total: jobs/images. "
            "Times in UTC.",
            "차단: 끝나는 때, 기한이 없으면 예. 오늘, 전체: 작업/이미지. 시각은 UTC.",
        ),
    )
    headers = (
        ("ID", "ID"),
        ("User", "사용자"),
        ("Name", "이름"),
        ("Role", "역할"),
        ("Banned", "차단"),
        ("Daily", "하루 한도"),
        ("Today", "오늘"),
        ("Total", "전체"),
        ("Last seen", "마지막 활동"),
    )
    for en, ko in headers:
        table.add_column(bilingual(en, ko), overflow="fold")
    for shown in views:
        table.add_row(
            str(shown.id),
            f"{shown.platform}:{shown.platform_user_id}",
            shown.name or "-",
            shown.role,
            _banned_cell(shown),
            _limit_text(shown.daily_images),
            f"{shown.jobs_today}/{shown.images_today}",
            f"{shown.jobs_total}/{shown.images_total}",
            _short_when(shown.last_seen),
        )
    return table


def _short_when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


def _banned_cell(shown: UserView) -> str:
    """no, yes (without an end), or the ban's end."""
    if shown.banned and shown.banned_until is not None:
        return _short_when(shown.banned_until)
    return _banned_text(shown)


def _print_details(details: UserDetails) -> None:
    shown = details.user
    out.print(_name_of(shown))
    rows = [
        (bilingual("Role", "역할"), shown.role),
        (bilingual("Language", "언어"), shown.locale),
        (bilingual("Banned", "차단"), _banned_text(shown)),
    ]
    if shown.ban_reason:
        rows.append((bilingual("Reason", "이유"), shown.ban_reason))
    rows += [(label, _limit_text(limit)) for label, limit in _limit_rows(shown)]
    rows += [
        (bilingual("Today", "오늘"), _activity_text(shown.jobs_today, shown.images_today)),
        (bilingual("In all", "전체"), _activity_text(shown.jobs_total, shown.images_total)),
        (bilingual("Last seen", "마지막 활동"), _when(shown.last_seen)),
        (bilingual("First seen", "처음 본 때"), _when(shown.created_at)),
    ]
    chosen = [f"{name}={value}" for name, value in details.settings.items() if value is not None]
    rows.append((bilingual("Settings", "설정"), ", ".join(chosen)))
    for label, value in rows:
        out.print(f"  {label}: {value}")
    if not details.recent_jobs:
        return
    table = Table(title=bilingual("Newest jobs", "최근 작업"))
    for en, ko in (
        ("Job", "작업"),
        ("Kind", "종류"),
        ("Status", "상태"),
        ("Made", "만든 때"),
        ("Images", "이미지"),
        ("Prompt", "프롬프트"),
    ):
        table.add_column(bilingual(en, ko))
    for job in details.recent_jobs:
        table.add_row(
            f"#{job.id}",
            job.kind,
            job.status,
            _when(job.created_at),
            str(job.image_count),
            job.prompt or "-",
        )
    out.print(table)


def _activity_text(jobs: int, images: int) -> str:
    return bilingual(f"{jobs} job(s), {images} image(s)", f"작업 {jobs}개, 이미지 {images}장")


def _print_plan(plan: ForgetPlan) -> None:
    name = _name(plan.user)
    size = human_bytes(plan.bytes)
    out.print(
        bilingual(
            f"Forgetting {name} deletes {plan.jobs} job(s) ({len(plan.queued)} queued), "
            f"{plan.images} image row(s), {len(plan.files)} file(s) ({size}), their settings "
            "and their record.",
            f"{name}을(를) 삭제하면 작업 {plan.jobs}개(대기 {len(plan.queued)}개), 이미지 기록 "
            f"{plan.images}개, 파일 {len(plan.files)}개({size}), 설정과 사용자 기록이 "
            "지워집니다.",
        )
    )
    if plan.outside:
        out.print(
            bilingual(
                f"{len(plan.outside)} recorded file(s) outside the outputs folder stay.",
                f"출력 폴더 밖에 기록된 파일 {len(plan.outside)}개는 남습니다.",
            )
        )
    if plan.shared:
        out.print(
            bilingual(
                f"{len(plan.shared)} file(s) stay: other users' jobs use them.",
                f"다른 사용자의 작업이 쓰는 파일 {len(plan.shared)}개는 남습니다.",
            )
        )


def _print_running(running: tuple[int, ...]) -> None:
    first = running[0]
    err.print(
        bilingual(
            f"They have a running job ({_ids(running)}): cancel it first "
            f"(`easel jobs cancel {first}`) or wait for it to end.",
            f"실행 중인 작업이 있습니다({_ids(running)}). 먼저 취소하거나"
            f"(`easel jobs cancel {first}`) 끝날 때까지 기다리세요.",
        )
    )
