"""deploy/dagster.yaml against a REAL PostgreSQL server (tests/support/postgres_server.py; skips where absent).

Proves: the production instance config loads and is Postgres-backed with the run queue and run monitoring
configured; 1,000 dynamic drive partitions round-trip in batches; a real materialize() of a partitioned asset
lands in that Postgres database (read back through a second instance and with plain SQL).
"""

# No `from __future__ import annotations`: Dagster compares the `context` annotation by identity and
# rejects the string form ("Cannot annotate `context` parameter with type AssetExecutionContext").
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from dagster import AssetExecutionContext, DagsterInstance

from ad_common.stages import STAGE_TAG, k8s_op_tags, stage_run_tags
from tests.support.postgres_server import PostgresParams, running_postgres

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DAGSTER_YAML = REPO_ROOT / "deploy" / "dagster.yaml"

DRIVES_DE = dg.DynamicPartitionsDefinition(name="drives_de")
N_DRIVES = 1_000
BATCH = 250


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresParams]:
    with running_postgres(tmp_path_factory.mktemp("pg")) as params:
        yield params


@pytest.fixture(scope="module")
def dagster_home(pg: PostgresParams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A DAGSTER_HOME holding the unmodified deploy/dagster.yaml; credentials only via DAGSTER_PG_* env."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(DEPLOY_DAGSTER_YAML, home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in pg.env().items():
            mp.setenv(key, value)
        yield home


@pytest.fixture
def instance(dagster_home: Path) -> Iterator[DagsterInstance]:
    inst = DagsterInstance.from_config(str(dagster_home))
    try:
        yield inst
    finally:
        inst.dispose()


def test_deploy_dagster_yaml_is_postgres_with_queue_and_monitoring(instance: DagsterInstance) -> None:
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"

    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    queue = instance.get_concurrency_config().run_queue_config
    assert queue is not None
    assert queue.max_concurrent_runs == 40
    limits = {(lim["key"], lim["value"]): lim["limit"] for lim in queue.tag_concurrency_limits}
    assert limits[(STAGE_TAG, "train")] == 2
    assert limits[(STAGE_TAG, "catalog")] == 1

    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_runtime_seconds == 93600
    assert instance.run_monitoring_start_timeout_seconds == 900


def test_thousand_dynamic_partitions_round_trip(instance: DagsterInstance) -> None:
    keys = [f"DE_{i:05d}" for i in range(N_DRIVES)]
    for start in range(0, N_DRIVES, BATCH):
        instance.add_dynamic_partitions(DRIVES_DE.name, keys[start : start + BATCH])
    # Re-adding a batch is a no-op (sensors may re-request keys after a crash).
    instance.add_dynamic_partitions(DRIVES_DE.name, keys[:BATCH])

    stored = DRIVES_DE.get_partition_keys(dynamic_partitions_store=instance)
    assert sorted(stored) == keys
    assert instance.has_dynamic_partition(DRIVES_DE.name, "DE_00999")
    assert not instance.has_dynamic_partition(DRIVES_DE.name, "DE_01000")


@dg.asset(partitions_def=DRIVES_DE, op_tags=k8s_op_tags("decode"))
def decoded_drive_probe(context: AssetExecutionContext) -> dict[str, str]:
    return {"drive": context.partition_key}


def test_materialize_partition_is_stored_in_postgres(
    instance: DagsterInstance, dagster_home: Path, pg: PostgresParams
) -> None:
    instance.add_dynamic_partitions(DRIVES_DE.name, ["DE_00042"])
    result = dg.materialize(
        [decoded_drive_probe],
        instance=instance,
        partition_key="DE_00042",
        # Stage tags are plain run tags here; they must not break in-process execution.
        tags=stage_run_tags("decode", with_pod_config=True),
    )
    assert result.success
    key = decoded_drive_probe.key

    # A second instance built from the same config sees the run and the materialization: it is in the DB,
    # not in process memory.
    fresh = DagsterInstance.from_config(str(dagster_home))
    try:
        run = fresh.get_run_by_id(result.run_id)
        assert run is not None
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags[STAGE_TAG] == "decode"
        assert "DE_00042" in fresh.get_materialized_partitions(key)
        event = fresh.get_latest_materialization_event(key)
        assert event is not None
        assert event.dagster_event is not None
        assert event.dagster_event.partition == "DE_00042"
    finally:
        fresh.dispose()

    # And plain SQL against the server finds the materialization event row.
    conn = psycopg2.connect(pg.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
                (result.run_id, "ASSET_MATERIALIZATION"),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    assert row[0] == 1
