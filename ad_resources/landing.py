"""The landing zone: where raw drives arrive, as ``<market>/<drive_id>/<files>``.

Sensors and assets only talk to a :class:`LandingZone`; where the bytes live (a local folder here, S3 in
production) is the resource's business. Folders whose name starts with ``_`` are not drives:
``<market>/_dbc/*.dbc`` holds the market's DBC files, ``<market>/_profiles/*.json`` its vehicles' sensor profiles
(docs/sensor-profiles.md) and ``_quarantine/`` the files that failed validation.

Only regular files inside the landing root are data. A symbolic link (to ``/etc/shadow``, to another drive) or
a FIFO/socket/device in a drive folder is *refused*: listed with the reason, never opened, hashed or followed,
so nothing outside the landing zone can reach the catalog, a message or a quarantine reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat as stat_mode
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from ad_common.formats import MANIFEST_NAME, printable
from ad_common.hashing import sha256_file

DRIVE_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
DBC_FOLDER = "_dbc"
PROFILES_FOLDER = "_profiles"
MANIFEST = MANIFEST_NAME
QUARANTINE_FOLDER = "_quarantine"


def suggest_drive_key(folder_name: str) -> str:
    """Dagster partition keys must be lowercase without commas or pipes; this is the rename we suggest."""
    return re.sub(r"[^a-z0-9_.-]+", "-", folder_name.lower()).strip("-._")[:128]


@dataclass(frozen=True)
class FileStat:
    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class RefusedEntry:
    """An entry of a drive folder that is not read: ``name`` is ``"."`` when the drive folder itself is refused."""

    name: str
    mtime_ns: int  # of the entry itself (lstat), never of what a link points to
    reason: str


class RefusedEntryError(PermissionError):
    """A caller asked to read an entry the landing zone refuses (a link, not a regular file)."""


LINK_REASON = (
    "is a symbolic link; links are never followed (a link can point outside the landing zone): "
    "copy the file itself into the drive folder"
)
DRIVE_LINK_REASON = (
    "the drive folder is a symbolic link; links are never followed (a link can point outside the landing "
    "zone): copy the drive's files into a real folder"
)
NOT_REGULAR_REASON = "is not a regular file (FIFO, socket or device): only regular files are read"


@dataclass(frozen=True)
class DriveListing:
    market: str
    drive_id: str
    files: tuple[FileStat, ...]
    refused: tuple[RefusedEntry, ...] = ()
    # The drive folder's own mtime: creating, renaming or removing a file in it moves it (0 on object stores).
    folder_mtime_ns: int = 0

    @property
    def mtime_ns(self) -> int:
        return max([f.mtime_ns for f in self.files] + [r.mtime_ns for r in self.refused], default=0)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class LandingZone(ConfigurableResource):
    """Interface of a landing zone; see :class:`LocalLandingZone`."""

    def list_drives(self, markets: Sequence[str]) -> Iterator[DriveListing]:
        """Every folder of each market that holds files, hidden ones (``.name``) included: not drives, but the
        sensor reports them instead of ignoring them silently."""
        raise NotImplementedError

    def drive_files(self, market: str, drive_id: str) -> list[FileStat]:
        raise NotImplementedError

    def refused_entries(self, market: str, drive_id: str) -> list[RefusedEntry]:
        """Entries of the drive folder that are not read (links, special files); object stores have none."""
        return []

    def refused_dbc(self, market: str) -> list[RefusedEntry]:
        """Entries of ``<market>/_dbc/`` that are not read."""
        return []

    def local_file(self, market: str, drive_id: str, name: str) -> contextlib.AbstractContextManager[Path]:
        """A local path to read the file from (a download for remote stores), valid inside the context."""
        raise NotImplementedError

    def market_files(self, market: str, folder: str, suffix: str) -> list[FileStat]:
        """The files of a market's configuration folder (``_dbc``, ``_profiles``) ending in ``suffix``."""
        raise NotImplementedError

    def local_market_file(self, market: str, folder: str, name: str) -> contextlib.AbstractContextManager[Path]:
        raise NotImplementedError

    def dbc_files(self, market: str) -> list[FileStat]:
        return self.market_files(market, DBC_FOLDER, ".dbc")

    def local_dbc(self, market: str, name: str) -> contextlib.AbstractContextManager[Path]:
        return self.local_market_file(market, DBC_FOLDER, name)

    def profile_files(self, market: str) -> list[FileStat]:
        return self.market_files(market, PROFILES_FOLDER, ".json")

    def local_profile(self, market: str, name: str) -> contextlib.AbstractContextManager[Path]:
        return self.local_market_file(market, PROFILES_FOLDER, name)

    def dbc_version(self, market: str) -> str | None:
        """Content identity of a market's DBC set: sha256 over the files' names and content hashes."""
        stats = self.dbc_files(market)
        if not stats:
            return None
        digest = hashlib.sha256()
        for stat in stats:
            with self.local_dbc(market, stat.name) as path:
                digest.update(f"{stat.name}\0{sha256_file(path)}\n".encode())
        return digest.hexdigest()

    def quarantine(self, market: str, drive_id: str, name: str, reason: str) -> str:
        raise NotImplementedError

    def quarantined(self, market: str, drive_id: str) -> list[dict[str, str]]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def read_manifest(self, market: str, drive_id: str) -> dict[str, Any] | None:
        """The drive's ``drive.json`` (ODD tags, sensors' nominal rates and clock offsets), if it has one."""
        if not any(f.name == MANIFEST for f in self.drive_files(market, drive_id)):
            return None
        with self.local_file(market, drive_id, MANIFEST) as path:
            return json.loads(path.read_text())


class LocalLandingZone(LandingZone):
    """A landing zone on the local file system (the embedded default)."""

    root: str

    @property
    def _root(self) -> Path:
        return Path(self.root)

    def describe(self) -> str:
        return str(self._root)

    def _drive_dir(self, market: str, drive_id: str) -> Path:
        return self._root / market / drive_id

    @staticmethod
    def _scan(folder: Path) -> tuple[list[FileStat], list[RefusedEntry]]:
        """Regular files (not hidden) and refused entries of a folder; nothing is followed or opened."""
        if folder.is_symlink():
            return [], [RefusedEntry(".", folder.lstat().st_mtime_ns, DRIVE_LINK_REASON)]
        if not folder.is_dir():
            return [], []
        stats, refused = [], []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat_mode.S_ISREG(st.st_mode):
                    stats.append(FileStat(entry.name, st.st_size, st.st_mtime_ns))
                elif stat_mode.S_ISLNK(st.st_mode):
                    refused.append(RefusedEntry(entry.name, st.st_mtime_ns, LINK_REASON))
                elif not stat_mode.S_ISDIR(st.st_mode):
                    refused.append(RefusedEntry(entry.name, st.st_mtime_ns, NOT_REGULAR_REASON))
        return sorted(stats, key=lambda f: f.name), sorted(refused, key=lambda r: r.name)

    def list_drives(self, markets: Sequence[str]) -> Iterator[DriveListing]:
        for market in markets:
            market_dir = self._root / market
            if not market_dir.is_dir():
                continue
            with os.scandir(market_dir) as entries:
                for entry in entries:
                    # is_dir() follows links: a linked drive folder is listed, and refused by _scan. Hidden
                    # folders are listed too, so that the sensor can say it skips them.
                    if entry.is_dir() and not entry.name.startswith("_"):
                        files, refused = self._scan(Path(entry.path))
                        if files or refused:
                            folder_mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                            yield DriveListing(market, entry.name, tuple(files), tuple(refused), folder_mtime)

    def drive_files(self, market: str, drive_id: str) -> list[FileStat]:
        return self._scan(self._drive_dir(market, drive_id))[0]

    def refused_entries(self, market: str, drive_id: str) -> list[RefusedEntry]:
        return self._scan(self._drive_dir(market, drive_id))[1]

    def _regular(self, path: Path) -> Path:
        """``path`` if it is a regular file reached without any link; else :class:`RefusedEntryError`."""
        relative = path.relative_to(self._root)
        for depth in range(1, len(relative.parts) + 1):
            if (self._root / Path(*relative.parts[:depth])).is_symlink():
                raise RefusedEntryError(f"{printable(str(relative))} {LINK_REASON}")
        if path.exists() and not path.is_file():
            raise RefusedEntryError(f"{printable(str(relative))} {NOT_REGULAR_REASON}")
        return path

    @contextlib.contextmanager
    def local_file(self, market: str, drive_id: str, name: str) -> Iterator[Path]:
        yield self._regular(self._drive_dir(market, drive_id) / name)

    def market_files(self, market: str, folder: str, suffix: str) -> list[FileStat]:
        return [f for f in self._scan(self._root / market / folder)[0] if f.name.lower().endswith(suffix)]

    def refused_dbc(self, market: str) -> list[RefusedEntry]:
        return self._scan(self._root / market / DBC_FOLDER)[1]

    @contextlib.contextmanager
    def local_market_file(self, market: str, folder: str, name: str) -> Iterator[Path]:
        yield self._regular(self._root / market / folder / name)

    def _quarantine_dir(self, market: str, drive_id: str) -> Path:
        return self._root / QUARANTINE_FOLDER / market / drive_id

    def quarantine(self, market: str, drive_id: str, name: str, reason: str) -> str:
        """Move a bad file out of the drive, next to a reason file. Nothing is deleted."""
        target_dir = self._quarantine_dir(market, drive_id)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / name
        reason_record = {
            "file": name,
            "market": market,
            "drive_id": drive_id,
            "reason": reason,
            "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (target_dir / f"{name}.reason.json").write_text(json.dumps(reason_record, indent=2) + "\n")
        source = self._drive_dir(market, drive_id) / name
        if source.is_symlink():
            os.rename(source, target)  # the link itself, never what it points to
        elif source.exists():
            shutil.move(source, target)
        return str(target)

    def quarantined(self, market: str, drive_id: str) -> list[dict[str, str]]:
        folder = self._quarantine_dir(market, drive_id)
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.reason.json"))]
