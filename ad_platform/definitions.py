"""The one Definitions object of the platform: every asset, job, sensor and resource is assembled here.

Environment differences (local folders vs S3, SQLite vs Postgres) live in the resources chosen here and in
the instance's dagster.yaml — never in asset bodies.
"""

from __future__ import annotations

import os
import warnings

from dagster import AssetKey, AssetSelection, BetaWarning, Definitions, EnvVar, ScheduleDefinition, define_asset_job

from ad_assets.decoded import build_decoded_signals_asset
from ad_assets.drift import build_drift_asset
from ad_assets.markets import MARKETS
from ad_assets.partitions import MARKET_JOB, ingest_job_name
from ad_assets.raw import build_raw_drive_assets
from ad_assets.synced import build_synced_frames_asset
from ad_platform.json_logging import platform_loggers
from ad_platform.stages import stage_run_tags
from ad_resources.alerts import AlertWebhook
from ad_resources.quality import GreatExpectationsResource
from ad_resources.s3 import resources_from_env
from ad_sensors.alerts import build_alert_sensor
from ad_sensors.landing import build_landing_sensor

# BackfillPolicy is beta in Dagster 1.13 but exactly what per-drive batching needs; say so once, in docs.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=BetaWarning)
warnings.filterwarnings("ignore", message="Function `observable_source_asset`", category=BetaWarning)


def build_definitions() -> Definitions:
    assets, ingest_jobs = [], []
    for market in MARKETS:
        vehicle_dbc, raw_drive = build_raw_drive_assets(market)
        decoded_signals = build_decoded_signals_asset(market)
        synced_frames = build_synced_frames_asset(market)
        assets += [vehicle_dbc, raw_drive, decoded_signals, synced_frames, build_drift_asset(market)]
        ingest_jobs.append(
            define_asset_job(
                name=ingest_job_name(market),
                selection=AssetSelection.assets(raw_drive, decoded_signals, synced_frames),
                # The run's longest stage sets its queue limit and timeout.
                tags=stage_run_tags("decode"),
                description=f"Register, validate, decode and sync {market.upper()} drives (one run per drive from the "
                "landing sensor; backfills batch drives per run).",
            )
        )
    # Market-level assets are unpartitioned: one job for all markets, refreshed on a schedule.
    market_job = define_asset_job(
        name=MARKET_JOB,
        selection=AssetSelection.assets(*(AssetKey([m, "signal_drift"]) for m in MARKETS)),
        tags=stage_run_tags("curate"),
        description="Per-market assets over all synced drives: the signal drift check against each market's reference.",
    )
    alert_sensor = build_alert_sensor(
        MARKETS, [AssetKey([m, s]) for m in MARKETS for s in ("raw_drive", "decoded_signals", "synced_frames")]
    )
    webhook_url = os.environ.get("AD_ALERT_WEBHOOK_URL")
    return Definitions(
        assets=assets,
        jobs=[*ingest_jobs, market_job],
        sensors=[build_landing_sensor(ingest_jobs), alert_sensor],
        schedules=[ScheduleDefinition(job=market_job, cron_schedule="17 * * * *")],
        loggers=platform_loggers(),  # console + structured JSON lines (docs/observability.md)
        # Local folders by default; S3 when AD_LANDING_URL / AD_LAKE_URL are s3:// URLs (docs/architecture-s3.md).
        resources={
            **resources_from_env(),
            "great_expectations": GreatExpectationsResource(),
            # EnvVar keeps the (often secret) URL out of the UI; unset: alerts are only logged.
            "alert_webhook": AlertWebhook(url=EnvVar("AD_ALERT_WEBHOOK_URL") if webhook_url else None),
        },
    )


defs = build_definitions()
