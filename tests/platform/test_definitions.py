"""The Definitions object: loadable, and its partition design has no phantom partitions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, Definitions, instance_for_test

from ad_common.markets import MARKETS
from ad_platform.definitions import defs
from tests.support import REPO_ROOT


def test_definitions_are_loadable_with_the_full_graph() -> None:
    Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for market in MARKETS:
        stages = ("vehicle_dbc", "raw_drive", "decoded_signals", "synced_frames", "signal_drift")
        assert {f"{market}/{stage}" for stage in stages} <= keys
    assert defs.resolve_sensor_def("landing_zone_sensor") is not None


def test_each_market_has_its_own_drive_partitions_and_no_phantoms() -> None:
    graph = defs.resolve_asset_graph()
    names = {graph.get(AssetKey([m, "raw_drive"])).partitions_def.name for m in MARKETS}  # type: ignore[union-attr]
    assert names == {f"drives_{m}" for m in MARKETS}
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("drives_de", ["de-a", "de-b"])
        instance.add_dynamic_partitions("drives_us", ["us-a"])
        de = graph.get(AssetKey(["de", "decoded_signals"])).partitions_def
        us = graph.get(AssetKey(["us", "raw_drive"])).partitions_def
        assert de.get_partition_keys(dynamic_partitions_store=instance) == ["de-a", "de-b"]  # type: ignore[union-attr]
        assert us.get_partition_keys(dynamic_partitions_store=instance) == ["us-a"]  # type: ignore[union-attr]
        assert not us.has_partition_key("de-a", dynamic_partitions_store=instance)  # type: ignore[union-attr]


def test_a_market_backfill_selects_only_that_markets_drives() -> None:
    job = defs.resolve_job_def("ingest_de")
    selected = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert selected == {"de/raw_drive", "de/decoded_signals", "de/synced_frames", "de/drive_recording", "de/odd_tags"}
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("drives_de", ["de-a", "de-b"])
        instance.add_dynamic_partitions("drives_jp", ["jp-a"])
        assert job.partitions_def.get_partition_keys(dynamic_partitions_store=instance) == ["de-a", "de-b"]  # type: ignore[union-attr]
    graph = defs.resolve_asset_graph()
    policy = graph.get(AssetKey(["de", "raw_drive"])).backfill_policy
    assert policy is not None and policy.max_partitions_per_run == 25


def test_dagster_cli_validates_the_workspace(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "AD_STATE_DIR": str(tmp_path)}
    result = subprocess.run(
        [Path(sys.executable).parent / "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout
