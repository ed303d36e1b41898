"""Saving a generation result: one PNG per image plus the grid, under outputs/YYYY-MM-DD/.

A job's files carry its id (`00012-j345-a-cat.png`) and are written to a temporary name
beside the final one, then renamed: a reader never sees half a PNG, a failed save leaves no
file behind, and what a crash leaves (`cleanup_orphans`) is told apart from everything else.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from bot.store import NewImage, Store
from pipeline.errors import EaselError
from pipeline.images import make_grid, output_path, safe_stem, save_png
from pipeline.request import GeneratedImage, GenerationResult

log = logging.getLogger(__name__)

STEM_WORDS = 8
TEMP_SUFFIX = ".tmp"
# `NNNNN-j<job id>-...png`: a file saved for a job; `.NNNNN-...png.tmp`: one being written.
JOB_FILE_RE = re.compile(r"^\d{5,}-j(\d+)-[^/]*\.png$")
TEMP_FILE_RE = re.compile(r"^\.\d{5,}-[^/]*\.png\.tmp$")
JOB_MARK_RE = re.compile(r"^j\d+(-|$)")
# OutputsError.reason
DISK_FULL, NOT_WRITABLE, WRITE_FAILED = "disk_full", "not_writable", "write_failed"
# A file's mtime may lag the job row's clock by a little (coarse file-system timestamps).
CLOCK_SLACK_S = 2.0


class OutputsError(EaselError):
    """Saving images failed. `str()` is `user_message`, fit for a chat ("the server's disk is
    full"); `reason` names the case for a translated message (DISK_FULL, NOT_WRITABLE,
    WRITE_FAILED); `detail` is for the operator's log (the path and the OS error)."""

    def __init__(self, user_message: str, detail: str, reason: str = WRITE_FAILED) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.detail = detail
        self.reason = reason


@dataclass(frozen=True)
class SavedResult:
    images: tuple[Path, ...]
    grid: Path | None
    control_map: Path | None = None  # what the ControlNet read, when the job asked to see it


def prompt_stem(prompt: str) -> str:
    return "-".join(prompt.split()[:STEM_WORDS]) or "image"


def save_result(result: GenerationResult, outputs_dir: Path) -> SavedResult:
    """Write each image with its parameters, a grid when there is more than one, and the
    control map when the result has it."""
    stem = prompt_stem(result.request.prompt)
    saved = save_images(result.images, outputs_dir, stem)
    control_map = None
    if result.control_map is not None:
        control_map = output_path(outputs_dir, f"control-{stem}")
        result.control_map.save(control_map, format="PNG")
    images = tuple(Path(item.path) for item in saved.records)
    return SavedResult(images=images, grid=saved.grid, control_map=control_map)


@dataclass(frozen=True)
class SavedImages:
    records: tuple[NewImage, ...]  # what the job's history keeps of each image
    grid: Path | None


def save_images(
    images: Sequence[GeneratedImage], outputs_dir: Path, stem: str, job_id: int | None = None
) -> SavedImages:
    """Each image as a PNG with its parameters, plus a grid when there are several; all of
    them or none (`OutputsError`). `job_id` marks the names so a crash's leftovers can go.

    PNG compression is most of the cost and Pillow's encoder releases the GIL, so the files
    are written side by side; their numbers are claimed first, in order.
    """
    mark = f"j{job_id}-" if job_id is not None else ""
    grid_stem = f"{mark}grid-{stem}"
    stem = f"{mark}{stem}" if mark else _unmarked(stem)
    claimed: list[Path] = []
    try:
        for _ in images:
            claimed.append(output_path(outputs_dir, stem))
        grid_path = output_path(outputs_dir, grid_stem) if len(images) > 1 else None
        if grid_path is not None:
            claimed.append(grid_path)
        records = _write_all(images, claimed[: len(images)], grid_path)
    except OSError as error:
        _remove(claimed)
        raise _outputs_error(error, outputs_dir) from error
    except BaseException:
        _remove(claimed)
        raise
    return SavedImages(tuple(records), grid_path)


def _write_all(
    images: Sequence[GeneratedImage], paths: Sequence[Path], grid_path: Path | None
) -> list[NewImage]:
    """Write every file, waiting for all of them before reporting the first error (so no
    writer is still busy while the caller removes the files)."""
    with ThreadPoolExecutor(max_workers=min(len(images) + 1, os.cpu_count() or 1)) as pool:
        grid: Future[None] | None = None
        if grid_path is not None:
            grid = pool.submit(_save_grid, images, grid_path)
        singles = [
            pool.submit(_save_one, index, item, path)
            for index, (item, path) in enumerate(zip(images, paths, strict=True))
        ]
        everything: list[Future[object]] = [*singles, *([grid] if grid else [])]  # type: ignore[list-item]
        wait(everything)
    for future in everything:
        error = future.exception()
        if error is not None:
            raise error
    return [future.result() for future in singles]


def _save_one(index: int, item: GeneratedImage, path: Path) -> NewImage:
    _write_atomically(path, lambda temp: save_png(item.image, temp, item.infotext))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    width, height = item.image.size
    return NewImage(index, str(path), item.seed, width, height, digest)


def _save_grid(images: Sequence[GeneratedImage], path: Path) -> None:
    grid = make_grid([item.image for item in images])
    _write_atomically(path, lambda temp: save_png(grid, temp, images[0].infotext))


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    temp = temp_path(path)
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def _unmarked(stem: str) -> str:
    """A stem that cannot pass for a job's mark (a prompt starting "j12 ...")."""
    return f"image-{stem}" if JOB_MARK_RE.match(safe_stem(stem)) else stem


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        for leftover in (path, temp_path(path)):
            try:
                leftover.unlink(missing_ok=True)
            except OSError as error:
                log.warning("Could not remove %s: %s", leftover, error)


def _outputs_error(error: OSError, outputs_dir: Path) -> OutputsError:
    where = error.filename or outputs_dir
    detail = f"saving images under {outputs_dir} failed at {where}: {error.strerror or error}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputsError("the server's disk is full", detail, DISK_FULL)
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputsError("the server may not write its images folder", detail, NOT_WRITABLE)
    return OutputsError("the server could not save the images", detail, WRITE_FAILED)


# --------------------------------------------------------------------------- leftovers of a crash


def cleanup_orphans(store: Store, outputs_dir: Path) -> int:
    """Remove what a crash left under `outputs_dir`; the number of files removed.

    Only Easel's own files go: temporary files being written, and files saved for a job
    (`NNNNN-j<id>-...png`) that the job's row does not record (a save the crash interrupted,
    or an earlier attempt of a job that ran again), and that are newer than the job, so that
    files from an older database whose job numbers came round again stay. Call it at start,
    with the bot lock held and before jobs run: a job being saved has no recorded files yet.
    """
    if not outputs_dir.is_dir():
        return 0
    removed = 0
    candidates: dict[int, list[Path]] = {}
    for path in _files_under(outputs_dir):
        if TEMP_FILE_RE.match(path.name):
            removed += _unlink(path)
            continue
        match = JOB_FILE_RE.match(path.name)
        if match:
            candidates.setdefault(int(match[1]), []).append(path)
    known = store.job_files(candidates)
    for job_id, paths in candidates.items():
        job = known.get(job_id)
        if job is None:
            continue  # not this database's job: leave it
        recorded = {_resolved(Path(recorded)) for recorded in job.paths}
        born = job.created_at.timestamp() - CLOCK_SLACK_S
        for path in paths:
            if _resolved(path) in recorded:
                continue
            try:
                written = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if written >= born:
                removed += _unlink(path)
    if removed:
        log.info("Removed %d file(s) left under %s by an interrupted job", removed, outputs_dir)
    return removed


def _files_under(outputs_dir: Path) -> Iterable[Path]:
    # output_path writes into one folder per day; nothing deeper is Easel's.
    for folder in outputs_dir.iterdir():
        if folder.is_dir():
            yield from (path for path in folder.iterdir() if path.is_file())


def _resolved(path: Path) -> Path:
    return path.resolve(strict=False)


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    except OSError as error:
        log.warning("Could not remove %s: %s", path, error)
        return 0
    return 1
