"""The same sensor and materialization behaviours on the local and the S3 backends.

S3 is a real S3-compatible server (moto) on loopback, reached through dagster-aws's S3Resource, boto3 and
pyarrow exactly as in production. Sensor tests pin moto's clock so both backends land files at the same
instants; ``test_s3_second_granularity_is_covered_by_the_settle_window`` runs on the real clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context, instance_for_test, materialize
from dagster_aws.s3 import S3Resource
from moto.server import ThreadedMotoServer

from ad_assets import raw
from ad_common.lake_layout import registry_path
from ad_core.inspect import sha256_file
from ad_resources.catalog import DuckDBCatalog
from ad_resources.lake import Lake, LocalLake
from ad_resources.landing import LandingZone, LocalLandingZone
from ad_resources.s3 import MANIFEST, S3Lake, S3LandingZone, S3MirroredCatalog, resources_from_env
from ad_sensors.landing import LandingSensorSettings, evaluate_landing

OLD = (time.time_ns() // 10**9 - 3_600) * 10**9  # an hour ago, in whole seconds as S3 reports them
GOOD_MCAP = "mcap/rosbag2__rosbag2_py_test_resources_mcap_talker_talker.mcap"
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 990\n"
RAW_DBC, RAW_DRIVE = raw.definitions("de").assets


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_resource(endpoint: str) -> S3Resource:
    return S3Resource(
        endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


@contextlib.contextmanager
def moto_clock(mtime_ns: int | None) -> Iterator[None]:
    """Objects written inside get LastModified = ``mtime_ns`` (moto runs in this process)."""
    if mtime_ns is None:
        yield
        return
    at = datetime.fromtimestamp(mtime_ns // 10**9, UTC).replace(tzinfo=None)  # moto keeps naive UTC
    with mock.patch("moto.s3.models.utcnow", return_value=at):
        yield


class Backend:
    """Landing zone, lake and catalog of one kind, plus test-side access to the landing store."""

    landing: LandingZone
    lake: Lake
    catalog: DuckDBCatalog

    def land(self, market: str, drive: str, files: dict[str, bytes], mtime_ns: int | None = OLD) -> None:
        raise NotImplementedError

    def landing_bytes(self, relpath: str) -> bytes | None:
        raise NotImplementedError


class LocalBackend(Backend):
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "landing"
        self.landing = LocalLandingZone(root=str(self.root))
        self.lake = LocalLake(root=str(tmp_path / "lake"))
        self.catalog = DuckDBCatalog(path=str(tmp_path / "catalog.duckdb"), lake=self.lake)

    def land(self, market: str, drive: str, files: dict[str, bytes], mtime_ns: int | None = OLD) -> None:
        folder = self.root / market / drive
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
            if mtime_ns is not None:
                os.utime(folder / name, ns=(mtime_ns, mtime_ns))
        if mtime_ns is not None:
            os.utime(folder, ns=(mtime_ns, mtime_ns))  # the folder's mtime is part of the settle rule

    def landing_bytes(self, relpath: str) -> bytes | None:
        path = self.root / relpath
        return path.read_bytes() if path.is_file() else None


class S3Backend(Backend):
    def __init__(self, tmp_path: Path, endpoint: str) -> None:
        s3 = s3_resource(endpoint)
        suffix = uuid.uuid4().hex[:10]
        self.landing = S3LandingZone(s3=s3, bucket=f"landing-{suffix}", prefix="fleet")
        self.lake = S3Lake(s3=s3, bucket=f"lake-{suffix}", prefix="v1")
        self.catalog = S3MirroredCatalog(
            path=str(tmp_path / "catalog.duckdb"), lake=self.lake, mirror_dir=str(tmp_path / "mirror")
        )
        self.client = self.landing.client
        for bucket in (self.landing.bucket, self.lake.bucket):
            self.client.create_bucket(Bucket=bucket)

    def land(self, market: str, drive: str, files: dict[str, bytes], mtime_ns: int | None = OLD) -> None:
        with moto_clock(mtime_ns):
            for name, data in files.items():
                self.client.put_object(Bucket=self.landing.bucket, Key=f"fleet/{market}/{drive}/{name}", Body=data)

    def landing_bytes(self, relpath: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.landing.bucket, Key=f"fleet/{relpath}")["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return LocalBackend(tmp_path)
    return S3Backend(tmp_path, request.getfixturevalue("s3_endpoint"))


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


class Sensor:
    """The real sensor function on a real instance, with Dagster's handling of its result applied."""

    def __init__(self, backend: Backend, instance: DagsterInstance, settings: type[LandingSensorSettings]) -> None:
        self.backend, self.instance, self.settings = backend, instance, settings
        self.cursor: str | None = None

    def tick(self) -> list[tuple[str, str, str]]:
        with build_sensor_context(instance=self.instance, cursor=self.cursor) as context:
            result = evaluate_landing(
                context, self.backend.landing, self.backend.lake, markets=("de", "us"), settings=self.settings
            )
        if isinstance(result, SkipReason):
            return []
        assert isinstance(result, SensorResult)
        for request in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursor = result.cursor
        return sorted((r.job_name, r.partition_key, r.tags["ad-platform/registration"]) for r in result.run_requests)


def register_as_raw_drive_would(backend: Backend, market: str, drive: str) -> None:
    files = {}
    for stat in backend.landing.drive_files(market, drive):
        with backend.landing.local_file(market, drive, stat.name) as path:
            files[stat.name] = {"sha256": sha256_file(path), "size": stat.size, "mtime_ns": stat.mtime_ns}
    backend.lake.write_json(registry_path(market, drive), {"version": 1, "fingerprint": "x", "files": files})


def test_new_drives_register_once(backend: Backend, instance: DagsterInstance) -> None:
    backend.land("de", "de-veh001-a", {"a.mcap": b"1", "b.mf4": b"22"})
    backend.land("us", "us-veh001-a", {"a.mcap": b"2"})
    backend.land("de", "_dbc", {"vehicle.dbc": b'VERSION ""\n'})
    backend.land("_quarantine", "ignored", {"x": b"3"})
    sensor = Sensor(backend, instance, LandingSensorSettings)

    assert sensor.tick() == [("ingest_de", "de-veh001-a", "new"), ("ingest_us", "us-veh001-a", "new")]
    assert instance.get_dynamic_partitions("drives_de") == ["de-veh001-a"]
    (listing,) = [d for d in backend.landing.list_drives(["de"])]
    assert [(f.name, f.size, f.mtime_ns) for f in listing.files] == [("a.mcap", 1, OLD), ("b.mf4", 2, OLD)]
    assert sensor.tick() == []


def test_unchanged_reupload_registers_nothing_and_same_size_change_is_a_new_version(
    backend: Backend, instance: DagsterInstance
) -> None:
    sensor = Sensor(backend, instance, LandingSensorSettings)
    backend.land("de", "de-drive-1", {"drive.mcap": b"payload-v1", "drive.json": b"{}"})
    assert sensor.tick() == [("ingest_de", "de-drive-1", "new")]
    register_as_raw_drive_would(backend, "de", "de-drive-1")

    backend.land("de", "de-drive-1", {"drive.mcap": b"payload-v1"}, mtime_ns=OLD + 10**9)  # same bytes, later
    assert sensor.tick() == []
    backend.land("de", "de-drive-1", {"drive.mcap": b"payload-v2"}, mtime_ns=OLD + 2 * 10**9)  # same size
    assert sensor.tick() == [("ingest_de", "de-drive-1", "changed")]
    assert instance.get_dynamic_partitions("drives_de") == ["de-drive-1"]


def test_s3_second_granularity_is_covered_by_the_settle_window(
    s3_endpoint: str, tmp_path: Path, instance: DagsterInstance
) -> None:
    """Real clock: LastModified has whole seconds, so a change right after a tick could share the processed
    second; the settle window (>= 1 s) makes every later upload land in a later second."""

    class OneSecondSettle(LandingSensorSettings):
        settle_s = 1.0

    backend = S3Backend(tmp_path, s3_endpoint)
    sensor = Sensor(backend, instance, OneSecondSettle)
    time.sleep(1 - time.time() % 1)  # land at the start of a second, so the next tick is surely within settle_s
    backend.land("de", "de-live", {"drive.mcap": b"payload-v1"}, mtime_ns=None)
    assert sensor.tick() == []  # still settling
    time.sleep(1.1)
    assert sensor.tick() == [("ingest_de", "de-live", "new")]
    register_as_raw_drive_would(backend, "de", "de-live")
    backend.land("de", "de-live", {"drive.mcap": b"payload-v2"}, mtime_ns=None)  # immediately after the tick
    time.sleep(1.1)
    assert sensor.tick() == [("ingest_de", "de-live", "changed")]


def run_raw_drive(backend: Backend, instance: DagsterInstance, drive: str) -> Any:
    instance.add_dynamic_partitions("drives_de", [drive])
    return materialize(
        [RAW_DRIVE],
        partition_key=drive,
        instance=instance,
        raise_on_error=False,
        resources={"landing": backend.landing, "lake": backend.lake},
    )


def failure_message(result: Any) -> str:
    (event,) = [e for e in result.all_events if e.is_step_failure]
    return event.step_failure_data.user_failure_data.description


@pytest.mark.realdata
def test_materializing_a_good_drive_writes_registry_and_catalog_record(
    backend: Backend, instance: DagsterInstance, shared_data: Path
) -> None:
    data = (shared_data / GOOD_MCAP).read_bytes()
    backend.land("de", "de-good-1", {"talker.mcap": data})
    assert run_raw_drive(backend, instance, "de-good-1").success

    record = backend.lake.read_json(registry_path("de", "de-good-1"))
    assert record["version"] == 1 and record["total_bytes"] == len(data)
    assert record["files"]["talker.mcap"]["mtime_ns"] == OLD
    rows = backend.catalog.query("SELECT drive_id, file, kind FROM raw_files")
    assert rows == [("de-good-1", "talker.mcap", "mcap")]
    assert backend.catalog.query("SELECT drive_id, version FROM drive_registry") == [("de-good-1", 1)]


def test_a_git_lfs_pointer_fails_its_drive_and_is_quarantined_with_its_reason(
    backend: Backend, instance: DagsterInstance
) -> None:
    backend.land("de", "de-bad", {"drive.mcap": LFS_POINTER})
    result = run_raw_drive(backend, instance, "de-bad")
    assert not result.success
    assert "Git LFS pointer" in failure_message(result) and "Quarantined to" in failure_message(result)

    assert backend.landing_bytes("_quarantine/de/de-bad/drive.mcap") == LFS_POINTER  # moved, not lost
    reason = json.loads(backend.landing_bytes("_quarantine/de/de-bad/drive.mcap.reason.json") or b"{}")
    assert "Git LFS pointer" in reason["reason"]
    assert backend.landing_bytes("de/de-bad/drive.mcap") is None
    assert [q["file"] for q in backend.landing.quarantined("de", "de-bad")] == ["drive.mcap"]
    retry = run_raw_drive(backend, instance, "de-bad")
    assert not retry.success and "quarantined files" in failure_message(retry)


def write_version(lake: Lake, relpath: str, files: dict[str, bytes]) -> None:
    with lake.write_dir(relpath) as folder:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)


def lake_files(lake: Lake, relpath: str) -> dict[str, bytes]:
    if isinstance(lake, LocalLake):
        return {p: (Path(lake.root) / p).read_bytes() for p in lake.list_files(relpath)}
    assert isinstance(lake, S3Lake)
    return {
        p: lake.client.get_object(Bucket=lake.bucket, Key=f"v1/{p}")["Body"].read() for p in lake.list_files(relpath)
    }


def test_a_failure_inside_write_dir_leaves_the_previous_version_intact(backend: Backend) -> None:
    write_version(backend.lake, "decoded/de/d1", {"a.parquet": b"v1-a", "sub/b.parquet": b"v1-b"})
    before = lake_files(backend.lake, "decoded/de/d1")
    assert before == {"decoded/de/d1/a.parquet": b"v1-a", "decoded/de/d1/sub/b.parquet": b"v1-b"}
    with pytest.raises(RuntimeError, match="decoder crashed"), backend.lake.write_dir("decoded/de/d1") as folder:
        (folder / "a.parquet").write_bytes(b"v2-partial")
        raise RuntimeError("decoder crashed")
    assert lake_files(backend.lake, "decoded/de/d1") == before
    assert backend.lake.exists("decoded/de/d1") and backend.lake.exists("decoded/de/d1/a.parquet")
    assert not backend.lake.exists("decoded/de/d2")


def test_s3_write_dir_uploads_then_writes_the_manifest_then_deletes(s3_endpoint: str, tmp_path: Path) -> None:
    lake = S3Backend(tmp_path, s3_endpoint).lake
    observer = s3_resource(s3_endpoint).get_client()  # a second client: what a concurrent reader sees
    write_version(lake, "decoded/de/d1", {"a.parquet": b"v1-a", "b.parquet": b"v1-b"})
    assert lake.read_manifest("decoded/de/d1")["files"] == {"a.parquet": {"size": 4}, "b.parquet": {"size": 4}}

    calls: list[tuple[str, str]] = []

    def reader_sees_every_manifest_file(model: Any, **_: Any) -> None:
        body = observer.get_object(Bucket=lake.bucket, Key=f"v1/decoded/de/d1/{MANIFEST}")["Body"].read()
        present = {o["Key"] for o in observer.list_objects_v2(Bucket=lake.bucket, Prefix="v1/decoded/")["Contents"]}
        missing = {n for n in json.loads(body)["files"] if f"v1/decoded/de/d1/{n}" not in present}
        assert not missing, f"{missing} missing around {model.name}"

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.name, params.get("Key", "")))

    hooks = [
        ("before-parameter-build.s3.*", record),  # sees the API parameters (the object key)
        ("before-call.s3.*", reader_sees_every_manifest_file),
        ("after-call.s3.*", reader_sees_every_manifest_file),
    ]
    for event, hook in hooks:
        lake.client.meta.events.register(event, hook)
    try:
        write_version(lake, "decoded/de/d1", {"a.parquet": b"v2-aa", "c.parquet": b"v2-c"})
    finally:
        for event, hook in hooks:
            lake.client.meta.events.unregister(event, hook)

    writes = [(op, key.rsplit("/", 1)[-1]) for op, key in calls if op in ("PutObject", "DeleteObjects")]
    assert writes[-2:] == [("PutObject", MANIFEST), ("DeleteObjects", "")]
    assert sorted(writes[:-2]) == [("PutObject", "a.parquet"), ("PutObject", "c.parquet")]
    assert lake_files(lake, "decoded/de/d1") == {
        "decoded/de/d1/a.parquet": b"v2-aa",
        "decoded/de/d1/c.parquet": b"v2-c",
    }
    assert set(lake.read_manifest("decoded/de/d1")["files"]) == {"a.parquet", "c.parquet"}


def test_s3_large_files_go_multipart_both_ways(s3_endpoint: str, tmp_path: Path) -> None:
    backend = S3Backend(tmp_path, s3_endpoint)
    big = os.urandom(9 * 2**20)  # above boto3's 8 MiB multipart threshold
    write_version(backend.lake, "decoded/de/big", {"frames.parquet": big})
    head = backend.client.head_object(Bucket=backend.lake.bucket, Key="v1/decoded/de/big/frames.parquet")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart upload's ETag counts its parts
    backend.land("de", "de-big", {"drive.mcap": big})
    with backend.landing.local_file("de", "de-big", "drive.mcap") as path:
        assert path.name == "drive.mcap" and path.read_bytes() == big
    assert not path.exists()  # the download is removed after use


def test_s3_table_and_json_round_trip_and_uri(s3_endpoint: str, tmp_path: Path) -> None:
    lake = S3Backend(tmp_path, s3_endpoint).lake
    lake.write_table("catalog/raw_files/de/d1.parquet", pa.table({"x": [1, 2]}))
    lake.write_json("registry/de/d1.json", {"version": 3})
    assert lake.read_json("registry/de/d1.json") == {"version": 3}
    assert lake.read_json("registry/de/none.json") is None
    assert lake.list_files("catalog", ".parquet") == ["catalog/raw_files/de/d1.parquet"]
    assert lake.uri("decoded/de/d1") == f"s3://{lake.bucket}/v1/decoded/de/d1"


def test_resources_from_env_picks_s3_for_s3_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AD_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("AD_LANDING_URL", raising=False)
    monkeypatch.delenv("AD_LAKE_URL", raising=False)
    local = resources_from_env()
    assert isinstance(local["landing"], LocalLandingZone) and isinstance(local["lake"], LocalLake)

    monkeypatch.setenv("AD_LANDING_URL", "s3://fleet-landing/incoming")
    monkeypatch.setenv("AD_LAKE_URL", "s3://fleet-lake")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    remote = resources_from_env()
    landing, lake, catalog = remote["landing"], remote["lake"], remote["catalog"]
    assert isinstance(landing, S3LandingZone) and (landing.bucket, landing.prefix) == ("fleet-landing", "incoming")
    assert isinstance(lake, S3Lake) and lake.uri("registry") == "s3://fleet-lake/registry"
    assert isinstance(catalog, S3MirroredCatalog) and catalog.lake is lake
    assert landing.s3.endpoint_url == "http://127.0.0.1:9"


@pytest.mark.slow
def test_s3_lists_ten_thousand_drives_page_by_page_without_downloading(s3_endpoint: str, tmp_path: Path) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = S3Backend(tmp_path, s3_endpoint)
    server = s3_backends[DEFAULT_ACCOUNT_ID]["global"]  # seeded in-process: 10k PUTs over HTTP take ~90 s
    for i in range(10_000):
        server.put_object(backend.landing.bucket, f"fleet/de/de-veh{i:05d}/drive.mcap", b"m")
    backend.land("us", "us-veh00001", {"drive.mcap": b"m"})
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    backend.client.meta.events.register("before-parameter-build.s3.*", record)
    started = time.monotonic()
    drives = list(backend.landing.list_drives(["de", "us", "cn"]))
    elapsed = time.monotonic() - started
    print(f"\n10,001 drives listed from moto over loopback in {elapsed:.2f} s ({len(calls)} ListObjectsV2 calls)")
    assert len(drives) == len({(d.market, d.drive_id) for d in drives}) == 10_001
    assert calls == ["ListObjectsV2"] * (10 + 1 + 1)  # 1000 keys per page; nothing downloaded


def test_s3_catalog_mirror_follows_changes_and_deletions(s3_endpoint: str, tmp_path: Path) -> None:
    backend = S3Backend(tmp_path, s3_endpoint)
    lake, catalog = backend.lake, backend.catalog
    for drive in ("d1", "d2"):
        lake.write_table(f"catalog/raw_files/de/{drive}.parquet", pa.table({"drive_id": [drive], "n": [1]}))
    assert catalog.query("SELECT drive_id, n FROM raw_files ORDER BY drive_id") == [("d1", 1), ("d2", 1)]

    lake.write_table("catalog/raw_files/de/d1.parquet", pa.table({"drive_id": ["d1"], "n": [2]}))
    backend.client.delete_object(Bucket=lake.bucket, Key="v1/catalog/raw_files/de/d2.parquet")
    assert catalog.query("SELECT drive_id, n FROM raw_files ORDER BY drive_id") == [("d1", 2)]
