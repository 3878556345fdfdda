"""S3 backends for the landing zone, the lake and the catalog, on dagster-aws's :class:`S3Resource`.

Endpoint, region and credentials are the nested ``S3Resource``'s configuration (the boto3 credential chain
when left unset), so the same code runs against AWS or any S3-compatible store. Semantics match
``LocalLandingZone`` / ``LocalLake``; where S3 cannot give the same guarantee (no rename, no directory
replace), the closest sound behaviour is documented in docs/architecture-s3.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from ad_common import settings
from ad_common.atomic import write_bytes_atomic
from ad_common.lake_layout import CATALOG_RECORDS, is_hidden
from ad_resources.catalog import DuckDBCatalog, MetadataCatalog
from ad_resources.lake import Lake, LocalLake
from ad_resources.landing import (
    QUARANTINE_FOLDER,
    DriveListing,
    FileStat,
    LandingZone,
    LocalLandingZone,
)

MANIFEST = "_manifest.json"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys per request
_MIRROR_WORKERS = 8


def _mtime_ns(last_modified: datetime) -> int:
    # Integer arithmetic: a float timestamp would lose the nanosecond digits.
    return (last_modified - _EPOCH) // timedelta(microseconds=1) * 1000


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class S3Location(ConfigurableResource):
    """A bucket and key prefix reached through a dagster-aws ``S3Resource``."""

    s3: S3Resource
    bucket: str
    prefix: str = ""
    _client: Any = PrivateAttr(default=None)

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created once per resource instance; boto3 clients are thread-safe)."""
        if self._client is None:
            self._client = self.s3.get_client()
        return self._client

    @property
    def _root(self) -> str:
        prefix = self.prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    def _key(self, relpath: str) -> str:
        return self._root + relpath.strip("/")

    def _s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under ``prefix``, in key order: ListObjectsV2, 1000 keys per request, no delimiter."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    @contextlib.contextmanager
    def _download(self, key: str, name: str) -> Iterator[Path]:
        # The local name keeps the file's own name: validators dispatch on the extension. TMPDIR sets the volume.
        with tempfile.TemporaryDirectory(prefix="ad-s3-") as tmp:
            path = Path(tmp) / name
            try:
                self.client.download_file(self.bucket, key, str(path))  # streamed, multipart for large objects
            except ClientError as exc:
                if _is_missing(exc):
                    raise FileNotFoundError(self._s3_uri(key)) from exc
                raise
            yield path

    def _put_json(self, key: str, obj: Any) -> None:
        body = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def _get_json(self, key: str) -> Any | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return json.loads(response["Body"].read())

    def _delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + _DELETE_BATCH]]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                raise RuntimeError(f"could not delete from s3://{self.bucket}: {response['Errors'][:5]}")


class S3LandingZone(LandingZone, S3Location):
    """The landing zone in ``s3://<bucket>/<prefix>/<market>/<drive_id>/<files>``.

    Listing never downloads: one paginated ListObjectsV2 per market prefix per call (see the architecture doc
    for why there is no listing cursor). ``mtime_ns`` is the object's LastModified (whole seconds on S3).
    """

    def describe(self) -> str:
        return self._s3_uri(self._root)

    def _drive_key(self, market: str, drive_id: str, name: str = "") -> str:
        return self._key(f"{market}/{drive_id}") + f"/{name}"

    @staticmethod
    def _stat(name: str, obj: dict[str, Any]) -> FileStat:
        return FileStat(name, int(obj["Size"]), _mtime_ns(obj["LastModified"]))

    def _direct_files(self, folder_key: str) -> list[FileStat]:
        """Files directly in a folder, hidden ones and sub-folders skipped, as the local zone does."""
        stats = []
        for obj in self._objects(folder_key):
            name = obj["Key"][len(folder_key) :]
            if name and "/" not in name and not name.startswith("."):
                stats.append(self._stat(name, obj))
        return sorted(stats, key=lambda f: f.name)

    def list_drives(self, markets: Sequence[str]) -> Iterator[DriveListing]:
        for market in markets:
            base = self._key(market) + "/"
            drive_id, files = "", []
            # Keys sharing the prefix "<market>/<drive>/" are contiguous in key order, so a drive is complete
            # when the next drive starts: listings stream without holding the market in memory.
            for obj in self._objects(base):
                parts = obj["Key"][len(base) :].split("/")
                if len(parts) != 2 or parts[0].startswith("_") or not parts[1] or parts[1].startswith("."):
                    continue
                if parts[0] != drive_id:
                    if files:
                        yield DriveListing(market, drive_id, tuple(sorted(files, key=lambda f: f.name)))
                    drive_id, files = parts[0], []
                files.append(self._stat(parts[1], obj))
            if files:
                yield DriveListing(market, drive_id, tuple(sorted(files, key=lambda f: f.name)))

    def drive_files(self, market: str, drive_id: str) -> list[FileStat]:
        return self._direct_files(self._drive_key(market, drive_id))

    def local_file(self, market: str, drive_id: str, name: str) -> contextlib.AbstractContextManager[Path]:
        return self._download(self._drive_key(market, drive_id, name), name)

    def market_files(self, market: str, folder: str, suffix: str) -> list[FileStat]:
        return [f for f in self._direct_files(self._drive_key(market, folder)) if f.name.lower().endswith(suffix)]

    def local_market_file(self, market: str, folder: str, name: str) -> contextlib.AbstractContextManager[Path]:
        return self._download(self._drive_key(market, folder, name), name)

    def _quarantine_key(self, market: str, drive_id: str, name: str = "") -> str:
        return self._key(f"{QUARANTINE_FOLDER}/{market}/{drive_id}") + f"/{name}"

    def quarantine(self, market: str, drive_id: str, name: str, reason: str) -> str:
        """Copy a bad file to the quarantine area next to its reason file, then delete the original.

        S3 has no move: the reason is written first and the source deleted last, so a crash in between
        leaves a duplicate, never a loss.
        """
        target = self._quarantine_key(market, drive_id, name)
        self._put_json(
            f"{target}.reason.json",
            {
                "file": name,
                "market": market,
                "drive_id": drive_id,
                "reason": reason,
                "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        source = self._drive_key(market, drive_id, name)
        try:
            # The managed copy switches to multipart copy above 5 GB, where CopyObject alone would fail.
            self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target)
        except ClientError as exc:
            if not _is_missing(exc):  # already moved by an earlier attempt
                raise
        else:
            self.client.delete_object(Bucket=self.bucket, Key=source)
        return self._s3_uri(target)

    def quarantined(self, market: str, drive_id: str) -> list[dict[str, str]]:
        folder = self._quarantine_key(market, drive_id)
        keys = sorted(o["Key"] for o in self._objects(folder) if o["Key"].endswith(".reason.json"))
        return [self._get_json(k) for k in keys]


class S3Lake(Lake, S3Location):
    """The lake in ``s3://<bucket>/<prefix>/``.

    Single objects are replaced by one PUT (atomic per object). A folder cannot be swapped atomically on S3,
    so :meth:`write_dir` uploads the new files, then ``_manifest.json``, and only then deletes what the new
    version no longer has: objects are never missing, and the manifest names the complete set.
    """

    def uri(self, relpath: str) -> str:
        return self._s3_uri(self._key(relpath))

    @contextlib.contextmanager
    def write_dir(self, relpath: str) -> Iterator[Path]:
        folder = self._key(relpath) + "/"
        with tempfile.TemporaryDirectory(prefix="ad-lake-") as tmp:
            yield Path(tmp)  # an exception here leaves the previous version untouched: nothing was sent yet
            files = {p.relative_to(tmp).as_posix(): p for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
            previous = [o["Key"] for o in self._objects(folder)]
            for name, path in files.items():
                self.client.upload_file(str(path), self.bucket, folder + name)
            self._put_json(
                folder + MANIFEST,
                {
                    "version": uuid.uuid4().hex,
                    "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "files": {name: {"size": path.stat().st_size} for name, path in files.items()},
                },
            )
            current = {folder + name for name in files} | {folder + MANIFEST}
            self._delete([k for k in previous if k not in current])

    def read_manifest(self, relpath: str) -> dict[str, Any] | None:
        """The manifest of the last complete :meth:`write_dir` of ``relpath`` (None before the first)."""
        return self._get_json(self._key(relpath) + "/" + MANIFEST)

    def read_json(self, relpath: str) -> Any | None:
        return self._get_json(self._key(relpath))

    def write_json(self, relpath: str, obj: Any) -> None:
        self._put_json(self._key(relpath), obj)

    def write_table(self, relpath: str, table: pa.Table) -> None:
        # Catalog records are small: serialise in memory and send one PUT, so readers never see a partial file.
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.client.put_object(Bucket=self.bucket, Key=self._key(relpath), Body=buffer.getvalue())

    def exists(self, relpath: str) -> bool:
        key = self._key(relpath)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if not _is_missing(exc):
                raise
        return self.client.list_objects_v2(Bucket=self.bucket, Prefix=key + "/", MaxKeys=1).get("KeyCount", 0) > 0

    def list_files(self, relpath: str, suffix: str = "") -> list[str]:
        """Lake-relative paths of the files under ``relpath``; hidden files and manifests are left out like
        the local lake leaves out its temporaries."""
        root = self._root
        names = []
        for obj in self._objects(self._key(relpath) + "/"):
            rel = obj["Key"][len(root) :]
            if rel.endswith(suffix) and rel.rsplit("/", 1)[-1] != MANIFEST and not is_hidden(rel):
                names.append(rel)
        return sorted(names)

    @contextlib.contextmanager
    def local_dir(self, relpath: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="lake-") as tmp:
            self.mirror(relpath, Path(tmp))
            yield Path(tmp) / relpath

    def mirror(self, folder: str, root: Path) -> None:
        """Make ``root/<folder>`` a copy of the lake's ``folder``, downloading only objects whose ETag changed.

        Holds an exclusive lock on ``root`` so concurrent mirrors on one host keep the ETag index truthful.
        """
        root.mkdir(parents=True, exist_ok=True)
        index_path = root / ".mirror-etags.json"
        with open(root / ".mirror.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index: dict[str, str] = json.loads(index_path.read_text()) if index_path.is_file() else {}
            remote = {o["Key"][len(self._root) :]: o["ETag"] for o in self._objects(self._key(folder) + "/")}
            stale = [rel for rel, etag in remote.items() if index.get(rel) != etag or not (root / rel).is_file()]

            def fetch(rel: str) -> None:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                # boto3 downloads to a temporary name and renames: readers never see a partial record.
                self.client.download_file(self.bucket, self._key(rel), str(root / rel))

            with ThreadPoolExecutor(_MIRROR_WORKERS) as pool:
                list(pool.map(fetch, stale))
            local_folder = root / folder
            for path in list(local_folder.rglob("*")) if local_folder.is_dir() else []:
                rel = path.relative_to(root).as_posix()
                if path.is_file() and rel not in remote:
                    path.unlink()
                    index.pop(rel, None)
            index.update({rel: remote[rel] for rel in stale})
            write_bytes_atomic(index_path, json.dumps(index, sort_keys=True).encode())


class S3MirroredCatalog(DuckDBCatalog):
    """The DuckDB catalog of an S3 lake, for DuckDB builds without the httpfs extension (it is downloaded on
    first use, which an offline or locked-down host cannot do).

    Each :meth:`connect` first syncs the catalog's record folders (small per-drive files) into ``mirror_dir``,
    fetching only changed objects, and then opens the unchanged local catalog over that mirror.
    """

    lake: S3Lake
    mirror_dir: str

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        for record in CATALOG_RECORDS:
            self.lake.mirror(record.folder, Path(self.mirror_dir))
        with DuckDBCatalog(path=self.path, lake=LocalLake(root=self.mirror_dir)).connect() as con:
            yield con

    @contextlib.contextmanager
    def records_root(self) -> Iterator[str]:
        for record in CATALOG_RECORDS:
            self.lake.mirror(record.folder, Path(self.mirror_dir))
        yield str(Path(self.mirror_dir))


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    return parsed.netloc, parsed.path.strip("/")


def resources_from_env() -> dict[str, ConfigurableResource]:
    """``landing``, ``lake`` and ``catalog`` for this environment.

    ``AD_LANDING_URL`` / ``AD_LAKE_URL`` set to ``s3://bucket[/prefix]`` select the S3 backends (endpoint from
    ``AWS_ENDPOINT_URL`` when set); unset, the local folders of :mod:`ad_common.settings` are used.
    """
    # Only the endpoint is set here; region and credentials follow boto3's chain (AWS_REGION, IRSA, profiles).
    s3 = S3Resource(endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    landing_url, lake_url = os.environ.get("AD_LANDING_URL"), os.environ.get("AD_LAKE_URL")
    landing: LandingZone
    if landing_url:
        bucket, prefix = parse_s3_url(landing_url)
        landing = S3LandingZone(s3=s3, bucket=bucket, prefix=prefix)
    else:
        landing = LocalLandingZone(root=str(settings.landing_dir()))
    catalog_path = str(settings.catalog_path())
    catalog: DuckDBCatalog
    lake: Lake
    if lake_url:
        bucket, prefix = parse_s3_url(lake_url)
        lake = S3Lake(s3=s3, bucket=bucket, prefix=prefix)
        mirror = str(settings.state_dir() / "catalog-mirror")
        catalog = S3MirroredCatalog(path=catalog_path, lake=lake, mirror_dir=mirror)
    else:
        lake = LocalLake(root=str(settings.lake_dir()))
        catalog = DuckDBCatalog(path=catalog_path, lake=lake)
    return {
        "landing": landing,
        "lake": lake,
        "catalog": catalog,
        "metadata_catalog": MetadataCatalog(path=str(settings.metadata_catalog_path()), records=catalog),
    }
