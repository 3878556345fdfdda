"""Drive partitions: one dynamic partitions definition per market.

A drive belongs to exactly one market, so a drive x market MultiPartitionsDefinition would create
phantom partitions (every drive in every market). See docs/architecture.md.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache

from dagster import BackfillPolicy, DynamicPartitionsDefinition, FreshnessPolicy

# A backfill launches one run per this many drives, amortising run start-up over many small drives.
DRIVES_PER_BACKFILL_RUN = 25


@cache
def drive_partitions(market: str) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=f"drives_{market}")


DRIVE_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=DRIVES_PER_BACKFILL_RUN)


# Asset-level freshness: Dagster judges a market by its newest materialization of any drive, so this says
# "the market stopped flowing". Per-drive lateness (landing -> synced frames SLO) is the alert sensor's job.
MARKET_FRESHNESS = FreshnessPolicy.time_window(fail_window=timedelta(hours=24), warn_window=timedelta(hours=12))
