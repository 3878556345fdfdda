"""deploy/dagster.yaml against a REAL PostgreSQL server (tests/support/postgres_server.py; skips where absent).

Proves: the production instance config loads and is Postgres-backed with the run queue and run monitoring
configured; 1,000 dynamic drive partitions round-trip in batches; a real materialize() of a partitioned asset
lands in that Postgres database (read back through a second instance and with plain SQL). And the MLflow store
as deploy/ configures it: the createdb Job's command, the secret's tracking URI, the values' S3 artifact root.
"""

# No `from __future__ import annotations`: Dagster compares the `context` annotation by identity and
# rejects the string form ("Cannot annotate `context` parameter with type AssetExecutionContext").
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import mlflow
import psycopg2
import pytest
from dagster import AssetExecutionContext, DagsterInstance

from ad_common.stages import STAGE_TAG, k8s_op_tags, stage_run_tags
from ad_resources.tracking import tracking_from_env
from tests.deploy.test_terraform import (
    _blocks,
    _helm_values,
    _interpolate,
    _module,
    _var_defaults,
    deployed_tracking_uri,
)
from tests.support.postgres_server import PostgresParams, find_pg_bindir, running_postgres
from tests.support.s3_server import running_s3

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


def _createdb_job(variables: dict[str, object]) -> tuple[list[str], dict[str, str]]:
    """Command and plain env of modules/k8s-addons' `create-mlflow-database` Job, rendered with ``variables``."""
    job = _blocks(_module("modules/k8s-addons"), "resource", "kubernetes_job_v1")["mlflow_db"]
    (container,) = job["spec"][0]["template"][0]["spec"][0]["container"]
    shell, flag, joined = container["command"]
    parts = json.loads(joined.removeprefix('${join(" ", ').removesuffix(")}"))
    command = [shell, flag, _interpolate(" ".join(parts), variables)]
    return command, {e["name"]: _interpolate(e["value"], variables) for e in container["env"] if "value" in e}


def test_mlflow_store_as_deployed_runs_on_postgres_and_s3(
    pg: PostgresParams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The createdb Job (twice: idempotent) makes `mlflow` on the server; the definitions' tracking resource, built
    from a train pod's env (the prod values plus the secret's URI), runs and registers there, artifacts in S3."""
    bindir = find_pg_bindir()
    assert bindir is not None  # the pg fixture skipped otherwise
    metadata = _var_defaults(_module("modules/metadata"))  # what modules/platform passes to modules/k8s-addons
    command, job_env = _createdb_job(
        {
            "db_host": pg.host,
            "db_username": metadata["username"],
            "dagster_database": metadata["databases"][0],
            "mlflow_database": metadata["databases"][1],
        }
    )
    assert job_env["PGSSLMODE"] == "require"  # RDS forces TLS; this test server has none
    # PGPASSWORD comes from the postgres secret (secretKeyRef); the server's port is not RDS's 5432.
    job_env |= {"PGPORT": str(pg.port), "PGPASSWORD": pg.password, "PGSSLMODE": "disable"}
    for _ in range(2):
        proc = subprocess.run(
            command,
            env={**os.environ, **job_env, "PATH": f"{bindir}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr

    uri = deployed_tracking_uri("prod", db_host=pg.host, db_port=pg.port, db_password=pg.password)
    pod_env = dict(_helm_values("prod")["dagster-user-deployments"]["deployments"][0]["env"])
    bucket = pod_env["AD_MLFLOW_ARTIFACTS"].removeprefix("s3://").split("/")[0]
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "AD_MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)  # mlflow.set_tracking_uri exports the URI; restored afterwards
    with running_s3() as endpoint:
        pod_env |= {
            "AD_MLFLOW_TRACKING_URI": uri.replace("sslmode=require", "sslmode=disable"),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }
        for key, value in pod_env.items():
            monkeypatch.setenv(key, str(value))
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": pod_env["AWS_REGION"]})
        tracking = tracking_from_env(tmp_path, in_definitions=True).process_config_and_initialize()
        try:
            with tracking.run("deploy-probe") as run:
                mlflow.log_metric("val_mae", 1.25, step=0)
                mlflow.log_text("{}", "evaluation.json")
            client = tracking.client()
            client.create_registered_model("steering-probe")
            stored = client.get_run(run.info.run_id)
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)  # type: ignore[arg-type]
    assert stored.info.status == "FINISHED" and stored.data.metrics["val_mae"] == 1.25
    assert stored.info.artifact_uri == f"{pod_env['AD_MLFLOW_ARTIFACTS']}/{run.info.run_id}/artifacts"
    assert keys == [f"mlflow/{run.info.run_id}/artifacts/evaluation.json"]
    assert not (tmp_path / "mlflow").exists()  # not the embedded SQLite store

    # The run and the registered model are rows of the `mlflow` database; Dagster's has no MLflow table (`runs` is
    # Dagster's too; `experiments` and `registered_models` are MLflow's alone).
    def query(dbname: str, sql: str) -> tuple[object, ...] | None:
        conn = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, (run.info.run_id,))
                return cur.fetchone()
        finally:
            conn.close()

    counts = "SELECT (SELECT count(*) FROM runs WHERE run_uuid = %s), (SELECT count(*) FROM registered_models)"
    assert query("mlflow", counts) == (1, 1)
    mlflow_tables = "SELECT to_regclass('experiments'), to_regclass('registered_models'), %s"
    assert query("dagster", mlflow_tables) == (None, None, run.info.run_id)
