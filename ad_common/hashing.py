"""Content hashes of files: the identity of raw logs, DBCs and drives."""

from __future__ import annotations

import hashlib
from pathlib import Path

_SLICE = 1 << 20  # hashed right after each read, while the slice is still in cache


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read through one reused 1 MiB buffer (no fresh pages per read)."""
    digest = hashlib.sha256()
    buf = bytearray(_SLICE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    view.release()
    return digest.hexdigest()
