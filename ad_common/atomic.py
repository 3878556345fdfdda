"""Atomic writes: readers see the old content or the new content, never a partial file or folder.

Everything is written next to its final place under a hidden temporary name and renamed into place only
once complete, so a killed process leaves at worst a stale ``.tmp-*`` entry that the next write sweeps up.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

TMP_MARKER = ".tmp-"
# A temporary this old belongs to a killed writer, not to a concurrent one still writing.
STALE_AFTER_S = 3600


def _tmp_sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")


def sweep_stale_temporaries(final: Path) -> None:
    """Remove leftovers of earlier writes to ``final`` that were killed before their rename."""
    if not final.parent.is_dir():
        return
    cutoff = time.time() - STALE_AFTER_S
    for leftover in final.parent.glob(f".{final.name}{TMP_MARKER}*"):
        with contextlib.suppress(FileNotFoundError):
            if leftover.stat().st_mtime > cutoff:
                continue
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn  # type: ignore[no-any-return]


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, do not wait


def start_writeback(fd: int) -> bool:
    """Ask the kernel to start writing a growing file's dirty pages to disk now, without waiting for it
    (Linux ``sync_file_range``; PostgreSQL's ``backend_flush_after`` does the same). The commit's fsync then finds
    them written: measured on 800 MB, 0.24-0.28 s of fsync became 0.02-0.04 s, for ~0.05 s more write time.
    Advisory: False where the call does not exist or was refused, which only loses the head start."""
    return _SYNC_FILE_RANGE is not None and _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``final`` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(final)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    with atomic_file(final) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it takes the place of ``final``.

    An existing ``final`` is first renamed aside and removed only after the new folder is in place,
    so there is never a moment where neither version exists under a readable name for longer than
    two renames, and nothing is deleted before its replacement is complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(final)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb+") as fh:
                    os.fsync(fh.fileno())
        previous = None
        if final.exists():
            previous = _tmp_sibling(final)
            os.rename(final, previous)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sweep_orphans(root: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove every leftover temporary under ``root`` older than ``older_than_s``; returns what was removed.

    :func:`sweep_stale_temporaries` only runs when the same path is written again, which a killed run's drive
    may never be. ``older_than_s=0`` is for a caller that knows no writer is running (run-once under its lock
    with no run in progress); otherwise a concurrent writer's temporary is left alone."""
    cutoff = time.time() - older_than_s
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if not (name.startswith(".") and TMP_MARKER in name):
                continue
            path = Path(folder) / name
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_mtime > cutoff:
                    continue
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # never walk into a temporary
    return removed
