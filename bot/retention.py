"""Pruning old history (`easel prune`): finished jobs older than an age go, with their image
and grid files and the uploaded images (outputs/inputs/) no remaining job needs.

Only files inside the outputs folder are ever deleted (a recorded path elsewhere is left
alone), and only finished jobs (done, failed, cancelled): queued and running ones stay
whatever their age, and so do results not yet delivered (the bot sends them at its next
start). A file a kept job still names as its input (an upscale or variation of an old image,
an uploaded image used again) stays too. Files go first and rows after, so an interrupted
prune leaves nothing a second run would not find; a job whose file could not be removed keeps
its row.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bot.store import Store
from bot.store.retention import (
    INPUTS_FOLDER,
    delete_finished_jobs,
    finished_before,
    paths_named,
    requests_kept,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrunePlan:
    """What a prune at `cutoff` deletes. The files (absolute paths, symbolic links resolved)
    exist now and lie inside the outputs folder; `files_in_use` are old jobs' files that newer
    or unfinished jobs still name (kept), and `files_outside` recorded paths outside the
    outputs folder (left alone)."""

    cutoff: datetime
    outputs_dir: Path
    jobs: tuple[int, ...]
    job_files: dict[int, tuple[str, ...]]
    inputs: tuple[str, ...]
    bytes: int
    files_in_use: int
    files_outside: int

    @property
    def files(self) -> tuple[str, ...]:
        recorded = (path for paths in self.job_files.values() for path in paths)
        return (*recorded, *self.inputs)


@dataclass(frozen=True)
class PruneResult:
    jobs: int  # rows deleted
    files: int  # files deleted
    bytes: int
    jobs_kept: tuple[int, ...]  # a file of theirs could not be removed: their rows stay
    problems: tuple[str, ...]  # one line per file that could not be removed


def plan_prune(store: Store, outputs_dir: Path, cutoff: datetime) -> PrunePlan:
    """What a prune would delete; reads only."""
    root = os.path.realpath(outputs_dir)
    real = _RealPaths()
    in_use = {real(path) for path in paths_named(requests_kept(store, cutoff))}
    job_files: dict[int, tuple[str, ...]] = {}
    size = outside = kept = 0
    jobs = finished_before(store, cutoff)
    for job in jobs:
        mine: list[str] = []
        for recorded in sorted(job.paths):
            path = real(recorded)
            if not _inside(path, root):
                outside += 1
            elif path in in_use:
                kept += 1
            elif (found := _size(path)) is not None:
                mine.append(path)
                size += found
        job_files[job.job_id] = tuple(mine)
    inputs = tuple(
        path
        for path in _old_inputs(os.path.join(root, INPUTS_FOLDER), cutoff)
        if path not in in_use
    )
    size += sum(_size(path) or 0 for path in inputs)
    return PrunePlan(
        cutoff=cutoff,
        outputs_dir=Path(root),
        jobs=tuple(job.job_id for job in jobs),
        job_files=job_files,
        inputs=inputs,
        bytes=size,
        files_in_use=kept,
        files_outside=outside,
    )


def apply_prune(
    store: Store, plan: PrunePlan, on_job: Callable[[], None] | None = None
) -> PruneResult:
    """Delete what the plan names: each job's files, then the rows of the jobs whose files
    all went, then the old uploaded images; empty day folders go too. `on_job` is told each
    time a job's files are done (a progress bar)."""
    files = size = 0
    problems: list[str] = []
    gone: list[int] = []
    stuck: list[int] = []
    for job_id in plan.jobs:
        removed, removed_bytes, failed = _remove_files(plan.job_files.get(job_id, ()))
        files, size = files + removed, size + removed_bytes
        problems.extend(failed)
        (stuck if failed else gone).append(job_id)
        if on_job is not None:
            on_job()
    deleted = delete_finished_jobs(store, gone, plan.cutoff)
    removed, removed_bytes, failed = _remove_files(_still_old(plan.inputs, plan.cutoff))
    files, size = files + removed, size + removed_bytes
    problems.extend(failed)
    _remove_empty_folders(plan.files, str(plan.outputs_dir))
    return PruneResult(deleted, files, size, tuple(stuck), tuple(problems))


class _RealPaths:
    """Absolute paths with symbolic links resolved, each folder resolved once (a prune reads
    tens of thousands of paths in a few day folders)."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, recorded: str) -> str:
        folder, name = os.path.split(os.path.abspath(recorded))
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        path = os.path.join(real_folder, name)
        return os.path.realpath(path) if os.path.islink(path) else path


def _inside(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


def _old_inputs(folder: str, cutoff: datetime) -> list[str]:
    """Uploaded images (plain files) not written or used again since the cutoff."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    old: list[str] = []
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff.timestamp():
            old.append(entry.path)
    return old


def _still_old(paths: Iterable[str], cutoff: datetime) -> Iterator[str]:
    """The uploads not used again since the plan was made: a job that reuses one between the
    plan and now touches it (`JobService._store_input`), and it stays. Each is looked at just
    before it would go."""
    for path in paths:
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError:
            yield path  # unreadable: removing it says why
            continue
        if info.st_mtime < cutoff.timestamp():
            yield path


def _size(path: str) -> int | None:
    """The size of a plain file; None when there is none (already gone, or not a file)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _remove_files(paths: Iterable[str]) -> tuple[int, int, list[str]]:
    removed = size = 0
    failed: list[str] = []
    for path in paths:
        try:
            length = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as error:
            failed.append(f"{path}: {error.strerror or error}")
            continue
        removed, size = removed + 1, size + length
    return removed, size, failed


def _remove_empty_folders(paths: Iterable[str], root: str) -> None:
    """The day folders (and the inputs folder) the prune emptied; never the outputs folder."""
    for folder in sorted({os.path.dirname(path) for path in paths}, reverse=True):
        if not _inside(folder, root):
            continue
        try:
            os.rmdir(folder)
        except OSError:  # not empty, or already gone
            continue
        log.debug("Removed the empty folder %s", folder)
