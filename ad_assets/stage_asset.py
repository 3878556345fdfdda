"""The decorator arguments every stage asset shares, derived from its row of the stage table."""

from __future__ import annotations

from typing import Any

from ad_common.partitions import DRIVE_BACKFILL_POLICY, MARKET_FRESHNESS, drive_partitions
from ad_common.stages import AssetStage, k8s_op_tags


def stage_asset_args(stage: AssetStage, market: str) -> dict[str, Any]:
    """``@asset(**stage_asset_args(stage, market), description=..., kinds=...)``: key, group, deps, partitions,
    backfill and freshness policies, tags and the stage's Kubernetes pod (op tags)."""
    return {
        "key": stage.key(market),
        "group_name": stage.group,
        "deps": stage.deps(market) or None,
        "partitions_def": drive_partitions(market) if stage.per_drive else None,
        "backfill_policy": DRIVE_BACKFILL_POLICY if stage.per_drive else None,
        "freshness_policy": MARKET_FRESHNESS if stage.freshness else None,
        "tags": stage.tags(market),
        "op_tags": k8s_op_tags(stage.pod),
    }
