"""Pruning old history (`easel prune`): finished jobs older than an age go, with their image
and grid files and the uploaded images (outputs/inputs/) no remaining job needs.

Only files inside the outputs folder are ever deleted (a recorded path elsewhere is left
alone), and only finished jobs (done, failed, cancelled): queued and running ones stay
whatever their age. A file a kept job still names as its input (an upscale or variation of an
old image, an uploaded image used again) stays too. Files go first and rows after, so an
interrupted prune leaves nothing a second run would not find; a job whose file could not be
removed keeps its row.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bot.store import Store
from bot.store.retention import delete_finished_jobs, finished_before, requests_kept

log = logging.getLogger(__name__)

INPUTS_FOLDER = "inputs"  # where the service keeps uploaded images (`_store_input`)


@dataclass(frozen=True)
class PrunePlan:
    """What a prune at `cutoff` deletes. `files` exist now and lie inside the outputs folder;
    `files_in_use` are old jobs' files that newer or unfinished jobs still name (kept), and
    `files_outside` recorded paths outside the outputs folder (left alone)."""

    cutoff: datetime
    outputs_dir: Path
    jobs: tuple[int, ...]
    job_files: dict[int, tuple[Path, ...]]
    inputs: tuple[Path, ...]
    bytes: int
    files_in_use: int
    files_outside: int

    @property
    def files(self) -> tuple[Path, ...]:
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
    root = outputs_dir.resolve()
    in_use = _paths_named(requests_kept(store, cutoff))
    job_files: dict[int, tuple[Path, ...]] = {}
    size = outside = kept = 0
    jobs = finished_before(store, cutoff)
    for job in jobs:
        mine: list[Path] = []
        for recorded in sorted(job.paths):
            path = Path(recorded).resolve()
            if not path.is_relative_to(root):
                outside += 1
            elif path in in_use:
                kept += 1
            elif (found := _size(path)) is not None:
                mine.append(path)
                size += found
        job_files[job.job_id] = tuple(mine)
    inputs = tuple(path for path in _old_inputs(root / INPUTS_FOLDER, cutoff) if path not in in_use)
    size += sum(_size(path) or 0 for path in inputs)
    return PrunePlan(
        cutoff=cutoff,
        outputs_dir=root,
        jobs=tuple(job.job_id for job in jobs),
        job_files=job_files,
        inputs=inputs,
        bytes=size,
        files_in_use=kept,
        files_outside=outside,
    )


def apply_prune(store: Store, plan: PrunePlan) -> PruneResult:
    """Delete what the plan names: each job's files, then the rows of the jobs whose files
    all went, then the old uploaded images; empty day folders go too."""
    files = size = 0
    problems: list[str] = []
    gone: list[int] = []
    stuck: list[int] = []
    for job_id in plan.jobs:
        removed, removed_bytes, failed = _remove_files(plan.job_files.get(job_id, ()))
        files, size = files + removed, size + removed_bytes
        problems.extend(failed)
        (stuck if failed else gone).append(job_id)
    deleted = delete_finished_jobs(store, gone, plan.cutoff)
    removed, removed_bytes, failed = _remove_files(plan.inputs)
    files, size = files + removed, size + removed_bytes
    problems.extend(failed)
    _remove_empty_folders(plan.files, plan.outputs_dir)
    return PruneResult(deleted, files, size, tuple(stuck), tuple(problems))


def _paths_named(requests: Iterable[str]) -> set[Path]:
    """The image paths jobs' requests name: GenerationRequest.init_image and
    UpscaleRequest.image are {"path": ...} (or {"data": ...}, inline)."""
    named: set[Path] = set()
    for request in requests:
        try:
            payload = json.loads(request)
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        for value in payload.values():
            if isinstance(value, dict) and isinstance(value.get("path"), str):
                named.add(Path(value["path"]).resolve())
    return named


def _old_inputs(folder: Path, cutoff: datetime) -> list[Path]:
    """Uploaded images not written (or used again) since the cutoff."""
    if not folder.is_dir():
        return []
    old: list[Path] = []
    for path in sorted(folder.iterdir()):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if path.is_file() and not path.is_symlink() and info.st_mtime < cutoff.timestamp():
            old.append(path.resolve())
    return old


def _size(path: Path) -> int | None:
    """The size of a plain file; None when there is none (already gone, or not a file)."""
    try:
        if not path.is_file():
            return None
        return path.stat().st_size
    except OSError:
        return None


def _remove_files(paths: Iterable[Path]) -> tuple[int, int, list[str]]:
    removed = size = 0
    failed: list[str] = []
    for path in paths:
        try:
            length = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as error:
            failed.append(f"{path}: {error.strerror or error}")
            continue
        removed, size = removed + 1, size + length
    return removed, size, failed


def _remove_empty_folders(paths: Iterable[Path], root: Path) -> None:
    """The day folders (and the inputs folder) the prune emptied; never the outputs folder."""
    for folder in sorted({path.parent for path in paths}, reverse=True):
        if folder == root or not folder.is_relative_to(root):
            continue
        try:
            os.rmdir(folder)
        except OSError:  # not empty, or already gone
            continue
        log.debug("Removed the empty folder %s", folder)
