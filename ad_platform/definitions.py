"""The one Definitions object of the platform: every stage's assets, the jobs, sensors and resources.

Each stage module in ``ad_assets`` exposes ``definitions(market)``; the jobs and the alert sensor's monitored
keys are derived from the stage table (``ad_common/stages.py``). Environment differences (local folders vs
S3, SQLite vs Postgres) live in the resources chosen here and in the instance's dagster.yaml — never in
asset bodies.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta

from dagster import (
    AssetSelection,
    BetaWarning,
    Definitions,
    EnvVar,
    ScheduleDefinition,
    define_asset_job,
    multiprocess_executor,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from ad_assets import curated, decoded, drift, engines, metadata_catalog, models, raw, recording, review, shards, synced
from ad_common import settings
from ad_common.markets import MARKETS
from ad_common.stages import (
    JOBS,
    LATENESS_SLO,
    METADATA_CATALOG_JOB,
    JobSpec,
    alerted_asset_keys,
    job_asset_keys,
    stage_run_tags,
)
from ad_platform.json_logging import platform_loggers
from ad_resources.alerts import AlertWebhook
from ad_resources.label_studio import LabelStudioResource
from ad_resources.quality import GreatExpectationsResource
from ad_resources.s3 import resources_from_env
from ad_resources.tracking import tracking_from_env
from ad_resources.training import training_from_env
from ad_sensors.alerts import build_alert_sensor
from ad_sensors.landing import build_landing_sensor
from ad_sensors.review import build_review_sensor

# BackfillPolicy is beta in Dagster 1.13 but exactly what per-drive batching needs; say so once, in docs.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=BetaWarning)
warnings.filterwarnings("ignore", message="Function `observable_source_asset`", category=BetaWarning)


def _jobs(spec: JobSpec) -> list[UnresolvedAssetJobDefinition]:
    markets = [(m,) for m in MARKETS] if spec.per_market else [MARKETS]
    return [
        define_asset_job(
            name=spec.job_name(group[0] if spec.per_market else None),
            selection=AssetSelection.assets(*job_asset_keys(spec, group)),
            # The run's longest stage sets its queue limit and timeout.
            tags=stage_run_tags(spec.run_stage),
            description=spec.description.format(market=group[0].upper()),
        )
        for group in markets
    ]


def label_studio_from_env() -> LabelStudioResource:
    if not os.environ.get("AD_LABEL_STUDIO_URL"):
        return LabelStudioResource()
    return LabelStudioResource(url=EnvVar("AD_LABEL_STUDIO_URL"), token=EnvVar("AD_LABEL_STUDIO_TOKEN"))


def build_definitions(lateness_slo: timedelta = LATENESS_SLO) -> Definitions:
    """``lateness_slo`` (landing -> synced frames) is given to both the synced_frames check and the alert sensor."""
    stages = [
        stage_defs
        for market in MARKETS
        for stage_defs in (
            raw.definitions(market),
            decoded.definitions(market),
            synced.definitions(market, lateness_slo=lateness_slo),
            drift.definitions(market),
            recording.definitions(market),
            curated.definitions(market),
            review.definitions(market),
            shards.definitions(market),
            models.definitions(market),
            engines.definitions(market),
        )
    ]
    jobs = {spec.name: _jobs(spec) for spec in JOBS}
    catalog_job = define_asset_job(
        name=METADATA_CATALOG_JOB.name,
        selection=AssetSelection.groups(metadata_catalog.CATALOG_GROUP),
        tags=stage_run_tags(METADATA_CATALOG_JOB.run_stage),
        description=METADATA_CATALOG_JOB.description,
    )
    jobs[METADATA_CATALOG_JOB.name] = [catalog_job]
    webhook_url = os.environ.get("AD_ALERT_WEBHOOK_URL")
    platform = Definitions(
        jobs=[job for group in jobs.values() for job in group],
        sensors=[
            build_landing_sensor(jobs["ingest"]),
            build_alert_sensor(MARKETS, alerted_asset_keys(MARKETS), lateness_slo=lateness_slo),
            build_review_sensor(MARKETS),
        ],
        schedules=[
            ScheduleDefinition(job=job, cron_schedule=spec.cron)
            for spec in (*JOBS, METADATA_CATALOG_JOB)
            if spec.cron
            for job in jobs[spec.name]
        ],
        loggers=platform_loggers(),  # console + structured JSON lines (docs/observability.md)
        # Launched runs (UI, sensors, backfills) run each step in its own process. The default start method,
        # spawn, imports the whole graph (torch, MLflow, dbt) again in every step; a forkserver that has
        # imported it once, and then prepared itself (ad_platform/step_process.py: Great Expectations, the
        # collector), forks ready step processes.
        executor=multiprocess_executor.configured(
            {"start_method": {"forkserver": {"preload_modules": [__name__, "ad_platform.step_process"]}}},
            name="multiprocess_forkserver",
        ),
        # Local folders by default; S3 when AD_LANDING_URL / AD_LAKE_URL are s3:// URLs (docs/architecture-s3.md).
        resources={
            **resources_from_env(),
            "great_expectations": GreatExpectationsResource(),
            # dbt_metadata/ (manifest prepared at build time); where it reads and writes: "metadata_catalog".
            "dbt": metadata_catalog.dbt_cli_resource(),
            # SQLite + artifact folder under $AD_STATE_DIR/mlflow; PostgreSQL + S3 via AD_MLFLOW_* (docs/models.md).
            "mlflow_tracking": tracking_from_env(settings.state_dir(), in_definitions=True),
            # Training ranks: in-process / local torchrun, or pods on the GPU pool (docs/training-at-scale.md).
            "training": training_from_env(),
            # EnvVar keeps the (often secret) URL out of the UI; unset: alerts are only logged.
            "alert_webhook": AlertWebhook(url=EnvVar("AD_ALERT_WEBHOOK_URL") if webhook_url else None),
            # Review projects (docs/review.md): the local Label Studio under .state/ unless AD_LABEL_STUDIO_URL
            # (and the token, a secret: EnvVar keeps it out of the UI) name a team's server.
            "label_studio": label_studio_from_env(),
        },
    )
    return Definitions.merge(*stages, metadata_catalog.definitions(), platform)


defs = build_definitions()
