"""Stage 3, synced frames: every decoded stream aligned to the drive's reference clock, one row per frame.

The drive's vehicle sensor profile (ad_core/sync/profiles.py, docs/sensor-profiles.md) names the roles and the
clock: the front camera for the demo fleet, a camera, lidar or 10 Hz grid for any other log.
"""

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    DataVersion,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
    observable_source_asset,
)
from pydantic import Field

from ad_assets.checks import FAILED_DRIVES, check_specs, evaluate_rules, record_drive_checks
from ad_assets.stage_asset import stage_asset_args
from ad_common.lake_layout import DRIVE_SIGNAL_SUMMARIES, FRAMES_FILE, decoded_path, registry_path, synced_path
from ad_common.stages import LATENESS_CHECK, LATENESS_SLO, SENSOR_PROFILES, SYNCED_FRAMES
from ad_core.quality.drift import summarize_drive
from ad_core.quality.sync_rules import REFERENCE_CHECK, SYNCED_RULES, sync_tables
from ad_core.sync import SyncReport, sync_drive
from ad_core.sync.plan import SyncPlan, build_sync_plan, mdf_clock_offset
from ad_core.sync.profiles import ProfileError, load_profiles, profiles_version, select_profile
from ad_core.sync.version import SYNC_VERSION
from ad_resources.lake import Lake
from ad_resources.landing import LandingZone
from ad_resources.quality import GreatExpectationsResource


class SyncSettings(Config):
    causal: bool = Field(
        default=False,
        description="Never use a sample from after the frame time (what the car could have known at that "
        "instant): linear interpolation becomes hold-last-value.",
    )
    drop_out_of_tolerance: bool = Field(
        default=False, description="Drop frames where any stream is out of tolerance instead of flagging them."
    )


def sensor_profiles_version(landing: LandingZone, market: str) -> str:
    """The data version of ``<market>/sensor_profiles``: the built-in profiles plus the market's own."""
    texts = {}
    for stat in landing.profile_files(market):
        with landing.local_profile(market, stat.name) as path:
            texts[stat.name] = path.read_bytes()
    return profiles_version(texts)


@dataclass
class SyncedDrive:
    plan: SyncPlan
    report: SyncReport | None  # None: the drive could not be synced (``plan.reason``)


def _plan(landing: LandingZone, market: str, manifest: dict[str, Any], decoded_dir: Any, **kwargs: Any) -> SyncPlan:
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(landing.local_profile(market, f.name)) for f in landing.profile_files(market)]
        profiles = load_profiles(files)
    streams = sorted(p.stem for p in decoded_dir.glob("*.parquet"))
    try:
        profile = select_profile(profiles, manifest, streams)
    except ProfileError as exc:  # a drive naming an unknown profile: the default cannot stand in for it
        default = select_profile(profiles, {}, [])
        return replace(build_sync_plan(decoded_dir, default, **kwargs), config=None, reason=str(exc))
    return build_sync_plan(decoded_dir, profile, **kwargs)


def sync_one_drive(
    landing: LandingZone, lake: Lake, market: str, drive_id: str, settings: SyncSettings, log: Any
) -> SyncedDrive:
    """Sync a decoded drive into the lake atomically; MDF/CAN clocks are corrected by the manifest's offset."""
    manifest = landing.read_manifest(market, drive_id) or {"drive_id": drive_id, "market": market}
    offset = mdf_clock_offset(manifest)
    with lake.local_dir(decoded_path(market, drive_id)) as decoded_dir:
        plan = _plan(landing, market, manifest, decoded_dir, mdf_clock_offset_ns=offset, causal=settings.causal)
        log.info(f"{market}/{drive_id}: sensor profile {plan.profile.label}, reference {plan.reference or '-'}")
        if plan.config is None:
            log.warning(f"{market}/{drive_id}: not synced: {plan.reason}")
            return SyncedDrive(plan, None)
        config = plan.config
        if settings.drop_out_of_tolerance:
            config = replace(config, drop_out_of_tolerance=True)
        with lake.write_dir(synced_path(market, drive_id)) as out_dir:
            report = sync_drive(config, out_dir / FRAMES_FILE, log=log)
        camera = plan.roles.get("front_camera")
        with lake.local_dir(synced_path(market, drive_id)) as synced_dir:
            # Small per-drive signal summary for the market's drift check (ad_assets/drift.py).
            camera_table = decoded_dir / f"{camera.stream if camera else ''}.parquet"
            summary = summarize_drive(synced_dir / FRAMES_FILE, camera_table, manifest)
        lake.write_table(DRIVE_SIGNAL_SUMMARIES.path(market, drive_id), summary)
    return SyncedDrive(plan, report)


def _roles_markdown(plan: SyncPlan) -> str:
    rows = "\n".join(
        f"| {role} | {'yes' if role in plan.profile.required else ''} | "
        f"{'' if m is None else m.stream} | {'' if m is None else m.signal} |"
        for role, m in plan.roles.items()
    )
    return f"| role | required | stream | signal |\n|---|---|---|---|\n{rows}"


def _metadata(synced: SyncedDrive, lake: Lake, market: str, drive_id: str) -> dict[str, Any]:
    plan, report = synced.plan, synced.report
    common: dict[str, Any] = {
        "sensor_profile": plan.profile.label,
        "reference": plan.reference or None,
        "reference_stream": plan.reference_stream or None,
        "roles": MetadataValue.md(_roles_markdown(plan)),
    }
    if report is None:
        return {**common, "dagster/row_count": 0, "not_synced_reason": plan.reason}
    rows = "\n".join(
        f"| {name} | {s.method}{' (causal)' if s.causal else ''} | {s.tolerance_ns / 1e6:.0f} | "
        f"{100 * s.within_tolerance_ratio:.2f} | {s.no_sample} | "
        f"{'' if s.max_abs_sync_error_ns is None else f'{s.max_abs_sync_error_ns / 1e6:.1f}'} |"
        for name, s in report.streams.items()
    )
    return {
        **common,
        "dagster/row_count": report.frames_written,
        "frames": report.frames,
        "dropped_frames": report.dropped,
        "frames_out_of_tolerance": max((s.out_of_tolerance for s in report.streams.values()), default=0),
        "seconds": round(report.seconds, 3),
        "path": MetadataValue.path(lake.uri(f"{synced_path(market, drive_id)}/{FRAMES_FILE}")),
        "sync_per_stream": MetadataValue.md(
            "| stream | method | tolerance ms | within % | no sample | max error ms |\n|---|---|---|---|---|---|\n"
            + rows
        ),
    }


def _lateness(
    key: AssetKey, lake: Lake, market: str, drive_ids: Iterable[str], lateness_slo: timedelta
) -> AssetCheckResult:
    """How long after landing these drives were synced (warn-level: late data is still good data)."""
    now = time.time_ns()
    hours = {
        d: round((now - record["landed_at_ns"]) / 3.6e12, 2)
        for d in drive_ids
        if (record := lake.read_json(registry_path(market, d)))
    }
    late = sorted(d for d, h in hours.items() if h > lateness_slo.total_seconds() / 3600)
    return AssetCheckResult(
        asset_key=key,
        check_name=LATENESS_CHECK,
        passed=not late,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "late_drives": MetadataValue.json(late),
            FAILED_DRIVES: MetadataValue.json(late),
            "hours_since_landing": MetadataValue.json(hours),
        },
    )


def definitions(market: str, lateness_slo: timedelta = LATENESS_SLO) -> Definitions:
    key = SYNCED_FRAMES.key(market)

    @observable_source_asset(
        key=AssetKey([market, SENSOR_PROFILES]),
        group_name=SYNCED_FRAMES.group,
        description=f"The vehicle sensor profiles {market.upper()} drives are synced with: the built-in ones "
        f"(ad_core/sync/profiles/) and the market's own (landing `{market}/_profiles/*.json`). Its data version is "
        "their sha256: the landing sensor observes it every tick, so a changed profile marks the market's synced "
        "drives stale (docs/sensor-profiles.md).",
    )
    def sensor_profiles(landing: LandingZone) -> DataVersion:
        return DataVersion(sensor_profiles_version(landing, market))

    @asset(
        **stage_asset_args(SYNCED_FRAMES, market),
        check_specs=[
            *check_specs(key, SYNCED_RULES),
            AssetCheckSpec(
                LATENESS_CHECK,
                asset=key,
                description=f"Synced within {lateness_slo} of landing; the alert sensor also reports "
                "drives that never sync.",
            ),
        ],
        code_version=SYNC_VERSION,
        kinds={"parquet"},
        description=f"A {market.upper()} drive as training frames: one row per reference frame (the front camera, "
        "or what the drive's sensor profile names: another camera, a lidar, a 10 Hz grid for signal-only drives) "
        "with the nearest lidar sweep (row index) and IMU, GNSS and vehicle signals interpolated at the frame time "
        "(linear for continuous signals, previous value for states), each with its sync error and in-tolerance "
        "flag (docs/sync.md). Vectorised, windowed, bounded memory; written atomically.",
    )
    def synced_frames(
        context: AssetExecutionContext,
        config: SyncSettings,
        landing: LandingZone,
        lake: Lake,
        great_expectations: GreatExpectationsResource,
    ) -> MaterializeResult:
        synced = {d: sync_one_drive(landing, lake, market, d, config, context.log) for d in context.partition_keys}
        tables = {d: sync_tables(x.report, x.plan) for d, x in synced.items()}
        reasons = {d: x.plan.reason for d, x in synced.items() if x.plan.reason}
        details = {REFERENCE_CHECK: {"reasons": MetadataValue.json(reasons)}} if reasons else None
        checks = [
            *evaluate_rules(key, SYNCED_RULES, tables, great_expectations, details),
            _lateness(key, lake, market, synced, lateness_slo),
        ]
        record_drive_checks(context, lake, market, SYNCED_FRAMES.name, synced, checks)
        if len(synced) == 1:
            ((drive_id, one),) = synced.items()
            metadata = _metadata(one, lake, market, drive_id)
        else:
            metadata = {
                "drives": len(synced),
                "dagster/row_count": sum(x.report.frames_written for x in synced.values() if x.report),
                "not_synced": MetadataValue.json(reasons),
            }
        return MaterializeResult(metadata=metadata, check_results=checks)

    return Definitions(assets=[sensor_profiles, synced_frames])
