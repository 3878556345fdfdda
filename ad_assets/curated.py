"""Stage 4, curated splits: ODD tags per drive, leakage-free train/val/test per market, and their visual QA.

Thin assets over ``ad_core/curate``; every path comes from the lake layout, every rule from the core.
"""

import base64
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetRecordsFilter,
    Config,
    DagsterInstance,
    DataVersion,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from ad_assets.checks import FAILED_DRIVES, record_drive_checks
from ad_assets.stage_asset import stage_asset_args
from ad_common.hashing import sha256_file
from ad_common.lake_layout import (
    DRIVE_ODD_TAGS,
    FRAME_TAGS_SCHEMA,
    FRAMES_FILE,
    ODD_TAGS,
    ODD_UNKNOWN,
    REVIEW_VERDICTS,
    SPLIT_ASSIGNMENTS,
    SPLIT_MANIFEST_SCHEMA,
    SPLITS,
    decoded_path,
    odd_frames_path,
    registry_path,
    rejections_dir,
    split_manifest_path,
    split_review_dir,
    synced_path,
)
from ad_common.stages import CURATED_SPLITS, ODD_TAGS_STAGE, SPLIT_REVIEW, SYNCED_FRAMES
from ad_core.curate.manifest import (
    Verdict,
    build_manifest,
    frame_drive_splits,
    frames_per_split,
    manifest_bytes,
    parse_rejections,
    previous_splits,
    sha256_bytes,
    verdicts_from_records,
)
from ad_core.curate.odd import tag_synced_drive
from ad_core.curate.review import sample_frames, write_review
from ad_core.curate.splits import (
    DriveCandidate,
    SplitConfig,
    Violation,
    assign_splits,
    frame_splits_violations,
    leakage_violations,
    min_frames_violations,
    quota_report,
    quota_violations,
)
from ad_core.decode.parquet_out import read_frame
from ad_resources.lake import Lake

ODD_KNOWN_CHECK = "odd_tags_known"
LEAKAGE_CHECK = "no_drive_or_place_leakage"
QUOTA_CHECK = "odd_quotas"
MIN_FRAMES_CHECK = "min_frames_per_split"
SPLIT_CHECKS = {
    LEAKAGE_CHECK: "No drive, and no H3 geo cell any drive touches, belongs to more than one split.",
    QUOTA_CHECK: "Each split's share of every ODD value stays within the tolerance of the market's share "
    "(widened by the share one place group moves).",
    MIN_FRAMES_CHECK: "Every split holds at least the configured number of kept frames.",
}


class SplitSettings(Config):
    split_version: str = Field(
        default="v1",
        description="Drives keep their split within a version (new drives are added); a new version re-shuffles.",
    )
    quota_tolerance: float = Field(default=SplitConfig.quota_tolerance, description="Allowed ODD share deviation.")
    min_frames_per_split: int = Field(default=SplitConfig.min_frames_per_split)


def read_lake_parquet(lake: Lake, relpath: str, columns: list[str] | None = None) -> pa.Table | None:
    if not lake.exists(relpath):
        return None
    folder, name = relpath.rsplit("/", 1)
    with lake.local_dir(folder) as local:
        return pq.read_table(local / name, columns=columns)


def read_split_manifest(lake: Lake, market: str, split_version: str) -> pa.Table:
    """The market's manifest of ``split_version``; a missing one says which asset to materialize."""
    manifest_rel = split_manifest_path(market, split_version)
    manifest = read_lake_parquet(lake, manifest_rel)
    if manifest is None:
        raise FileNotFoundError(
            f"no split manifest {lake.uri(manifest_rel)}: materialize "
            f"{CURATED_SPLITS.key(market).to_user_string()} first"
        )
    return manifest.cast(SPLIT_MANIFEST_SCHEMA)


def read_lake_frame(lake: Lake, camera_rel: str, index: int) -> bytes:
    """The JPEG of frame ``index`` of a decoded camera table (lake-relative path)."""
    folder, name = camera_rel.rsplit("/", 1)
    with lake.local_dir(folder) as local:
        return read_frame(local / name, index)


def sync_reference(instance: DagsterInstance, market: str, drive_id: str) -> str | None:
    """The reference stream the drive's latest synced frames were built on (its synced_frames metadata)."""
    result = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=SYNCED_FRAMES.key(market), asset_partitions=[drive_id]), limit=1
    )
    materialization = result.records[0].asset_materialization if result.records else None
    stream = materialization.metadata.get("reference_stream") if materialization else None
    return str(stream.value) if stream is not None and stream.value else None


def _camera_path(lake: Lake, market: str, drive_id: str, reference: str | None) -> str | None:
    """The decoded reference table if it holds images (frame_index is its row), else None (lidar, grid)."""
    path = f"{decoded_path(market, drive_id)}/{reference}.parquet"
    if not reference or not lake.exists(path):
        return None
    with lake.local_dir(decoded_path(market, drive_id)) as local:
        kv = pq.read_metadata(local / f"{reference}.parquet").metadata or {}
    return path if kv.get(b"kind") == b"image" else None


def _tag_one_drive(lake: Lake, market: str, drive_id: str, reference: str | None) -> dict[str, Any]:
    with lake.local_dir(synced_path(market, drive_id)) as synced_dir:
        frames = synced_dir / FRAMES_FILE
        table, result = tag_synced_drive(str(frames), market)
        synced_sha = sha256_file(frames)
    lake.write_table(odd_frames_path(market, drive_id), table)
    registered = lake.read_json(registry_path(market, drive_id)) or {}
    cells = sorted({c for c in table.column("geo_cell").to_pylist() if c})
    record = {
        "market": market,
        "drive_id": drive_id,
        "frames": table.num_rows,
        **result.drive_tags,
        **{f"{t}_reason": result.reasons[t] for t in ODD_TAGS},
        **{f"{t}_shares": json.dumps(result.shares[t], sort_keys=True) for t in ODD_TAGS},
        "geo_cells": cells,
        "drive_version": registered.get("version"),
        "synced_sha256": synced_sha,
        "reference_stream": reference,
    }
    lake.write_table(DRIVE_ODD_TAGS.path(market, drive_id), pa.Table.from_pylist([record], DRIVE_ODD_TAGS.schema))
    return {**record, "signals_used": result.signals_used}


def _violations_check(name: str, violations: list[Violation], checked: str, extra: dict[str, Any]) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=name,
        passed=not violations,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(v.detail for v in violations[:20]) if violations else f"ok: {checked}",
        metadata={
            "violations": len(violations),
            "details": MetadataValue.json([v.detail for v in violations]),
            **extra,
        },
    )


def _no_data_checks(market: str, why: str) -> list[AssetCheckResult]:
    return [
        AssetCheckResult(
            check_name=name,
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            description=f"No data: {why}",
            metadata={"status": "no data"},
        )
        for name in SPLIT_CHECKS
    ]


def _candidates(
    lake: Lake, market: str
) -> tuple[dict[str, DriveCandidate], dict[str, str], dict[str, str], dict[str, str | None]]:
    """Drives with current ODD tags; stale ones (re-landed since, not re-tagged) are left out with the reason."""
    folder = DRIVE_ODD_TAGS.market_folder(market)
    candidates: dict[str, DriveCandidate] = {}
    left_out: dict[str, str] = {}
    synced_sha: dict[str, str] = {}
    references: dict[str, str | None] = {}
    paths = lake.list_files(folder, ".parquet")
    if not paths:
        return candidates, left_out, synced_sha, references
    with lake.local_dir(folder) as local:
        records = pa.concat_tables(
            [pq.read_table(local / p[len(folder) + 1 :], schema=DRIVE_ODD_TAGS.schema) for p in paths]
        ).to_pylist()
    for r in records:
        registered = (lake.read_json(registry_path(market, r["drive_id"])) or {}).get("version")
        if registered != r["drive_version"]:
            left_out[r["drive_id"]] = (
                f"its ODD tags are of drive version {r['drive_version']} but version {registered} is registered: "
                "the new version has not passed decode and sync (a blocking check failed or it is still running)"
            )
            continue
        if not r["frames"]:
            left_out[r["drive_id"]] = "it has no synced frames: nothing to train or test on"
            continue
        tag_frames = {t: {v: round(s * r["frames"]) for v, s in json.loads(r[f"{t}_shares"]).items()} for t in ODD_TAGS}
        candidates[r["drive_id"]] = DriveCandidate(r["drive_id"], r["frames"], frozenset(r["geo_cells"]), tag_frames)
        synced_sha[r["drive_id"]] = r["synced_sha256"]
        references[r["drive_id"]] = r["reference_stream"]
    return candidates, left_out, synced_sha, references


def _verdicts(lake: Lake, market: str) -> list[Verdict]:
    """Every verdict on the market's frames: reviewers' CSV files and the Label Studio review_verdicts records."""
    out: list[Verdict] = []
    folder = rejections_dir(market)
    if paths := lake.list_files(folder, ".csv"):
        with lake.local_dir(folder) as local:
            out += [r for p in paths for r in parse_rejections(p, (local / p[len(folder) + 1 :]).read_text())]
    for path in lake.list_files(REVIEW_VERDICTS.market_folder(market), ".parquet"):
        out += verdicts_from_records(read_lake_parquet(lake, path) or REVIEW_VERDICTS.schema.empty_table())
    return out


def _applied(manifest: pa.Table) -> dict[str, int]:
    """Excluded frames per kind of verdict source (csv file / label-studio)."""
    sources = manifest.filter(manifest.column("excluded")).column("exclusion_source").to_pylist()
    kinds = ["label-studio" if s.startswith("label-studio ") else "csv" for s in sources]
    return {k: kinds.count(k) for k in sorted(set(kinds))}


def _split_summary(manifest: pa.Table) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        rows = manifest.filter(pc.equal(manifest.column("split"), split))
        excluded = rows.filter(rows.column("excluded"))
        out[split] = {
            "drives": len(set(rows.column("drive_id").to_pylist())),
            "frames": rows.num_rows - excluded.num_rows,
            "excluded_frames": excluded.num_rows,
        }
    return out


def _summary_md(summary: dict[str, dict[str, int]]) -> str:
    lines = ["| split | drives | frames | excluded frames |", "|---|---|---|---|"]
    lines += [f"| {s} | {v['drives']} | {v['frames']} | {v['excluded_frames']} |" for s, v in summary.items()]
    return "\n".join(lines)


def definitions(market: str) -> Definitions:
    odd_key, splits_key = ODD_TAGS_STAGE.key(market), CURATED_SPLITS.key(market)

    @asset(
        **stage_asset_args(ODD_TAGS_STAGE, market),
        check_specs=[
            AssetCheckSpec(
                ODD_KNOWN_CHECK,
                asset=odd_key,
                blocking=False,
                description="Every ODD tag could be derived from the drive's signals (warn: an unknown tag is "
                "kept as 'unknown' with its reason, never guessed).",
            )
        ],
        kinds={"parquet"},
        description=f"ODD tags of a {market.upper()} drive derived from its synced signals: time of day (sun "
        "elevation at the GNSS position), weather (fog lamp, wipers, rain sensor, temperature) and road type "
        "(speed profile, stops, curvature), per frame window and per drive, with each frame's H3 geo cell.",
    )
    def odd_tags(context: AssetExecutionContext, lake: Lake) -> MaterializeResult:
        records = {
            d: _tag_one_drive(lake, market, d, sync_reference(context.instance, market, d))
            for d in context.partition_keys
        }
        unknown = {d: {t: r[f"{t}_reason"] for t in ODD_TAGS if r[t] == ODD_UNKNOWN} for d, r in records.items()}
        unknown = {d: u for d, u in unknown.items() if u}
        check = AssetCheckResult(
            check_name=ODD_KNOWN_CHECK,
            passed=not unknown,
            severity=AssetCheckSeverity.WARN,
            metadata={"unknown": MetadataValue.json(unknown), FAILED_DRIVES: MetadataValue.json(sorted(unknown))},
            description="; ".join(f"{d}: {t} unknown ({why})" for d, u in unknown.items() for t, why in u.items())
            or None,
        )
        record_drive_checks(context, lake, market, ODD_TAGS_STAGE.name, records, [check])
        first = next(iter(records.values()))
        metadata: dict[str, Any] = {
            "drives": len(records),
            "dagster/row_count": sum(r["frames"] for r in records.values()),
        }
        if len(records) == 1:
            metadata.update(
                {
                    **{t: first[t] for t in ODD_TAGS},
                    "shares": MetadataValue.json({t: json.loads(first[f"{t}_shares"]) for t in ODD_TAGS}),
                    "geo_cells": len(first["geo_cells"]),
                    "signals_used": MetadataValue.json(first["signals_used"]),
                    "path": MetadataValue.path(lake.uri(odd_frames_path(market, first["drive_id"]))),
                }
            )
        return MaterializeResult(metadata=metadata, check_results=[check])

    @asset(
        **stage_asset_args(CURATED_SPLITS, market),
        check_specs=[
            AssetCheckSpec(name, asset=splits_key, blocking=True, description=d) for name, d in SPLIT_CHECKS.items()
        ],
        kinds={"parquet"},
        description=f"Train / val / test of the {market.upper()} market: leakage-free by drive and by place (H3 "
        "cells), ODD-stratified, stable within a split version (docs/curation.md). The frame-level manifest's "
        "sha256 is the data version; reviewers' rejections (CSV files and the Label Studio review_verdicts) are "
        "listed in it as excluded frames, with the verdict each exclusion came from.",
    )
    def curated_splits(context: AssetExecutionContext, config: SplitSettings, lake: Lake) -> MaterializeResult:
        split_config = SplitConfig(
            version=config.split_version,
            quota_tolerance=config.quota_tolerance,
            min_frames_per_split=config.min_frames_per_split,
        )
        manifest_rel = split_manifest_path(market, config.split_version)
        candidates, left_out, synced_sha, references = _candidates(lake, market)
        previous = previous_splits(read_lake_parquet(lake, manifest_rel))
        assignment = assign_splits(candidates.values(), previous, split_config)
        left_out.update(assignment.held_out)
        frame_tags = {
            d: read_lake_parquet(lake, odd_frames_path(market, d)) or FRAME_TAGS_SCHEMA.empty_table()
            for d in assignment.splits
        }
        synced = {d: (f"{synced_path(market, d)}/{FRAMES_FILE}", synced_sha[d]) for d in assignment.splits}
        cameras = {d: _camera_path(lake, market, d, references[d]) for d in assignment.splits}
        verdicts = _verdicts(lake, market)
        manifest = build_manifest(market, assignment.splits, frame_tags, synced, cameras, verdicts)
        data = manifest_bytes(manifest)
        sha = sha256_bytes(data)
        with lake.write_dir(manifest_rel.rsplit("/", 1)[0]) as out:
            (out / manifest_rel.rsplit("/", 1)[1]).write_bytes(data)
        summary = _split_summary(manifest)
        excluded = {d: int(n) for d, n in _excluded_per_drive(manifest).items()}
        lake.write_table(
            SPLIT_ASSIGNMENTS.path(market, config.split_version),
            pa.Table.from_pylist(
                [
                    {
                        "market": market,
                        "split_version": config.split_version,
                        "drive_id": d,
                        "split": s,
                        "frames": candidates[d].frames - excluded.get(d, 0),
                        "excluded_frames": excluded.get(d, 0),
                        "geo_cells": sorted(candidates[d].cells),
                        **{t: max(candidates[d].tag_frames[t].items(), key=lambda kv: kv[1])[0] for t in ODD_TAGS},
                        "manifest_sha256": sha,
                    }
                    for d, s in sorted(assignment.splits.items())
                ],
                SPLIT_ASSIGNMENTS.schema,
            ),
        )
        if not assignment.splits:
            checks = _no_data_checks(market, f"no {market.upper()} drive with current ODD tags to split")
        else:
            cells = {d: candidates[d].cells for d in assignment.splits}
            quota_rows = quota_report(assignment.splits, candidates, split_config)
            worst = sorted(quota_rows, key=lambda r: r.deviation - r.allowed, reverse=True)[:10]
            checks = [
                _violations_check(
                    LEAKAGE_CHECK,
                    frame_splits_violations(frame_drive_splits(manifest))
                    + leakage_violations(assignment.splits, cells),
                    f"{len(cells)} drives, {len({c for v in cells.values() for c in v})} geo cells",
                    {},
                ),
                _violations_check(
                    QUOTA_CHECK,
                    quota_violations(quota_rows),
                    f"{len(quota_rows)} (split, tag, value) shares",
                    {
                        "closest_to_limit": MetadataValue.md(
                            "| split | tag | value | split % | market % | allowed ± |\n|---|---|---|---|---|---|\n"
                            + "\n".join(
                                f"| {r.split} | {r.tag} | {r.value} | {100 * r.split_share:.0f} | "
                                f"{100 * r.market_share:.0f} | {100 * r.allowed:.0f} |"
                                for r in worst
                            )
                        )
                    },
                ),
                _violations_check(
                    MIN_FRAMES_CHECK,
                    min_frames_violations(frames_per_split(manifest), split_config),
                    f"every split has >= {split_config.min_frames_per_split} frames",
                    {},
                ),
            ]
        if left_out:
            context.log.warning(
                f"{len(left_out)} {market.upper()} drive(s) not in split {config.split_version}: {left_out}"
            )
        return MaterializeResult(
            data_version=DataVersion(sha),
            metadata={
                "manifest_path": manifest_rel,
                "manifest_uri": MetadataValue.path(lake.uri(manifest_rel)),
                "manifest_sha256": sha,
                "split_version": config.split_version,
                "dagster/row_count": manifest.num_rows,
                "splits": MetadataValue.md(_summary_md(summary)),
                "split_counts": MetadataValue.json(summary),
                "drives_left_out": MetadataValue.json(left_out),
                "kept_from_previous": len(set(previous) & set(assignment.splits)),
                "verdicts_read": len(verdicts),
                "frames_excluded_by": MetadataValue.json(_applied(manifest)),
                "place_groups": len(set(assignment.groups.values())),
            },
            check_results=checks,
        )

    @asset(
        **stage_asset_args(SPLIT_REVIEW, market),
        kinds={"html"},
        description=f"Visual QA of the {market.upper()} split: a contact sheet of sampled frames per split and ODD "
        "value, a static review page (open index.html in a browser) and a FiftyOne image-classification export.",
    )
    def split_review(context: AssetExecutionContext, config: SplitSettings, lake: Lake) -> MaterializeResult:
        manifest = read_split_manifest(lake, market, config.split_version)
        sha = sha256_bytes(manifest_bytes(manifest))
        frames = sample_frames(manifest, config.split_version)

        review_rel = split_review_dir(market, config.split_version)
        with lake.write_dir(review_rel) as out:
            stats = write_review(
                out,
                market,
                config.split_version,
                sha,
                frames,
                lambda camera_rel, index: read_lake_frame(lake, camera_rel, index),
                _split_summary(manifest),
            )
            sheet = (out / "contact_sheet.jpg").read_bytes()
        context.log.info(f"review page: {lake.uri(review_rel)}/index.html ({stats['frames']} frames)")
        return MaterializeResult(
            metadata={
                "frames_sampled": stats["frames"],
                "review_page": MetadataValue.path(lake.uri(f"{review_rel}/index.html")),
                "fiftyone_export": MetadataValue.path(lake.uri(f"{review_rel}/fiftyone")),
                "contact_sheet": MetadataValue.md(
                    f"![contact sheet](data:image/jpeg;base64,{base64.b64encode(sheet).decode()})"
                    if sheet
                    else "no frames"
                ),
                "manifest_sha256": sha,
            }
        )

    return Definitions(assets=[odd_tags, curated_splits, split_review])


def _excluded_per_drive(manifest: pa.Table) -> dict[str, int]:
    excluded = manifest.filter(manifest.column("excluded"))
    counts = excluded.group_by("drive_id").aggregate([("frame_index", "count")])
    return dict(zip(counts.column("drive_id").to_pylist(), counts.column("frame_index_count").to_pylist(), strict=True))
