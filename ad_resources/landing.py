"""The landing zone: where raw drives arrive, as ``<market>/<drive_id>/<files>``.

Sensors and assets only talk to a :class:`LandingZone`; where the bytes live (a local folder here, S3 in
production) is the resource's business. Folders whose name starts with ``_`` are not drives:
``<market>/_dbc/*.dbc`` holds the market's DBC files, ``<market>/_profiles/*.json`` its vehicles' sensor profiles
(docs/sensor-profiles.md) and ``_quarantine/`` the files that failed validation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from ad_common.formats import MANIFEST_NAME
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
class DriveListing:
    market: str
    drive_id: str
    files: tuple[FileStat, ...]

    @property
    def mtime_ns(self) -> int:
        return max((f.mtime_ns for f in self.files), default=0)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class LandingZone(ConfigurableResource):
    """Interface of a landing zone; see :class:`LocalLandingZone`."""

    def list_drives(self, markets: Sequence[str]) -> Iterator[DriveListing]:
        raise NotImplementedError

    def drive_files(self, market: str, drive_id: str) -> list[FileStat]:
        raise NotImplementedError

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
    def _stats(folder: Path) -> list[FileStat]:
        stats = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file() and not entry.name.startswith("."):
                    st = entry.stat()
                    stats.append(FileStat(entry.name, st.st_size, st.st_mtime_ns))
        return sorted(stats, key=lambda f: f.name)

    def list_drives(self, markets: Sequence[str]) -> Iterator[DriveListing]:
        for market in markets:
            market_dir = self._root / market
            if not market_dir.is_dir():
                continue
            with os.scandir(market_dir) as entries:
                for entry in entries:
                    if entry.is_dir() and not entry.name.startswith(("_", ".")):
                        files = self._stats(Path(entry.path))
                        if files:
                            yield DriveListing(market, entry.name, tuple(files))

    def drive_files(self, market: str, drive_id: str) -> list[FileStat]:
        folder = self._drive_dir(market, drive_id)
        return self._stats(folder) if folder.is_dir() else []

    @contextlib.contextmanager
    def local_file(self, market: str, drive_id: str, name: str) -> Iterator[Path]:
        yield self._drive_dir(market, drive_id) / name

    def market_files(self, market: str, folder: str, suffix: str) -> list[FileStat]:
        path = self._root / market / folder
        return [f for f in self._stats(path) if f.name.lower().endswith(suffix)] if path.is_dir() else []

    @contextlib.contextmanager
    def local_market_file(self, market: str, folder: str, name: str) -> Iterator[Path]:
        yield self._root / market / folder / name

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
        if source.exists():
            shutil.move(source, target)
        return str(target)

    def quarantined(self, market: str, drive_id: str) -> list[dict[str, str]]:
        folder = self._quarantine_dir(market, drive_id)
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.reason.json"))]
