"""The landing-zone sensor: registers each new drive exactly once and requests its ingest run.

Identity is content: a drive whose files were re-uploaded unchanged (same sha256) registers nothing; a
changed file makes a new drive version (recorded by ``raw_drive``), never a silent overwrite. New drives
need no hashing here (they are new whatever their content), so a tick stays cheap; only known drives
whose files were touched with equal sizes are hashed to tell a re-upload from a change. Work per tick is
bounded by a drive count and a time budget; the cursor carries the rest to the next tick.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetKey,
    AssetObservation,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from ad_assets.synced import sensor_profiles_version
from ad_common.formats import printable
from ad_common.hashing import sha256_file
from ad_common.lake_layout import registry_path
from ad_common.markets import MARKETS
from ad_common.partitions import drive_partitions
from ad_common.stages import INGEST_JOB, LANDED_AT_TAG, SENSOR_PROFILES, VEHICLE_DBC
from ad_resources.lake import Lake
from ad_resources.landing import DRIVE_KEY_PATTERN, DriveListing, LandingZone, suggest_drive_key
from ad_sensors.recovery import REGISTRATION_TAG, plan_recovery

DRIVE_VERSION_REASON_TAG = REGISTRATION_TAG
# Dagster reads an observation's data version from this tag (dagster._core.definitions.data_version).
DATA_VERSION_TAG = "dagster/data_version"


@dataclass
class LandingCursor:
    """Drives up to ``mtime_ns`` are processed; ``keys`` are the ones processed exactly at ``mtime_ns``
    (many files can share one timestamp, and a chunked tick can stop in the middle of them)."""

    mtime_ns: int = 0
    keys: list[str] = field(default_factory=list)
    dbc_versions: dict[str, str] = field(default_factory=dict)
    given_up: list[str] = field(default_factory=list)  # interrupted drives already reported as given up
    profile_versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> LandingCursor:
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(
            {
                "mtime_ns": self.mtime_ns,
                "keys": sorted(self.keys),
                "dbc_versions": self.dbc_versions,
                "given_up": sorted(self.given_up),
                "profile_versions": self.profile_versions,
            }
        )

    def is_new(self, listing: DriveListing) -> bool:
        mtime = listing.mtime_ns
        return mtime > self.mtime_ns or (mtime == self.mtime_ns and _key(listing) not in self.keys)


@dataclass
class Registration:
    listing: DriveListing
    reason: str  # new | changed | retry

    @property
    def run_key(self) -> str:
        return f"{_key(self.listing)}@{stat_fingerprint(self.listing)}"


@dataclass(frozen=True)
class Notice:
    """A landed folder that is not ingested (yet), and why: what run-once reports beside its runs."""

    market: str
    drive_id: str  # printable (escaped) form of the folder name
    status: str  # invalid_name | skipped | settling | given_up
    message: str


@dataclass
class TickPlan:
    registrations: list[Registration] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    remaining: int = 0
    cursor: LandingCursor = field(default_factory=LandingCursor)

    def messages(self, status: str) -> list[str]:
        return [n.message for n in self.notices if n.status == status]

    @property
    def invalid_names(self) -> list[str]:
        return self.messages("invalid_name")

    @property
    def settling(self) -> list[str]:
        return self.messages("settling")


def _key(listing: DriveListing) -> str:
    return f"{listing.market}/{listing.drive_id}"


def stat_fingerprint(listing: DriveListing) -> str:
    """Cheap identity of what landed (names, sizes, mtimes): the run key, so a retried tick launches nothing twice."""
    text = "\n".join(f"{f.name}\0{f.size}\0{f.mtime_ns}" for f in listing.files)
    text += "".join(f"\n{r.name}\0refused\0{r.mtime_ns}" for r in listing.refused)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def classify_known_drive(
    listing: DriveListing, registered: Mapping[str, Any], content_sha256: Callable[[str], str]
) -> str:
    """'changed' or 'unchanged' for a drive the registry already holds; hashes only when sizes cannot tell.

    A refused entry (a link, a special file) is never hashed: the registry cannot hold one, so it is a change
    whose run fails naming it."""
    if listing.refused:
        return "changed"
    files = registered["files"]
    if {f.name for f in listing.files} != set(files):
        return "changed"
    for stat in listing.files:
        known = files[stat.name]
        if stat.size != known["size"]:
            return "changed"
        if stat.mtime_ns != known["mtime_ns"] and content_sha256(stat.name) != known["sha256"]:
            return "changed"
    return "unchanged"


def is_settled(listing: DriveListing, settled_before_ns: int) -> bool:
    """A drive is complete once nothing in its folder changed for the settle window: no file written (file
    mtimes) and no file created, renamed or removed (the folder's mtime, which also covers the gap between
    two files of a copy that preserves mtimes)."""
    return max(listing.mtime_ns, listing.folder_mtime_ns) <= settled_before_ns


def plan_tick(
    listings: Iterable[DriveListing],
    cursor: LandingCursor,
    known_partitions: Mapping[str, set[str]],
    read_registry: Callable[[str, str], Mapping[str, Any] | None],
    content_sha256: Callable[[DriveListing, str], str],
    *,
    max_drives: int,
    time_budget_s: float,
    settle_s: float,
    now_ns: int,
) -> TickPlan:
    """Decide what one tick registers. Pure apart from the callables, so it is tested without Dagster."""
    started = time.monotonic()
    candidates = sorted((d for d in listings if cursor.is_new(d)), key=lambda d: (d.mtime_ns, _key(d)))
    plan = TickPlan(
        cursor=LandingCursor(
            cursor.mtime_ns,
            list(cursor.keys),
            dict(cursor.dbc_versions),
            list(cursor.given_up),
            dict(cursor.profile_versions),
        )
    )
    settled_before = now_ns - int(settle_s * 1e9)
    processed = 0
    for index, listing in enumerate(candidates):
        if not is_settled(listing, settled_before):
            # Still being uploaded. The cursor cannot pass it, so every later drive waits too (seconds).
            plan.remaining = len(candidates) - index
            plan.notices += [
                Notice(
                    d.market,
                    printable(d.drive_id),
                    "settling",
                    f"{printable(_key(d))}: still being written (changed less than {settle_s:g} s ago); "
                    "left for the next run",
                )
                for d in candidates[index:]
                if not is_settled(d, settled_before)
            ]
            break
        if processed >= max_drives or time.monotonic() - started > time_budget_s:
            plan.remaining = len(candidates) - index
            break
        processed += 1
        if listing.mtime_ns != plan.cursor.mtime_ns:
            plan.cursor.mtime_ns, plan.cursor.keys = listing.mtime_ns, []
        plan.cursor.keys.append(_key(listing))

        if listing.drive_id.startswith("."):
            plan.notices.append(
                Notice(
                    listing.market,
                    printable(listing.drive_id),
                    "skipped",
                    f"{printable(_key(listing))}: hidden folder (name starts with '.'), not a drive; "
                    f"rename it to '{suggest_drive_key(listing.drive_id)}' if it is one",
                )
            )
            continue
        if not DRIVE_KEY_PATTERN.match(listing.drive_id):
            plan.notices.append(
                Notice(
                    listing.market,
                    printable(listing.drive_id),
                    "invalid_name",
                    f"{printable(_key(listing))}: not a valid drive id (lowercase letters, digits, '-', '_', '.'); "
                    f"rename the folder to '{suggest_drive_key(listing.drive_id)}'",
                )
            )
            continue
        if listing.drive_id not in known_partitions.get(listing.market, set()):
            plan.registrations.append(Registration(listing, "new"))
            continue
        registered = read_registry(listing.market, listing.drive_id)
        if registered is None:  # registered but its run has not recorded it yet (pending or failed)
            plan.registrations.append(Registration(listing, "retry"))
            continue
        state = classify_known_drive(listing, registered, lambda name, d=listing: content_sha256(d, name))
        if state == "changed":
            plan.registrations.append(Registration(listing, "changed"))
        else:
            plan.unchanged.append(_key(listing))
    return plan


class LandingSensorSettings:
    """Defaults sized to stay far below Dagster's 60 s sensor timeout."""

    max_drives_per_tick = 2_000
    time_budget_s = 20.0
    settle_s = 5.0
    # interrupted drives (ad_sensors/recovery.py): re-requested this often, 5 then 10 min apart, then given up
    recovery_max_attempts = 3
    recovery_backoff_s = 300.0


def evaluate_landing(
    context: SensorEvaluationContext,
    landing: LandingZone,
    lake: Lake,
    *,
    markets: tuple[str, ...] = MARKETS,
    settings: type[LandingSensorSettings] = LandingSensorSettings,
) -> SensorResult | SkipReason:
    return landing_tick(context, landing, lake, markets=markets, settings=settings)[0]


def landing_tick(
    context: SensorEvaluationContext,
    landing: LandingZone,
    lake: Lake,
    *,
    markets: tuple[str, ...] = MARKETS,
    settings: type[LandingSensorSettings] = LandingSensorSettings,
) -> tuple[SensorResult | SkipReason, TickPlan]:
    """One tick: what the sensor returns, and the plan behind it (run-once reports its notices)."""
    cursor = LandingCursor.parse(context.cursor)
    known = {m: set(context.instance.get_dynamic_partitions(drive_partitions(m).name)) for m in markets}

    def content_sha256(listing: DriveListing, name: str) -> str:
        with landing.local_file(listing.market, listing.drive_id, name) as path:
            return sha256_file(path)

    def read_registry(market: str, drive_id: str) -> Mapping[str, Any] | None:
        return lake.read_json(registry_path(market, drive_id))

    plan = plan_tick(
        landing.list_drives(markets),
        cursor,
        known,
        read_registry,
        content_sha256,
        max_drives=settings.max_drives_per_tick,
        time_budget_s=settings.time_budget_s,
        settle_s=settings.settle_s,
        now_ns=time.time_ns(),
    )

    recovery = plan_recovery(
        context.instance,
        markets,
        read_registry,
        skip={_key(r.listing) for r in plan.registrations},
        max_attempts=settings.recovery_max_attempts,
        backoff_s=settings.recovery_backoff_s,
    )
    given_up = {f"{market}/{drive}": message for market, drive, message in recovery.given_up}
    for key in sorted(set(given_up) - set(plan.cursor.given_up)):  # reported once, as invalid names are
        market, drive = key.split("/", 1)
        plan.notices.append(Notice(market, drive, "given_up", given_up[key]))
    plan.cursor.given_up = sorted(given_up)

    # A changed DBC is a new data version of the market's vehicle_dbc asset: decoded drives turn stale; a
    # changed sensor profile one of its sensor_profiles asset: synced drives turn stale.
    asset_events = []
    for market in markets:
        for name, version, seen in (
            (VEHICLE_DBC, landing.dbc_version(market), plan.cursor.dbc_versions),
            (SENSOR_PROFILES, sensor_profiles_version(landing, market), plan.cursor.profile_versions),
        ):
            if version and seen.get(market) != version:
                asset_events.append(
                    AssetObservation(
                        AssetKey([market, name]), tags={DATA_VERSION_TAG: version}, metadata={"sha256": version}
                    )
                )
                seen[market] = version

    for notice in plan.notices:
        level = {"settling": context.log.info, "given_up": context.log.error}.get(notice.status, context.log.warning)
        level(notice.message)
    for market in markets:
        for entry in landing.refused_dbc(market):
            context.log.warning(f"{market}/_dbc/{printable(entry.name)} {entry.reason}; it is not used")
    new_by_market: dict[str, list[str]] = defaultdict(list)
    run_requests = []
    for registration in plan.registrations:
        listing = registration.listing
        if registration.reason == "new":
            new_by_market[listing.market].append(listing.drive_id)
        run_requests.append(
            RunRequest(
                run_key=registration.run_key,
                job_name=INGEST_JOB.job_name(listing.market),
                partition_key=listing.drive_id,
                tags={LANDED_AT_TAG: str(listing.mtime_ns), DRIVE_VERSION_REASON_TAG: registration.reason},
            )
        )
    for request in recovery.requests:
        context.log.warning(f"{request.tags[REGISTRATION_TAG]} of interrupted drive {request.run_key}")
    run_requests += recovery.requests
    summary = (
        f"{len(run_requests)} drive(s) requested ({sum(map(len, new_by_market.values()))} new, "
        f"{len(recovery.requests)} interrupted), {len(given_up)} given up, "
        f"{len(plan.unchanged)} re-uploaded unchanged, {len(plan.invalid_names)} invalid name(s), "
        f"{len(plan.messages('skipped'))} hidden folder(s) skipped, {len(plan.settling)} settling, "
        f"{plan.remaining} left for the next tick"
    )
    context.log.info(summary)
    if not run_requests and not asset_events and plan.cursor.dump() == cursor.dump():
        return SkipReason(f"no new drives in {landing.describe()} ({summary})"), plan
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[
            drive_partitions(market).build_add_request(keys) for market, keys in sorted(new_by_market.items())
        ],
        asset_events=asset_events,
        cursor=plan.cursor.dump(),
    ), plan


def build_landing_sensor(ingest_jobs: Sequence[UnresolvedAssetJobDefinition]) -> SensorDefinition:
    """The sensor targets every market's ingest job (a job cannot mix partitions definitions)."""

    @sensor(
        name="landing_zone_sensor",
        jobs=list(ingest_jobs),
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Registers each new drive in the landing zone (one dynamic partition per drive, per market) "
        "and requests its ingest run. Unchanged re-uploads register nothing; changed files become a new version.",
    )
    def landing_zone_sensor(
        context: SensorEvaluationContext, landing: LandingZone, lake: Lake
    ) -> SensorResult | SkipReason:
        return evaluate_landing(context, landing, lake)

    return landing_zone_sensor
