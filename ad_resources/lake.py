"""The lake: decoded Parquet, the drive registry and the per-drive catalog records.

Everything is written atomically (temporary name + rename), and every record is one file per drive, so
concurrent runs never contend for a lock; DuckDB reads them through views (see ``catalog.py``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource

from ad_common.atomic import atomic_dir, atomic_file, sweep_orphans, write_bytes_atomic
from ad_common.lake_layout import is_hidden


class Lake(ConfigurableResource):
    """Interface of the lake; see :class:`LocalLake`."""

    def uri(self, relpath: str) -> str:
        raise NotImplementedError

    def write_dir(self, relpath: str) -> contextlib.AbstractContextManager[Path]:
        """Yield an empty local folder; on success it replaces ``relpath`` as a whole."""
        raise NotImplementedError

    def local_dir(self, relpath: str) -> contextlib.AbstractContextManager[Path]:
        """A local folder holding ``relpath``'s files (a download for remote lakes), valid inside the context."""
        raise NotImplementedError

    @contextlib.contextmanager
    def file_resolver(self) -> Iterator[Callable[[str], Path]]:
        """A function from lake-relative file paths to local files, valid inside the context; remote lakes
        download each folder once, however many of its files are resolved (a drive's synced and decoded tables)."""
        with contextlib.ExitStack() as stack:
            folders: dict[str, Path] = {}

            def resolve(relpath: str) -> Path:
                parent = str(PurePosixPath(relpath).parent)
                if parent not in folders:
                    folders[parent] = stack.enter_context(self.local_dir(parent))
                return folders[parent] / PurePosixPath(relpath).name

            yield resolve

    def read_json(self, relpath: str) -> Any | None:
        raise NotImplementedError

    def write_json(self, relpath: str, obj: Any) -> None:
        raise NotImplementedError

    def write_table(self, relpath: str, table: pa.Table) -> None:
        raise NotImplementedError

    def exists(self, relpath: str) -> bool:
        raise NotImplementedError

    def list_files(self, relpath: str, suffix: str = "") -> list[str]:
        """Lake-relative paths of the files under ``relpath``, without hidden ones (see ``lake_layout.is_hidden``)."""
        raise NotImplementedError

    def sweep_temporaries(self, older_than_s: float) -> list[str]:
        """Remove temporaries of killed writes older than ``older_than_s``; lake-relative paths removed.

        Object stores write each object whole (and a killed upload leaves nothing in the bucket): none."""
        return []


class LocalLake(Lake):
    """A lake in a local folder (the embedded default)."""

    root: str

    def _path(self, relpath: str) -> Path:
        return Path(self.root) / relpath

    def uri(self, relpath: str) -> str:
        return str(self._path(relpath))

    @contextlib.contextmanager
    def write_dir(self, relpath: str) -> Iterator[Path]:
        with atomic_dir(self._path(relpath)) as tmp:
            yield tmp

    @contextlib.contextmanager
    def local_dir(self, relpath: str) -> Iterator[Path]:
        yield self._path(relpath)

    def read_json(self, relpath: str) -> Any | None:
        path = self._path(relpath)
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, relpath: str, obj: Any) -> None:
        write_bytes_atomic(self._path(relpath), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def write_table(self, relpath: str, table: pa.Table) -> None:
        with atomic_file(self._path(relpath)) as tmp:
            pq.write_table(table, tmp, compression="zstd")

    def exists(self, relpath: str) -> bool:
        return self._path(relpath).exists()

    def list_files(self, relpath: str, suffix: str = "") -> list[str]:
        folder = self._path(relpath)
        if not folder.is_dir():
            return []
        relpaths = (p.relative_to(self.root).as_posix() for p in folder.rglob(f"*{suffix}") if p.is_file())
        return sorted(r for r in relpaths if not is_hidden(r))

    def sweep_temporaries(self, older_than_s: float) -> list[str]:
        root = Path(self.root)
        return [p.relative_to(root).as_posix() for p in sweep_orphans(root, older_than_s)] if root.is_dir() else []
