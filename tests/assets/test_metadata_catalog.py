"""The dbt metadata catalog built through Dagster over a small generated fleet (3 DE drives x 0.5 min): real
ingest runs (run-once), the market assets (curated splits) and the ``metadata_catalog`` job's ``dbt build``.

One fleet, one sequence (dbt commands take seconds each): a build before any split exists (empty split source),
a build after the splits, a build with a planted invalid split value, and ``dbt docs generate``.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, Definitions, ExecuteInProcessResult, instance_for_test

from ad_common.lake_layout import SPLIT_ASSIGNMENTS
from ad_common.stages import METADATA_CATALOG_JOB
from ad_platform.definitions import build_definitions
from ad_platform.runner import refresh_market_assets, run_once
from fleetgen import generate_fleet

pytestmark = pytest.mark.slow

MARKET = "de"
DRIVES = 3
SPLIT_CHECK = "accepted_values_split_assignments_split__train__val__test"


@dataclass
class Fleet:
    state: Path
    defs: Definitions
    instance: DagsterInstance
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def lake(self) -> Path:
        return self.state / "lake"

    def build_catalog(self, label: str) -> ExecuteInProcessResult:
        start = time.perf_counter()
        result = self.defs.resolve_job_def(METADATA_CATALOG_JOB.name).execute_in_process(
            instance=self.instance, raise_on_error=False
        )
        self.seconds[label] = round(time.perf_counter() - start, 1)
        return result

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        return self.defs.resources["metadata_catalog"].query(sql)


def _checks(result: ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.path[-1], e.check_name): e.passed for e in result.get_asset_check_evaluations()}


def _materialized(result: ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.path[-1] for e in result.get_asset_materialization_events() if e.asset_key}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp, instance_for_test() as instance:
        state = Path(tmp) / ".state"
        for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH", "AD_METADATA_CATALOG_PATH", "DAGSTER_HOME"):
            mp.delenv(var, raising=False)
        mp.setenv("AD_STATE_DIR", str(state))
        generate_fleet(state / "landing", [MARKET], DRIVES, 0.5, seed=0)
        defs = build_definitions()
        outcomes = run_once(defs, instance, state_dir=state, log=lambda _: None, settle_s=0)
        assert {o.status for o in outcomes} == {"materialized"}, [(o.drive_id, o.error) for o in outcomes]
        yield Fleet(state, defs, instance)


def test_dbt_models_and_tests_through_dagster_before_and_after_the_splits(fleet: Fleet) -> None:
    # 1. No split yet: the split_assignments source is an empty typed view and every model still builds.
    assert not (fleet.lake / SPLIT_ASSIGNMENTS.folder).exists()
    first = fleet.build_catalog("build_without_splits")
    assert first.success
    models = {"drives", "streams", "drive_qa_status", "split_assignments", "split_summary", "engine_traceability"}
    assert models | {"odd_coverage_by_market", "odd_coverage_by_split"} == _materialized(first)
    checks = _checks(first)
    assert len(checks) >= 35 and all(checks.values()), [k for k, ok in checks.items() if not ok]
    assert fleet.rows("select count(*) from split_assignments") == [(0,)]

    assert fleet.rows("select count(*), count(distinct market), count(synced_frames) from drives") == [(DRIVES, 1, 3)]
    decoded = fleet.defs.resources["catalog"].query("select count(*) from decoded_streams")
    assert fleet.rows("select count(*) from streams") == decoded and decoded[0][0] >= 5 * DRIVES
    assert fleet.rows("select count(*) from drives where streams_decoded > 0 and decoded_rows > 0") == [(DRIVES,)]
    # QA status from the checks decoded_signals, synced_frames and odd_tags recorded per drive
    qa = fleet.rows("select qa_status, stages_checked, checks, blocking_failed from drive_qa_status")
    graph = fleet.defs.resolve_asset_graph()
    stages = ["decoded_signals", "odd_tags", "synced_frames"]
    per_drive_checks = sum(len(graph.get(AssetKey([MARKET, s])).check_keys) for s in stages)
    assert len(qa) == DRIVES
    for status, stages_checked, checks_run, blocking_failed in qa:
        assert status in ("passed", "warned") and blocking_failed == 0
        assert stages_checked == stages and checks_run == per_drive_checks
    # ODD coverage per market: each tag's values share all tagged frames
    coverage = fleet.rows(
        "select tag, sum(frames), sum(share_of_frames) from odd_coverage_by_market group by tag order by tag"
    )
    frames = fleet.rows("select sum(synced_frames) from drives")[0][0]
    assert [t for t, _, _ in coverage] == ["manoeuvre", "road_type", "time_of_day", "weather"]
    assert all(abs(n - frames) <= 3 and s == pytest.approx(1.0) for _, n, s in coverage)

    # 2. The market assets write the split version v1; the catalog now summarises it.
    run = refresh_market_assets(fleet.defs, fleet.instance, console_log_level="CRITICAL", markets=(MARKET,))
    split_event = fleet.instance.get_latest_materialization_event(AssetKey([MARKET, "curated_splits"]))
    assert run is not None and split_event is not None and split_event.asset_materialization is not None
    counts = split_event.asset_materialization.metadata["split_counts"].value
    second = fleet.build_catalog("build_with_splits")
    assert second.success and all(_checks(second).values())
    assigned = sum(c["drives"] for c in counts.values())  # type: ignore[union-attr]
    assert assigned > 0
    assert fleet.rows("select count(*) from split_assignments where split_version = 'v1'") == [(assigned,)]
    summary = dict(fleet.rows("select split, drives from split_summary where market = 'de' and split_version = 'v1'"))
    assert summary == {s: c["drives"] for s, c in counts.items() if c["drives"]}  # type: ignore[index]
    kept = {s: c["frames"] for s, c in counts.items() if c["drives"]}  # type: ignore[index]
    assert dict(fleet.rows("select split, frames from split_summary")) == kept
    by_split = fleet.rows("select split, tag, sum(share_of_split) from odd_coverage_by_split group by all")
    assert {s for s, _, _ in by_split} == set(summary) and all(x == pytest.approx(1.0) for _, _, x in by_split)


def test_a_planted_invalid_split_value_fails_its_dbt_test_asset_check(fleet: Fleet) -> None:
    drive = fleet.rows("select drive_id from drives order by drive_id limit 1")[0][0]
    row = {name: None for name in SPLIT_ASSIGNMENTS.schema.names}
    row |= {"market": MARKET, "split_version": "planted", "drive_id": drive, "split": "holdout", "frames": 10}
    row |= {"excluded_frames": 0, "geo_cells": [], "road_type": "urban", "time_of_day": "day", "weather": "clear"}
    planted = fleet.lake / SPLIT_ASSIGNMENTS.path(MARKET, "planted")
    planted.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([row], SPLIT_ASSIGNMENTS.schema), planted)
    try:
        result = fleet.build_catalog("build_with_planted_violation")
    finally:
        planted.unlink()
    checks = _checks(result)
    assert not result.success  # dbt build exits non-zero on a failed test
    assert checks[("split_assignments", SPLIT_CHECK)] is False
    assert [k for k, ok in checks.items() if not ok] == [("split_assignments", SPLIT_CHECK)]
    # dbt skips what reads the failed model: no split summary is published over an invalid split value
    assert "split_assignments" in _materialized(result) and "split_summary" not in _materialized(result)


def test_dbt_docs_generate_works_offline_over_the_built_catalog(fleet: Fleet) -> None:
    dbt, metadata = fleet.defs.resources["dbt"], fleet.defs.resources["metadata_catalog"]
    target = fleet.state / "dbt-docs"
    start = time.perf_counter()
    with metadata.dbt_vars() as dbt_vars:
        invocation = dbt.cli(["docs", "generate", "--vars", json.dumps(dbt_vars)], target_path=target).wait()
    fleet.seconds["docs_generate"] = round(time.perf_counter() - start, 1)
    assert invocation.is_successful()
    catalog = json.loads((target / "catalog.json").read_text())
    assert {n.split(".")[-1] for n in catalog["nodes"]} >= {"drives", "streams", "split_summary"}
    assert "drive_key" in catalog["nodes"]["model.ad_metadata.drives"]["columns"]
    assert {n.split(".")[-1] for n in catalog["sources"]} >= {"raw_files", "drive_checks", "split_assignments"}
    assert (target / "index.html").stat().st_size > 10_000
    print(f"\ndbt timings through Dagster (s): {fleet.seconds}")
    with duckdb.connect(str(fleet.state / "metadata.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from drives").fetchone() == (DRIVES,)
