"""Test stand-in for the curated splits stage (issue 12, built elsewhere): a manifest in exactly the contract's
schema (``SPLIT_MANIFEST_SCHEMA``) from synced drives in a lake, and a recorded materialization of
``<market>/curated_splits`` carrying ``manifest_path``, ``manifest_sha256`` and ``split_version``.

Drives are assigned to splits by the rank of ``sha256(drive_id)`` within the market, so that even two drives
give a train and a test drive (a per-drive hash threshold would often leave a tiny market without a test split).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetKey, AssetMaterialization, DagsterInstance

from ad_common.hashing import sha256_file
from ad_common.lake_layout import (
    DRIVE_SIGNAL_SUMMARIES,
    FRAMES_FILE,
    ODD_TAGS,
    SPLIT_MANIFEST_SCHEMA,
    decoded_path,
    split_manifest_path,
    synced_path,
)

FLEET_CAMERA_STREAM = "mcap__camera_front_compressed"  # the fleetgen sensor profile's front camera

DATA_VERSION_TAG = "dagster/data_version"


def assign_splits(drive_ids: Sequence[str]) -> dict[str, str]:
    """test: ~20 % (at least 1 of 2+), val: ~10 % (only from 4 drives), train: the rest; by hash rank."""
    ranked = sorted(drive_ids, key=lambda d: hashlib.sha256(d.encode()).hexdigest())
    n = len(ranked)
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    n_val = max(1, round(0.1 * n)) if n >= 4 else 0
    return {d: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, d in enumerate(ranked)}


def write_manifest(
    lake_root: Path,
    market: str,
    split_version: str = "v1",
    *,
    splits: dict[str, str] | None = None,
    exclude: dict[str, Sequence[int]] | None = None,
) -> tuple[str, str]:
    """Write ``splits/<market>/<version>/manifest.parquet`` for every synced drive of the market.

    ``splits`` overrides the hash assignment (drive -> split); ``exclude`` marks frames (drive -> frame indices)
    as excluded by a reviewer. Returns (lake-relative manifest path, its sha256).
    """
    synced_root = lake_root / "synced" / market
    drives = sorted(p.name for p in synced_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    assignment = splits or assign_splits(drives)
    tables = []
    for drive in drives:
        if drive not in assignment:
            continue
        frames_rel = f"{synced_path(market, drive)}/{FRAMES_FILE}"
        frames = pq.read_table(lake_root / frames_rel, columns=["timestamp_ns", "frame_index"])
        summary_path = lake_root / DRIVE_SIGNAL_SUMMARIES.path(market, drive)
        odd = pq.read_table(summary_path).to_pylist()[0] if summary_path.is_file() else {}
        n = frames.num_rows
        excluded = np.isin(
            frames.column("frame_index").to_numpy(), np.asarray((exclude or {}).get(drive, []), np.int64)
        )
        tables.append(
            pa.table(
                {
                    "market": [market] * n,
                    "drive_id": [drive] * n,
                    "frame_index": frames.column("frame_index"),
                    "timestamp_ns": frames.column("timestamp_ns"),
                    "split": [assignment[drive]] * n,
                    "synced_path": [frames_rel] * n,
                    "synced_sha256": [sha256_file(lake_root / frames_rel)] * n,
                    "camera_path": [f"{decoded_path(market, drive)}/{FLEET_CAMERA_STREAM}.parquet"] * n,
                    **{tag: [odd.get(tag) or "unknown"] * n for tag in ODD_TAGS},
                    "excluded": excluded,
                    "exclusion_reason": [("blurred test frame" if e else None) for e in excluded],
                    "excluded_by": [("test-reviewer" if e else None) for e in excluded],
                    "excluded_at": [("2026-12-01T00:00:00Z" if e else None) for e in excluded],
                    "exclusion_source": [("tests/support/splits.py" if e else None) for e in excluded],
                },
                schema=SPLIT_MANIFEST_SCHEMA,
            )
        )
    rel = split_manifest_path(market, split_version)
    (lake_root / rel).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), lake_root / rel, compression="zstd")
    return rel, sha256_file(lake_root / rel)


def record_curated_splits(
    instance: DagsterInstance, market: str, manifest_path: str, sha256: str, version: str
) -> None:
    """What the curated_splits asset's materialization will carry (its data version is the manifest sha256)."""
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=AssetKey([market, "curated_splits"]),
            metadata={"manifest_path": manifest_path, "manifest_sha256": sha256, "split_version": version},
            tags={DATA_VERSION_TAG: sha256},
        )
    )


def publish_splits(
    instance: DagsterInstance, lake_root: Path, market: str, version: str = "v1", **kwargs: object
) -> str:
    """Write the manifest and record the materialization; returns the manifest sha256."""
    rel, sha = write_manifest(lake_root, market, version, **kwargs)  # type: ignore[arg-type]
    record_curated_splits(instance, market, rel, sha, version)
    return sha


def synced_fleet(root: Path, market: str, drives: int, minutes: float, seed: int = 7) -> Path:
    """Generate ``drives`` fleetgen drives and materialize raw -> decoded -> synced for each (real runs, a real
    instance); returns the lake root. Every drive's synced frames and decoded camera table are then in the lake."""
    from dagster import instance_for_test, materialize

    from ad_assets import decoded, raw, synced
    from ad_resources.lake import LocalLake
    from ad_resources.landing import LocalLandingZone
    from ad_resources.quality import GreatExpectationsResource
    from fleetgen import generate_drive

    landing, lake = root / "landing", root / "lake"
    assets = [*raw.definitions(market).assets, *decoded.definitions(market).assets, *synced.definitions(market).assets]
    with instance_for_test() as instance:
        for index in range(drives):
            drive = generate_drive(landing, market, index, minutes, seed=seed)
            instance.add_dynamic_partitions(f"drives_{market}", [drive.name])
            result = materialize(
                assets,
                partition_key=drive.name,
                instance=instance,
                resources={
                    "landing": LocalLandingZone(root=str(landing)),
                    "lake": LocalLake(root=str(lake)),
                    "great_expectations": GreatExpectationsResource(),
                },
            )
            assert result.success, f"{drive.name} did not reach synced_frames"
    return lake


def lake_view(shared_lake: Path, root: Path) -> Path:
    """A test's own lake over a shared, read-only synced fleet: synced and decoded folders linked, the rest
    (manifests, search results, audit records) its own."""
    lake = root / "lake"
    for folder in ("synced", "decoded", "catalog/drive_signal_summaries"):
        (lake / folder).parent.mkdir(parents=True, exist_ok=True)
        (lake / folder).symlink_to(shared_lake / folder, target_is_directory=True)
    return lake


def publish_shards(instance: DagsterInstance, lake_root: Path, market: str, **config: object) -> str:
    """Materialize ``<market>/training_shards`` of the latest recorded splits; returns the index path."""
    from dagster import materialize

    from ad_assets import shards
    from ad_resources.lake import LocalLake

    result = materialize(
        shards.definitions(market).assets,
        instance=instance,
        resources={"lake": LocalLake(root=str(lake_root))},
        run_config={"ops": {f"{market}__training_shards": {"config": {"workers": 0, **config}}}},
    )
    assert result.success, f"{market}/training_shards did not materialize"
    return str(result.get_asset_materialization_events()[0].materialization.metadata["index_path"].value)
