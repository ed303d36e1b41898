"""Saving images when the disk fails, and removing what a crash left under outputs/."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import bot.outputs as outputs
from bot.outputs import OutputsError, cleanup_orphans, save_images, temp_path
from bot.store import JobKind, NewImage, NewJob, Store
from pipeline.images import Infotext, save_png
from pipeline.request import GeneratedImage

DAY = "2026-12-02"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'easel.db'}") as store:
        store.upgrade()
        yield store


def images(count: int, prompt: str = "a red fox") -> list[GeneratedImage]:
    return [
        GeneratedImage(Image.new("RGB", (64, 64), (40 * index, 90, 200)), index, Infotext(prompt))
        for index in range(count)
    ]


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.is_file())


def test_a_job_s_images_carry_its_id_and_leave_no_temporary_file(tmp_path: Path) -> None:
    saved = save_images(images(2), tmp_path, "a-red-fox", job_id=345)
    names = [Path(record.path).name for record in saved.records]
    assert names == ["00001-j345-a-red-fox.png", "00002-j345-a-red-fox.png"]
    assert saved.grid is not None and saved.grid.name == "00003-j345-grid-a-red-fox.png"
    assert all(name.endswith(".png") for name in files(tmp_path))
    assert all(Path(record.path).stat().st_size > 0 for record in saved.records)


def test_a_prompt_that_looks_like_a_job_mark_is_not_taken_for_one(tmp_path: Path) -> None:
    saved = save_images(images(1), tmp_path, "j12-a-fox")
    assert Path(saved.records[0].path).name == "00001-image-j12-a-fox.png"


def test_a_full_disk_is_a_plain_error_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []

    def fill_up(image: Image.Image, path: Path, info: Infotext) -> Path:
        written.append(path)
        if len(written) < 3:
            return save_png(image, path, info)
        path.write_bytes(b"\x89PNG half")  # the disk fills up partway through this one
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "save_png", fill_up)
    with pytest.raises(OutputsError) as caught:
        save_images(images(4), tmp_path, "a-red-fox", job_id=7)
    assert str(caught.value) == "the server's disk is full"
    assert caught.value.reason == outputs.DISK_FULL
    assert "No space left on device" in caught.value.detail
    assert "Errno" not in str(caught.value)
    assert files(tmp_path) == []  # no zero-byte PNG, no half-written temporary file
    assert all(path.name.endswith(".png.tmp") for path in written)


def test_another_write_error_is_a_plain_error_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(image: Image.Image, path: Path, info: Infotext) -> Path:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(outputs, "save_png", refuse)
    with pytest.raises(OutputsError, match="may not write its images folder"):
        save_images(images(1), tmp_path, "a-red-fox", job_id=7)
    assert files(tmp_path) == []


def _job(store: Store, user: int) -> int:
    new = NewJob(user, JobKind.IMAGINE, "{}", "k", 1, "console", "local")
    return store.add_job(new).id


def _touch(path: Path, data: bytes = b"png", age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age_s:
        when = path.stat().st_mtime - age_s
        os.utime(path, (when, when))
    return path


def test_cleanup_removes_only_what_a_crash_left(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    day = out / DAY
    user = store.user("console", "ada").id
    done, crashed, unrelated = _job(store, user), _job(store, user), _job(store, user)
    store.mark_running([done, crashed])
    kept_image = _touch(day / f"00001-j{done}-fox.png")
    kept_grid = _touch(day / f"00002-j{done}-grid-fox.png")
    store.mark_done(done, [NewImage(0, str(kept_image), 1, 64, 64, "0" * 64)], str(kept_grid))

    leftovers = [
        _touch(day / f"00003-j{done}-fox.png"),  # an earlier attempt of a job that ran again
        _touch(day / f"00004-j{crashed}-fox.png"),  # saved, then the crash came before the row
        _touch(day / f"00005-j{crashed}-fox.png", b""),  # claimed, never written
        _touch(temp_path(day / f"00006-j{crashed}-fox.png"), b"\x89PNG half"),
    ]
    kept = [
        kept_image,
        kept_grid,
        _touch(day / "00007-a-red-fox.png"),  # `easel generate`, no job
        _touch(day / "00008-j99999-fox.png"),  # no such job in this database
        _touch(day / f"00009-j{unrelated}-fox.png", age_s=3600),  # older than the job itself
        _touch(day / "notes.txt"),
        _touch(out / f"00010-j{crashed}-fox.png"),  # not in a day folder: not Easel's
    ]

    assert cleanup_orphans(store, out) == len(leftovers)
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in kept)
    assert cleanup_orphans(store, out) == 0


def test_cleanup_of_a_missing_outputs_folder_is_nothing(store: Store, tmp_path: Path) -> None:
    assert cleanup_orphans(store, tmp_path / "never-made") == 0
