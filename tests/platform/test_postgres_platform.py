"""The platform's own sensor + materialization path on a real PostgreSQL-backed instance (deploy/dagster.yaml)."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from ad_platform.definitions import build_definitions
from ad_platform.runner import run_once
from fleetgen import generate_fleet
from tests.support import REPO_ROOT
from tests.support.postgres_server import PostgresParams, running_postgres


@pytest.fixture
def postgres_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DagsterInstance]:
    with running_postgres(tmp_path / "pg") as params:
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
        for key, value in PostgresParams.env(params).items():
            monkeypatch.setenv(key, value)
        instance = DagsterInstance.from_config(str(home))
        try:
            yield instance
        finally:
            instance.dispose()


@pytest.mark.slow
def test_landing_sensor_and_ingest_runs_on_postgres(
    postgres_instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH", "AD_LANDING_URL", "AD_LAKE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AD_STATE_DIR", str(tmp_path / "state"))
    (drive,) = generate_fleet(tmp_path / "state" / "landing", ["jp"], 1, 0.4, seed=11, workers=1)

    outcomes = run_once(
        build_definitions(), postgres_instance, state_dir=tmp_path / "state", log=lambda _: None, settle_s=0
    )
    assert [(o.drive_id, o.status) for o in outcomes] == [(drive.name, "materialized")]
    assert type(postgres_instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert postgres_instance.get_dynamic_partitions("drives_jp") == [drive.name]
    for stage in ("raw_drive", "decoded_signals", "synced_frames"):
        assert postgres_instance.get_materialized_partitions(AssetKey(["jp", stage])) == {drive.name}
