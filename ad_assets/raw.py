"""Stage 1, raw drives: register and validate the files of each landed drive."""

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetKey,
    DataVersion,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    observable_source_asset,
)

from ad_assets.stage_asset import stage_asset_args
from ad_common.formats import printable
from ad_common.lake_layout import RAW_FILES, registry_path
from ad_common.stages import LANDED_AT_TAG, RAW_DRIVE, VEHICLE_DBC
from ad_core.inspect import InvalidLogError, LogInventory, inspect_file
from ad_resources.lake import Lake
from ad_resources.landing import LandingZone

NO_DBC = "no-dbc"
# A drive of thousands of small files must not write thousands of log events or a megabyte materialization
# event: past these counts, one summary line, and the metadata lists the first files and counts the rest
# (every file is in the catalog's raw_files).
FILES_LOGGED = 50
FILES_IN_METADATA = 50
STREAMS_IN_METADATA = 200
# Files are inspected two at a time: an MCAP's check and hash run beside an MDF's check (which waits on its child
# process) on the second core.
INSPECT_THREADS = 2


def drive_fingerprint(inventories: list[LogInventory]) -> str:
    """Content identity of a drive: the sha256 of its files' names and content hashes."""
    digest = hashlib.sha256()
    for inv in sorted(inventories, key=lambda i: i.name):
        digest.update(f"{inv.name}\0{inv.sha256}\n".encode())
    return digest.hexdigest()


def _inventory_table(market: str, drive_id: str, version: int, inventories: list[LogInventory]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "market": market,
                "drive_id": drive_id,
                "drive_version": version,
                "file": inv.name,
                "kind": inv.kind,
                "size_bytes": inv.size_bytes,
                "sha256": inv.sha256,
                "format_version": inv.format_version,
                "finalized": inv.finalized,
                "start_ns": inv.start_ns,
                "end_ns": inv.end_ns,
                "streams": [{"name": k, "count": v} for k, v in inv.streams.items()],
                "notes": inv.notes,
            }
            for inv in inventories
        ],
        schema=RAW_FILES.schema,
    )


def register_drive(
    landing: LandingZone, lake: Lake, market: str, drive_id: str, landed_at_ns: int | None, log: Any
) -> dict[str, Any]:
    """Validate every file of one drive and record it in the registry and catalog.

    Raises :class:`dagster.Failure` naming the file and the reason when a file is not what it claims;
    that file is quarantined first, so nothing is lost and the next attempt sees why.
    """
    quarantined = landing.quarantined(market, drive_id)
    if quarantined:
        listing = "; ".join(f"{printable(q['file'])}: {q['reason']}" for q in quarantined)
        raise Failure(
            description=f"drive {market}/{drive_id} has quarantined files ({listing}). Fix or remove them in the "
            "quarantine area, then re-land the drive.",
            metadata={"quarantined": MetadataValue.json(quarantined)},
        )
    refused = landing.refused_entries(market, drive_id)
    if refused:
        # Never read (so never hashed, and nothing they point to reaches a message or the catalog).
        moved = [
            landing.quarantine(market, drive_id, r.name, f"{printable(r.name)} {r.reason}")
            for r in refused
            if r.name != "."
        ]
        listing = "; ".join(f"{printable(r.name)} {r.reason}" if r.name != "." else r.reason for r in refused)
        raise Failure(
            description=f"drive {market}/{drive_id}: refused: {listing}."
            + (f" Quarantined to {', '.join(moved)}." if moved else ""),
            metadata={"refused": MetadataValue.json([{"file": r.name, "reason": r.reason} for r in refused])},
        )
    files = landing.drive_files(market, drive_id)
    if not files:
        raise Failure(description=f"drive {market}/{drive_id}: no files found in landing zone {landing.describe()}")

    def inspect(name: str) -> LogInventory:
        with landing.local_file(market, drive_id, name) as path:
            return inspect_file(path)

    inventories = []
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=INSPECT_THREADS, thread_name_prefix="inspect")
    try:
        futures = [pool.submit(inspect, stat.name) for stat in files]
        for stat, future in zip(files, futures, strict=True):
            try:
                inventories.append(future.result())
            except InvalidLogError as exc:
                pool.shutdown(wait=True, cancel_futures=True)  # nothing reads the drive while its file moves
                where = landing.quarantine(market, drive_id, stat.name, exc.reason)
                raise Failure(
                    description=f"drive {market}/{drive_id}: file {printable(stat.name)} {exc.reason}. "
                    f"Quarantined to {printable(where)}.",
                    metadata={"file": stat.name, "reason": exc.reason, "quarantined_to": where},
                ) from exc
            if len(files) <= FILES_LOGGED:
                log.info(f"{market}/{drive_id}: {printable(stat.name)} ok ({stat.size / 1e6:.1f} MB)")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if len(files) > FILES_LOGGED:
        log.info(
            f"{market}/{drive_id}: {len(files)} files ok ({sum(f.size for f in files) / 1e6:.1f} MB) "
            f"in {time.monotonic() - started:.1f} s"
        )

    fingerprint = drive_fingerprint(inventories)
    previous = lake.read_json(registry_path(market, drive_id))
    if previous is None:
        version = 1
    elif previous["fingerprint"] == fingerprint:
        version = previous["version"]
    else:
        version = previous["version"] + 1
        log.warning(f"{market}/{drive_id}: content changed since version {previous['version']}; now version {version}")
    mtimes = {f.name: f.mtime_ns for f in files}
    record = {
        "market": market,
        "drive_id": drive_id,
        "version": version,
        "fingerprint": fingerprint,
        "landed_at_ns": landed_at_ns or max(mtimes.values()),
        "registered_at_ns": previous["registered_at_ns"]
        if previous and version == previous["version"]
        else time.time_ns(),
        "total_bytes": sum(inv.size_bytes for inv in inventories),
        "files": {
            inv.name: {"sha256": inv.sha256, "size": inv.size_bytes, "mtime_ns": mtimes[inv.name]}
            for inv in inventories
        },
    }
    lake.write_table(
        RAW_FILES.path(market, drive_id),
        _inventory_table(market, drive_id, version, inventories),
    )
    lake.write_json(registry_path(market, drive_id), record)
    return {"record": record, "inventories": inventories}


def _drive_metadata(record: dict[str, Any], inventories: list[LogInventory]) -> dict[str, Any]:
    starts = [i.start_ns for i in inventories if i.start_ns is not None and i.kind in ("mdf4", "mcap")]
    ends = [i.end_ns for i in inventories if i.end_ns is not None and i.kind in ("mdf4", "mcap")]
    rows = "\n".join(
        f"| {printable(i.name)} | {i.kind} | {i.size_bytes / 1e6:.2f} | {len(i.streams)} | "
        f"{'' if i.duration_s is None else f'{i.duration_s:.1f}'} | {i.sha256[:12]} | {'; '.join(i.notes)} |"
        for i in inventories[:FILES_IN_METADATA]
    )
    if len(inventories) > FILES_IN_METADATA:
        rows += f"\n| … {len(inventories) - FILES_IN_METADATA} more files (catalog: raw_files) | | | | | | |"
    streams = [f"- `{printable(i.name)}` {name}: {count}" for i in inventories for name, count in i.streams.items()]
    inventory = "\n".join(streams[:STREAMS_IN_METADATA])
    if len(streams) > STREAMS_IN_METADATA:
        inventory += f"\n- … {len(streams) - STREAMS_IN_METADATA} more (catalog: raw_files.streams)"
    return {
        "drive_version": record["version"],
        "fingerprint": record["fingerprint"],
        "total_bytes": record["total_bytes"],
        "file_count": len(inventories),
        "time_span_s": round((max(ends) - min(starts)) / 1e9, 3) if starts and ends else None,
        "start_time_ns": min(starts) if starts else None,
        "files": MetadataValue.md(
            "| file | kind | MB | streams | duration s | sha256 | notes |\n|---|---|---|---|---|---|---|\n" + rows
        ),
        "channel_topic_inventory": MetadataValue.md(inventory or "(none)"),
    }


def definitions(market: str) -> Definitions:
    """The market's DBC (an external, observed asset) and its raw_drive asset."""

    @observable_source_asset(
        key=AssetKey([market, VEHICLE_DBC]),
        group_name=RAW_DRIVE.group,
        description=f"The DBC files that decode {market.upper()} CAN frames (landing `{market}/_dbc/`). Its data "
        "version is their sha256: the landing sensor observes it every tick, so a changed DBC marks the market's "
        "decoded drives stale and a backfill of stale partitions re-decodes them.",
    )
    def vehicle_dbc(landing: LandingZone) -> DataVersion:
        return DataVersion(landing.dbc_version(market) or NO_DBC)

    @asset(
        **stage_asset_args(RAW_DRIVE, market),
        kinds={"mdf4", "mcap"},
        description=f"A landed {market.upper()} drive, validated: MDF4 header and finalisation state, MCAP magic, "
        "summary and record structure (each chunk's CRC is verified by decoded_signals as it decompresses it), "
        "per-file sha256, time span and channel/topic inventory. A file that is not what it claims fails only its "
        "own drive and is moved to the quarantine area with a reason file.",
    )
    def raw_drive(context: AssetExecutionContext, landing: LandingZone, lake: Lake) -> MaterializeResult:
        landed_tag = context.run.tags.get(LANDED_AT_TAG)
        results, failures = [], []
        for drive_id in context.partition_keys:
            try:
                results.append(
                    register_drive(
                        landing, lake, market, drive_id, int(landed_tag) if landed_tag else None, context.log
                    )
                )
            except Failure as failure:
                if len(context.partition_keys) == 1:
                    raise
                context.log.error(failure.description or str(failure))
                failures.append(failure.description or str(failure))
        if failures:
            raise Failure(
                description=f"{len(failures)} of {len(context.partition_keys)} drives failed: " + " | ".join(failures)
            )
        if len(results) == 1:
            record = results[0]["record"]
            return MaterializeResult(
                metadata=_drive_metadata(record, results[0]["inventories"]),
                data_version=DataVersion(record["fingerprint"]),
            )
        return MaterializeResult(
            metadata={
                "drives": len(results),
                "total_bytes": sum(r["record"]["total_bytes"] for r in results),
                "versions": MetadataValue.json({r["record"]["drive_id"]: r["record"]["version"] for r in results}),
            }
        )

    return Definitions(assets=[vehicle_dbc, raw_drive])
