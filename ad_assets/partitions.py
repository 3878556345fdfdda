"""Drive partitions: one dynamic partitions definition per market.

A drive belongs to exactly one market, so a drive x market MultiPartitionsDefinition would create
phantom partitions (every drive in every market). See docs/architecture.md.
"""

from __future__ import annotations

from functools import cache

from dagster import BackfillPolicy, DynamicPartitionsDefinition

# A backfill launches one run per this many drives, amortising run start-up over many small drives.
DRIVES_PER_BACKFILL_RUN = 25


@cache
def drive_partitions(market: str) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=f"drives_{market}")


DRIVE_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=DRIVES_PER_BACKFILL_RUN)


def ingest_job_name(market: str) -> str:
    return f"ingest_{market}"
