"""Compiled engines: the approved model of a real trained run (generated, synced DE fleet; real MLflow store)
exported to ONNX, parity against the registered PyTorch model with onnxruntime, CPU latency, the lineage CLI
and its catalog record; AI Hub without a token; TensorRT skipped where it cannot import."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import onnx
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, instance_for_test, materialize

from ad_assets import engines, metadata_catalog, models
from ad_common.lake_layout import ENGINE_LINEAGE, ENGINES, registry_path
from ad_core.compile import lineage, tensorrt_build
from ad_platform.cli import main as cli
from ad_resources.catalog import DuckDBCatalog, MetadataCatalog
from ad_resources.lake import LocalLake
from ad_resources.tracking import MlflowTracking, local_tracking
from ad_resources.training import LocalTrainingLauncher
from tests.support.splits import publish_shards, publish_splits, write_manifest

NAME = "steering-de"
ONNX_KEY, QNN_KEY = AssetKey(["de", "onnx_engine"]), AssetKey(["de", "qnn_engine"])
TINY = {
    "epochs": 2,
    "use_search_params": False,
    "max_mae_ratio": 100.0,
    "slice_max_mae_ratio": 100.0,
    "min_baseline_mae_deg": 0.0,
}
ONNX_CONFIG = {"parity_batch_size": 5, "max_frames_per_drive": 48, "latency_runs": 100}
LINKED = (
    "synced",
    "decoded",
    "registry",
    "catalog/drive_signal_summaries",
    "catalog/raw_files",
    "catalog/decoded_streams",
)


def engine_lake(shared_lake: Path, root: Path) -> Path:
    """A test's own lake over the shared synced fleet: every record the lineage reads linked, the rest its own."""
    lake = root / "lake"
    for folder in LINKED:
        (lake / folder).parent.mkdir(parents=True, exist_ok=True)
        (lake / folder).symlink_to(shared_lake / folder, target_is_directory=True)
    return lake


@pytest.fixture
def env(de_fleet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    state = tmp_path / ".state"
    lake = engine_lake(de_fleet, state)
    monkeypatch.setenv("AD_STATE_DIR", str(state))
    monkeypatch.setenv("AD_LAKE_DIR", str(lake))
    monkeypatch.delenv("AD_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("QAIHUB_API_TOKEN", raising=False)
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "no-client.ini"))
    return {"state": state, "lake": lake, "tracking": local_tracking(state)}


def _run(instance: DagsterInstance, env: dict[str, object], key: AssetKey, config: dict[str, object]):  # type: ignore[no-untyped-def]
    assets = [*models.definitions("de").assets, *engines.definitions("de").assets]
    return materialize(
        assets,
        selection=[key],
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {f"de__{key.path[-1]}": {"config": config}}},
        resources={
            "lake": LocalLake(root=str(env["lake"])),
            "mlflow_tracking": env["tracking"],
            "training": LocalTrainingLauncher(),
        },
    )


def _traceability(env: dict[str, object], instance: DagsterInstance, sha: str) -> list[tuple[object, ...]]:
    """dbt builds the catalog's engine_traceability model (and runs its tests) over the test's lake."""
    records = DuckDBCatalog(path=str(env["state"] / "catalog.duckdb"), lake=LocalLake(root=str(env["lake"])))
    catalog = MetadataCatalog(path=str(env["state"] / "metadata.duckdb"), records=records)
    result = materialize(
        [metadata_catalog.dbt_metadata_catalog],
        selection=[AssetKey(["catalog", "engine_traceability"])],
        instance=instance,
        resources={"dbt": metadata_catalog.dbt_cli_resource(), "metadata_catalog": catalog},
    )
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    return catalog.query(
        "SELECT approval_status, count(*), count(DISTINCT drive_id), count(DISTINCT raw_sha256), "
        "bool_and(parity_passed) FROM engine_traceability WHERE engine_sha256 = ? GROUP BY ALL",
        [sha],
    )


def _failure(result) -> str:  # type: ignore[no-untyped-def]
    return result.get_step_failure_events()[0].event_specific_data.error.message


def _splits(lake: Path) -> dict[str, str]:
    drives = sorted(p.name for p in (lake / "synced" / "de").iterdir())
    return dict(zip(drives, ("train", "val", "test"), strict=True))


def test_approved_model_to_onnx_engine_with_parity_latency_and_complete_lineage_flagged_after_rollback(
    env: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    tracking: MlflowTracking = env["tracking"]  # type: ignore[assignment]
    lake: Path = env["lake"]  # type: ignore[assignment]
    with instance_for_test() as instance:
        sha_manifest = publish_splits(instance, lake, "de", "v1", splits=_splits(lake), exclude={})
        publish_shards(instance, lake, "de")  # trained_model trains from the split's shards
        assert _run(instance, env, AssetKey(["de", "trained_model"]), TINY).success

        # Only the approved version is compiled: a candidate is not enough.
        refused = _run(instance, env, ONNX_KEY, ONNX_CONFIG)
        assert not refused.success and "steering-de has no `approved` version" in _failure(refused)

        assert cli(["approve", NAME, "1", "--by", "alice", "--note", "first"]) == 0
        result = _run(instance, env, ONNX_KEY, ONNX_CONFIG)
        assert result.success, _failure(result)
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert {n: c.passed for n, c in checks.items()} == {"onnx_parity": True, "lineage_complete": True}
        meta = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
        sha = meta["engine_sha256"]
        engine_file = lake / meta["engine_path"]
        assert hashlib.sha256(engine_file.read_bytes()).hexdigest() == sha == meta["engine_path"].split("/")[-2]
        assert meta["reproducible_export"] is True and meta["model_version"] == "1"
        model = onnx.load(str(engine_file))
        onnx.checker.check_model(model, full_check=True)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        # Parity ran at batch 5 (the export example had 2 frames) over the 48 test frames: 9 full batches + 3.
        assert meta["parity_batch_size"] == 5 and meta["parity_frames"] == 48
        assert meta["parity_max_abs_diff"] <= 1e-3 and abs(meta["mae_torch"] - meta["mae_onnxruntime"]) <= 0.01
        assert meta["mae_torch"] > 0
        assert 0 < meta["latency_p50_ms"] <= meta["latency_p99_ms"]
        report = json.loads((engine_file.parent / "report.json").read_text())
        assert report["parity"]["passed"] is True and report["model"]["version"] == "1"
        client = tracking.client()
        assert client.get_model_version(NAME, "1").tags["engine.onnx-cpu.sha256"] == sha
        with capsys.disabled():
            print(
                f"\nparity: max |diff| {meta['parity_max_abs_diff']:.3e} mean {meta['parity_mean_abs_diff']:.3e} deg; "
                f"MAE torch {meta['mae_torch']:.4f} onnxruntime {meta['mae_onnxruntime']:.4f}; "
                f"latency p50 {meta['latency_p50_ms']:.2f} ms p99 {meta['latency_p99_ms']:.2f} ms"
            )

        # Exporting the same approved version again gives the same engine (same bytes, same record).
        again = _run(instance, env, ONNX_KEY, {**ONNX_CONFIG, "verify_reproducible": False, "latency_runs": 10})
        assert again.get_asset_materialization_events()[0].materialization.metadata["engine_sha256"].value == sha

        # The lineage CLI: complete, down to every registered raw file's sha256.
        capsys.readouterr()
        assert cli(["lineage", sha]) == 0
        printed = capsys.readouterr().out
        with capsys.disabled():
            print(printed)
        assert (
            f"engine onnx-cpu sha256 {sha}" in printed
            and f"split manifest splits/de/v1/manifest.parquet sha256 {sha_manifest}" in printed
        )
        assert "lineage complete: 3 drive(s)" in printed and "FLAG" not in printed and "MISSING" not in printed
        for drive in _splits(lake):
            reg = json.loads((lake / registry_path("de", drive)).read_text())
            for name, f in reg["files"].items():
                assert f"raw {name} " in printed and f["sha256"] in printed
        assert "DBC " in printed and "sha256" in printed.split("DBC ", 1)[1].split("\n", 1)[0]
        assert cli(["lineage", f"{NAME}@approved"]) == 0 and f"sha256 {sha}" in capsys.readouterr().out
        assert cli(["lineage", sha[:12]]) == 0
        capsys.readouterr()

        # The same chain in the catalog (DuckDB views over the records the asset wrote).
        catalog = DuckDBCatalog(path=str(env["state"] / "catalog.duckdb"), lake=LocalLake(root=str(lake)))
        rows = catalog.query(
            "SELECT count(*), count(DISTINCT drive_id), count(raw_sha256), min(model_version) "
            f"FROM {ENGINE_LINEAGE.name} WHERE engine_sha256 = ?",
            [sha],
        )
        assert rows[0][1:] == (3, rows[0][0], "1") and rows[0][0] >= 3
        assert catalog.query(f"SELECT target, parity_passed FROM {ENGINES.name}") == [("onnx-cpu", True)]
        # ... and as the dbt model engine_traceability, with the approval status read from the audit trail.
        assert _traceability(env, instance, sha) == [("approved", rows[0][0], 3, rows[0][0], True)]

        # The model loses its approval: the engine's lineage is flagged (exit 1), and nothing compiles.
        assert cli(["rollback", NAME, "--by", "bob", "--note", "regression on the road"]) == 0
        capsys.readouterr()
        assert cli(["lineage", sha]) == 1
        flagged = capsys.readouterr().out
        assert "FLAG: steering-de version 1 is NOT approved now (revoked by bob" in flagged
        assert "this engine must not be deployed" in flagged
        assert [r[0] for r in _traceability(env, instance, sha)] == ["revoked"]
        assert not _run(instance, env, ONNX_KEY, ONNX_CONFIG).success


def _reingest(fleet_root: Path, root: Path, drive: str, change: str) -> Path:
    """Land a copy of one drive of the fleet with one change (a raw file or the market DBC) and run it through
    raw -> decoded -> synced for real into a lake of its own; returns that lake."""
    from ad_assets import decoded, raw, synced
    from ad_resources.landing import LocalLandingZone
    from ad_resources.quality import GreatExpectationsResource

    landing, lake = root / "landing", root / "lake"
    shutil.copytree(fleet_root / "landing" / "de" / drive, landing / "de" / drive)
    shutil.copytree(fleet_root / "landing" / "de" / "_dbc", landing / "de" / "_dbc")
    if change == "raw":
        manifest = landing / "de" / drive / "drive.json"
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "note": "re-exported"}, indent=2))
    else:
        dbc = next((landing / "de" / "_dbc").glob("*.dbc"))
        dbc.write_text(dbc.read_text() + "\n")  # same signals, different bytes
    assets = [*raw.definitions("de").assets, *decoded.definitions("de").assets, *synced.definitions("de").assets]
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("drives_de", [drive])
        result = materialize(
            assets,
            partition_key=drive,
            instance=instance,
            resources={
                "landing": LocalLandingZone(root=str(landing)),
                "lake": LocalLake(root=str(lake)),
                "great_expectations": GreatExpectationsResource(),
            },
        )
        assert result.success
    return lake


def _chain(lake: Path) -> tuple[object, dict[str, dict[str, object]]]:
    rel, sha = write_manifest(lake, "de", "v1", splits={p.name: "test" for p in (lake / "synced" / "de").iterdir()})
    head = {
        "engine_sha256": "e" * 64,
        "target": "onnx-cpu",
        "model_name": NAME,
        "model_version": "1",
        "mlflow_run_id": "r",
        "manifest_sha256": sha,
        "manifest_path": rel,
    }
    chain = lineage.resolve_chain(head, pq.read_table(lake / rel), lambda p: lake / p)
    return chain, {r["raw_file"]: r for r in chain.to_pylist()}


@pytest.mark.parametrize("change", ["raw", "dbc"])
def test_a_changed_raw_file_or_dbc_shows_as_a_different_hash_in_the_chain(
    de_fleet: Path, tmp_path: Path, change: str
) -> None:
    drive = sorted(p.name for p in (de_fleet / "synced" / "de").iterdir())[0]
    original = tmp_path / "original"
    original.mkdir()
    for folder in ("synced", "decoded", "registry", "catalog/raw_files", "catalog/decoded_streams"):
        for src in (de_fleet / folder / "de").glob(f"{drive}*"):
            dst = original / folder / "de" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    before, files_before = _chain(original)
    after, files_after = _chain(_reingest(de_fleet.parent, tmp_path / "changed", drive, change))
    assert not lineage.missing_links(before) and not lineage.missing_links(after)
    assert lineage.chain_digest(before) != lineage.chain_digest(after)
    changed = {f for f in files_before if files_before[f]["raw_sha256"] != files_after[f]["raw_sha256"]}
    dbc_before = json.loads(files_before["drive.json"]["dbc_files"])
    dbc_after = json.loads(files_after["drive.json"]["dbc_files"])
    assert dbc_before and dbc_before.keys() == dbc_after.keys()
    if change == "raw":
        assert changed == {"drive.json"} and dbc_before == dbc_after
        assert files_after["drive.json"]["drive_version"] == 1  # a new lake: first version of the changed bytes
    else:
        assert changed == set() and dbc_before != dbc_after


def test_qnn_engine_without_a_token_fails_fast_with_a_clear_message(env: dict[str, object]) -> None:
    with instance_for_test() as instance:
        started = time.monotonic()
        result = _run(instance, env, QNN_KEY, {"api_url": "http://127.0.0.1:9"})
        elapsed = time.monotonic() - started
    assert not result.success
    message = _failure(result)
    assert "no Qualcomm AI Hub API token: set QAIHUB_API_TOKEN" in message and "Nothing was sent" in message
    assert elapsed < 15  # the client's own retries would take ~45 s


def test_tensorrt_build_runs_only_where_tensorrt_imports() -> None:
    why = tensorrt_build.tensorrt_import_error()
    if why:
        pytest.skip(why)
    trt = tensorrt_build.require_tensorrt()
    assert trt.__version__
