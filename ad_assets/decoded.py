"""Stage 2, decoded signals: each drive's logs as columnar Parquet, one table per stream."""

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from ad_assets.checks import check_specs, evaluate_rules, nominal_rates, record_drive_checks
from ad_assets.stage_asset import stage_asset_args
from ad_common.formats import classify, printable
from ad_common.lake_layout import DECODED_STREAMS, decoded_path, registry_path
from ad_common.stages import DECODED_SIGNALS
from ad_core.decode import DECODER_VERSION, CorruptChunk, DriveDecodeReport, decode_drive
from ad_core.quality.profile import SignalProfile, StreamProfile, drive_profiles
from ad_core.quality.rules import DECODED_RULES, profile_tables
from ad_resources.lake import Lake
from ad_resources.landing import FileStat, LandingZone
from ad_resources.quality import GreatExpectationsResource


def _error_row(market: str, drive_id: str, error: str, inputs: set[str]) -> dict[str, Any]:
    """A drive-level decoder error as a decoded_streams row (no stream; the file it names, if any)."""
    named = error.split(":", 1)[0]
    return {
        "market": market,
        "drive_id": drive_id,
        "kind": "error",
        "source_file": named if named in inputs else None,
        "rows": 0,
        "status": "error",
        "error": error,
        "decoder_version": DECODER_VERSION,
        "out_of_order_samples": 0,
    }


def _streams_table(market: str, drive_id: str, report: DriveDecodeReport) -> pa.Table:
    inputs = {Path(f).name for f in report.files}
    return pa.Table.from_pylist(
        [
            {
                "market": market,
                "drive_id": drive_id,
                "stream": s.name,
                "kind": s.kind,
                "source_file": s.source_file,
                "rows": s.rows,
                "start_ns": s.start_ns,
                "end_ns": s.end_ns,
                "rate_hz": s.rate_hz,
                "status": s.status,
                "error": s.error,
                "parquet": f"{decoded_path(market, drive_id)}/{Path(str(s.parquet)).name}" if s.parquet else None,
                "decoder_version": DECODER_VERSION,
                "out_of_order_samples": s.out_of_order_samples,
            }
            for s in report.streams
        ]
        + [_error_row(market, drive_id, e, inputs) for e in report.errors],
        schema=DECODED_STREAMS.schema,
    )


@dataclass
class DecodedDrive:
    report: DriveDecodeReport
    profiles: tuple[list[StreamProfile], list[SignalProfile]]


def registered_sha256(lake: Lake, market: str, drive_id: str, files: list[FileStat]) -> dict[str, str]:
    """The sha256 raw_drive computed for each file, once it is sure that no file changed since: same names,
    sizes and mtimes as registered. Else a Failure naming the files."""
    record = lake.read_json(registry_path(market, drive_id))
    if record is None:
        raise Failure(description=f"drive {market}/{drive_id} is not registered: materialize its raw_drive first")
    registered = record["files"]
    changed = [f"{printable(name)} (removed)" for name in sorted(set(registered) - {f.name for f in files})]
    for f in files:
        was = registered.get(f.name)
        if was is None:
            changed.append(f"{printable(f.name)} (added)")
        elif (was["size"], was.get("mtime_ns", f.mtime_ns)) != (f.size, f.mtime_ns):
            changed.append(
                f"{printable(f.name)} ({was['size']} bytes, mtime {was['mtime_ns']} -> {f.size} bytes, "
                f"mtime {f.mtime_ns})"
            )
    if changed:
        raise Failure(
            description=f"drive {market}/{drive_id}: changed since raw_drive registered version {record['version']}: "
            f"{', '.join(changed)}. The landing sensor registers the new content as the next drive version; "
            "materialize raw_drive again first."
        )
    return {name: was["sha256"] for name, was in registered.items()}


def decode_one_drive(landing: LandingZone, lake: Lake, market: str, drive_id: str, log: Any) -> DecodedDrive:
    """Decode a registered drive into the lake atomically and profile it for the quality checks.

    The DBCs are the market's current ones. The drive's files are read once: their hashes come from raw_drive
    (reused, once the files are known unchanged), each MCAP chunk's CRC is verified as it is decompressed (raw_drive
    checked the record structure only; a damaged chunk fails the drive and quarantines its file, as raw_drive
    does with a bad file) and the quality profiles are gathered while the tables are written.
    """
    files = landing.drive_files(market, drive_id)
    kinds = {f.name: classify(Path(f.name)) for f in files}
    if not kinds:
        raise Failure(
            description=f"drive {market}/{drive_id}: its landing folder is gone ({landing.describe()}/{market}/"
            f"{drive_id} holds no files): it was deleted or moved after registration; re-land the drive"
        )
    if not any(kind in ("mdf4", "mcap") for kind in kinds.values()):
        names = ", ".join(printable(n) for n in sorted(kinds)[:10])
        raise Failure(description=f"drive {market}/{drive_id}: no MDF4 or MCAP file to decode (files: {names})")
    sha256 = registered_sha256(lake, market, drive_id, files)
    rates = nominal_rates(landing.read_manifest(market, drive_id))
    with contextlib.ExitStack() as stack:
        inputs = [
            stack.enter_context(landing.local_file(market, drive_id, name))
            for name, kind in kinds.items()
            if kind in ("mdf4", "mcap")
        ]
        # The market's DBCs, plus any a drive brings for its own buses.
        dbcs = [stack.enter_context(landing.local_dbc(market, f.name)) for f in landing.dbc_files(market)]
        dbcs += [stack.enter_context(landing.local_file(market, drive_id, n)) for n, k in kinds.items() if k == "dbc"]
        try:
            with lake.write_dir(decoded_path(market, drive_id)) as out_dir:
                report = decode_drive(inputs, out_dir, dbcs, log=log.info, sha256=sha256, fail_on_corrupt_chunk=True)
        except CorruptChunk as exc:
            name = Path(str(exc.file)).name
            where = landing.quarantine(market, drive_id, name, exc.reason)
            raise Failure(
                description=f"drive {market}/{drive_id}: file {printable(name)} {exc.reason}. "
                f"Quarantined to {printable(where)}.",
                metadata={"file": name, "reason": exc.reason, "quarantined_to": where},
            ) from exc
    profiles = drive_profiles((s.quality for s in report.streams if s.quality is not None), rates)
    lake.write_table(DECODED_STREAMS.path(market, drive_id), _streams_table(market, drive_id, report))
    return DecodedDrive(report, profiles)


def _report_metadata(report: DriveDecodeReport, lake: Lake, market: str, drive_id: str) -> dict[str, Any]:
    ok = [s for s in report.streams if s.status != "skipped"]
    rows = "\n".join(
        f"| {s.name} | {s.kind} | {s.rows} | {'' if s.rate_hz is None else f'{s.rate_hz:.1f}'} | "
        f"{'' if s.start_ns is None or s.end_ns is None else f'{(s.end_ns - s.start_ns) / 1e9:.1f}'} | "
        f"{s.status} | {s.error or ''} |"
        for s in report.streams
    )
    metadata: dict[str, Any] = {
        "dagster/row_count": sum(s.rows for s in ok),
        "streams": len(ok),
        "skipped_streams": len(report.streams) - len(ok),
        "path": MetadataValue.path(lake.uri(decoded_path(market, drive_id))),
        "decoder_version": DECODER_VERSION,
        "seconds": round(report.seconds, 2),
        "mb_per_s": round(report.bytes_in / 1e6 / report.seconds, 1) if report.seconds else None,
        "stream_summary": MetadataValue.md(
            "| stream | kind | rows | rate Hz | span s | status | error |\n|---|---|---|---|---|---|---|\n" + rows
        ),
    }
    problems = [f"- `{s.name}` **{s.status}**: {s.error or ''}" for s in report.streams if s.status != "ok"]
    problems += [f"- {e}" for e in report.errors]
    metadata["problems"] = len(problems)
    if problems:  # also the nothing_dropped warning and the catalog's decoded_streams rows
        metadata["decode_problems"] = MetadataValue.md("\n".join(problems))
    if ok:
        widest = max(ok, key=lambda s: len(s.columns))
        metadata["dagster/column_schema"] = TableSchema(
            columns=[TableColumn(name, description=unit or None) for name, unit in widest.columns.items()]
        )
        if widest.preview:
            header = list(widest.preview[0])
            lines = [" | ".join(header), " | ".join("---" for _ in header)]
            lines += [" | ".join(str(row.get(c, ""))[:24] for c in header) for row in widest.preview]
            metadata["preview"] = MetadataValue.md(f"`{widest.name}`\n\n" + "\n".join(f"| {line} |" for line in lines))
    return metadata


def _check_details(drives: dict[str, DecodedDrive]) -> dict[str, dict[str, Any]]:
    """Full texts for the warn checks (the failing-rows tables cut cells short)."""
    clocks = {d: {s.stream: s.clock_issue for s in x.profiles[0] if s.clock_issue} for d, x in drives.items()}
    dropped = {
        d: [f"{s.name} ({s.status}): {s.error}" for s in x.report.streams if s.status != "ok"] + x.report.errors
        for d, x in drives.items()
    }
    return {
        "clock_sanity": {"clock_issues": MetadataValue.json({d: c for d, c in clocks.items() if c})},
        "nothing_dropped": {"problems": MetadataValue.json({d: p for d, p in dropped.items() if p})},
    }


def definitions(market: str) -> Definitions:
    key = DECODED_SIGNALS.key(market)

    @asset(
        **stage_asset_args(DECODED_SIGNALS, market),
        check_specs=check_specs(key, DECODED_RULES),
        code_version=DECODER_VERSION,
        kinds={"parquet"},
        description=f"A {market.upper()} drive's vehicle signals (MDF4 channel groups, CAN frames decoded with the "
        "market DBC) and sensor streams (camera, lidar, IMU, GNSS from MCAP) as zstd Parquet, one table per stream, "
        "timestamps in int64 UTC ns (docs/data-contracts.md). Streamed with bounded memory; written atomically.",
    )
    def decoded_signals(
        context: AssetExecutionContext, landing: LandingZone, lake: Lake, great_expectations: GreatExpectationsResource
    ) -> MaterializeResult:
        drives = {d: decode_one_drive(landing, lake, market, d, context.log) for d in context.partition_keys}
        tables = {d: profile_tables(*x.profiles, x.report) for d, x in drives.items()}
        checks = evaluate_rules(key, DECODED_RULES, tables, great_expectations, _check_details(drives))
        record_drive_checks(context, lake, market, DECODED_SIGNALS.name, drives, checks)
        if len(drives) == 1:
            ((drive_id, decoded),) = drives.items()
            metadata = _report_metadata(decoded.report, lake, market, drive_id)
        else:
            metadata = {
                "drives": len(drives),
                "dagster/row_count": sum(s.rows for x in drives.values() for s in x.report.streams),
            }
        return MaterializeResult(metadata=metadata, check_results=checks)

    return Definitions(assets=[decoded_signals])
