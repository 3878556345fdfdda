"""Trained models: real materializations on a generated, synced fleet, a real MLflow store (SQLite + an artifact
folder under the test's tmp dir), the registry's aliases, the approval CLI and its audit record."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from dagster import AssetKey, DagsterInstance, instance_for_test, materialize

from ad_assets import models, shards
from ad_common.lake_layout import MODEL_APPROVALS, search_best_params_path
from ad_core.decode.version import DECODER_VERSION
from ad_core.sync.version import SYNC_VERSION
from ad_core.train.mlflow_io import load_model
from ad_core.train.version import TRAINER_VERSION, git_sha
from ad_platform.cli import main as cli
from ad_resources.catalog import DuckDBCatalog
from ad_resources.lake import LocalLake
from ad_resources.tracking import MlflowTracking, local_tracking
from ad_resources.training import LocalTrainingLauncher
from tests.support.splits import assign_splits, lake_view, publish_shards, publish_splits

KEY, SEARCH = AssetKey(["de", "trained_model"]), AssetKey(["de", "model_search"])
NAME = "steering-de"
# Tiny: 2 epochs over the shards of three 30 s drives (300 train frames): seconds on 2 shared cores. Gate
# thresholds loose (the model barely trains); the regression check is the one exercised.
TINY = {
    "epochs": 2,
    "use_search_params": False,
    "max_mae_ratio": 100.0,
    "slice_max_mae_ratio": 100.0,
    "min_baseline_mae_deg": 0.0,
}


@pytest.fixture
def env(de_fleet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    state = tmp_path / ".state"
    lake = lake_view(de_fleet, state)
    monkeypatch.setenv("AD_STATE_DIR", str(state))  # the CLI finds the same MLflow store and lake
    monkeypatch.setenv("AD_LAKE_DIR", str(lake))
    monkeypatch.delenv("AD_MLFLOW_TRACKING_URI", raising=False)
    return {"state": state, "lake": lake, "tracking": local_tracking(state)}


def _splits(lake: Path) -> dict[str, str]:
    drives = sorted(p.name for p in (lake / "synced" / "de").iterdir())
    return dict(zip(drives, ("train", "val", "test"), strict=True))


def _materialize(instance: DagsterInstance, env: dict[str, object], key: AssetKey = KEY, **config: object):  # type: ignore[no-untyped-def]
    assets = models.definitions("de").assets
    return materialize(
        assets,
        selection=[key],
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {f"de__{key.path[-1]}": {"config": {**config}}}},
        resources={
            "lake": LocalLake(root=str(env["lake"])),
            "mlflow_tracking": env["tracking"],
            "training": LocalTrainingLauncher(),
        },
    )


def _checks(result) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_train_register_approve_load_by_alias_then_a_retrain_that_does_not_beat_it_is_refused(
    env: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    tracking: MlflowTracking = env["tracking"]  # type: ignore[assignment]
    lake: Path = env["lake"]  # type: ignore[assignment]
    with instance_for_test() as instance:
        sha = publish_splits(instance, lake, "de", "v1", splits=_splits(lake), exclude={})
        index = json.loads((lake / publish_shards(instance, lake, "de")).read_text())
        first = _materialize(instance, env, **TINY)
        assert first.success
        assert _checks(first) == {
            "test_mae_vs_baseline": True,
            "no_regression_vs_approved": True,
            "odd_slices_beat_baseline": True,
        }
        meta = first.get_asset_materialization_events()[0].materialization.metadata
        assert meta["version"].value == "1" and meta["candidate"].value is True
        assert meta["manifest_sha256"].value == sha

        client = tracking.client()
        v1 = client.get_model_version(NAME, "1")
        assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "1"
        assert v1.tags["manifest_sha256"] == sha and v1.tags["split_version"] == "v1"
        versions = f"trainer-{TRAINER_VERSION}+git-{git_sha()[:12]}+decoder-{DECODER_VERSION}+sync-{SYNC_VERSION}"
        assert v1.tags["code_version"] == versions
        assert (v1.tags["decoder_version"], v1.tags["sync_version"]) == (DECODER_VERSION, SYNC_VERSION)
        run = client.get_run(v1.run_id)
        assert run.info.status == "FINISHED"  # ended explicitly, not left RUNNING
        assert run.data.tags["dagster_run_id"] == first.run_id
        assert run.data.params["train_frames"] == str(index["splits"]["train"]["frames"])  # every frame of the shards
        assert run.data.params["epochs"] == "2" and run.data.tags["shards_index"] == "shards/de/v1/index.json"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0, 1]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mae")] == [0, 1]
        mae = run.data.metrics["test_mae_de"]
        assert mae > 0 and run.data.metrics["test_baseline_mae_de"] > 0
        assert meta["test_frames"].value == int(run.data.params["test_frames"]) > 0

        # The human gate: approve v1 (audited in MLflow tags and the catalog), then load it by alias.
        assert cli(["approve", NAME, "1", "--by", "alice", "--note", "first steering model"]) == 0
        assert str(client.get_model_version_by_alias(NAME, "approved").version) == "1"
        assert client.get_model_version(NAME, "1").tags["approval.by"] == "alice"
        catalog = DuckDBCatalog(path=str(env["state"] / "catalog.duckdb"), lake=LocalLake(root=str(lake)))
        rows = catalog.query(
            "SELECT model, version, action, actor, note, manifest_sha256, metrics FROM model_approvals"
        )
        assert rows[0][:6] == (NAME, "1", "approve", "alice", "first steering model", sha)
        assert json.loads(rows[0][6])["test_mae_de"] == pytest.approx(mae)

        tracking.activate()
        model = load_model(f"models:/{NAME}@approved")
        batch = torch.rand(5, 3, 66, 200)  # the input example held 2 frames: the batch size is not frozen
        out = model(batch)
        assert tuple(out.shape) == (5,) and torch.isfinite(out).all()
        pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@approved")
        assert np.asarray(pyfunc.predict(batch.numpy()[:3])).shape == (3,)

        # Retraining on the same manifest and code gives the same metrics (deterministic) ...
        second = _materialize(instance, env, **TINY)
        v2 = client.get_model_version(NAME, "2")
        assert client.get_run(v2.run_id).data.metrics["test_mae_de"] == mae
        # ... so it does not beat the approved version: the blocking gate fails the run, no candidate alias.
        assert not second.success
        assert _checks(second)["no_regression_vs_approved"] is False
        assert v2.tags["gate.status"] == "failed" and v2.tags["gate.no_regression_vs_approved"] == "failed"
        assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "1"
        assert client.get_run(v2.run_id).info.status == "FINISHED"
        assert cli(["approve", NAME, "2", "--by", "mallory", "--note", "ship it"]) == 2
        assert "failed gate checks: no_regression_vs_approved" in capsys.readouterr().err
        assert str(client.get_model_version_by_alias(NAME, "approved").version) == "1"

        # Rollback: nothing was approved before v1, so the alias goes; audited too.
        assert cli(["rollback", NAME, "--by", "bob", "--note", "regression found on the road"]) == 0
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_model_version_by_alias(NAME, "approved")
        actions = catalog.query("SELECT action, actor FROM model_approvals ORDER BY at_ns")
        assert actions == [("approve", "alice"), ("rollback", "bob")]
        assert len(LocalLake(root=str(lake)).list_files(MODEL_APPROVALS.folder, ".parquet")) == 2


def _failure(result) -> str:  # type: ignore[no-untyped-def]
    return result.get_step_failure_events()[0].event_specific_data.error.message  # type: ignore[no-any-return]


def test_training_without_shards_fails_naming_the_missing_asset_and_stale_shards_are_refused(
    env: dict[str, object],
) -> None:
    lake: Path = env["lake"]  # type: ignore[assignment]
    with instance_for_test() as instance:
        result = _materialize(instance, env, **TINY)
        assert not result.success and "de/training_shards has never been materialized" in _failure(result)
        publish_splits(instance, lake, "de", "v1", splits=_splits(lake))
        publish_shards(instance, lake, "de")
        # A new split version after the shards: training refuses the stale shards, naming what to do.
        publish_splits(instance, lake, "de", "v2", splits=_splits(lake), exclude={sorted(_splits(lake))[0]: [1, 2]})
        result = _materialize(instance, env, **TINY)
    assert not result.success
    assert "materialize de/training_shards again" in _failure(result)


def test_a_manifest_changed_after_it_was_recorded_is_refused(env: dict[str, object]) -> None:
    lake: Path = env["lake"]  # type: ignore[assignment]
    with instance_for_test() as instance:
        publish_splits(instance, lake, "de", "v1", splits=_splits(lake))
        with open(lake / "splits/de/v1/manifest.parquet", "ab") as fh:
            fh.write(b"x")
        result = materialize(
            shards.definitions("de").assets,
            instance=instance,
            raise_on_error=False,
            resources={"lake": LocalLake(root=str(lake))},
        )
    assert not result.success
    assert "changed since curated_splits recorded it" in _failure(result)


def test_hpo_search_logs_nested_trials_and_its_best_params_feed_training(env: dict[str, object]) -> None:
    tracking: MlflowTracking = env["tracking"]  # type: ignore[assignment]
    lake: Path = env["lake"]  # type: ignore[assignment]
    with instance_for_test() as instance:
        publish_splits(instance, lake, "de", "v1", splits=_splits(lake))
        publish_shards(instance, lake, "de")
        search = _materialize(instance, env, SEARCH, n_trials=2, epochs=1, max_frames_per_drive=32)
        assert search.success
        meta = search.get_asset_materialization_events()[0].materialization.metadata
        best = json.loads((lake / search_best_params_path("de")).read_text())
        assert best["params"] == meta["best_params"].value and set(best["params"]) == set(models.SEARCHED_PARAMS)
        client = tracking.client()
        parent = client.get_run(meta["mlflow_parent_run_id"].value)
        assert parent.info.status == "FINISHED"
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        assert sorted(c.data.metrics["val_mae"] for c in children)[0] == pytest.approx(best["val_mae"])

        trained = _materialize(instance, env, **{**TINY, "use_search_params": True})
        assert trained.success
        params = trained.get_asset_materialization_events()[0].materialization.metadata["params"].value
        assert params["learning_rate"] == pytest.approx(best["params"]["learning_rate"])
        assert params["batch_size"] == best["params"]["batch_size"]


def test_a_model_can_also_train_on_other_markets_and_is_gated_in_each(env: dict[str, object]) -> None:
    tracking: MlflowTracking = env["tracking"]  # type: ignore[assignment]
    lake: Path = env["lake"]  # type: ignore[assignment]
    for folder in ("synced", "decoded"):  # the same drives as a second market, "us"
        (lake / folder / "us").symlink_to(lake / folder / "de", target_is_directory=True)
    with instance_for_test() as instance:
        de_sha = publish_splits(instance, lake, "de", "v1", splits=_splits(lake))
        us_sha = publish_splits(instance, lake, "us", "v1", splits=_splits(lake))
        index = json.loads((lake / publish_shards(instance, lake, "de")).read_text())
        publish_shards(instance, lake, "us")
        result = _materialize(instance, env, **TINY, also_train_on=["us"])
        assert result.success
        meta = result.get_asset_materialization_events()[0].materialization.metadata
        assert (
            meta["trained_on_markets"].value == ["de", "us"]
            and meta["train_frames"].value == 2 * index["splits"]["train"]["frames"]
        )
        version = tracking.client().get_model_version(NAME, meta["version"].value)
        assert version.tags["markets"] == "de,us"
        assert (version.tags["manifest_sha256"], version.tags["manifest_sha256.us"]) == (de_sha, us_sha)
        metrics = tracking.client().get_run(version.run_id).data.metrics
        assert {"test_mae_de", "test_mae_us"} <= set(metrics)
        check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "test_mae_vs_baseline")
        assert set(check.metadata["mae_ratio"].value) == {"de", "us"}


def test_hash_assignment_gives_small_markets_a_test_drive() -> None:
    assert sorted(assign_splits(["a", "b"]).values()) == ["test", "train"]
    five = assign_splits([f"d{i}" for i in range(5)])
    assert sorted(five.values()) == ["test", "train", "train", "train", "val"]
    assert assign_splits([f"d{i}" for i in range(5)]) == five


def test_gate_fails_a_market_whose_test_split_is_too_straight_to_judge() -> None:
    """A ratio against a near-zero baseline is noise: the market fails with the reason, flat slices are not gated."""
    report = {
        "markets": {
            "de": {"mae": 0.17, "baseline_mae": 0.23, "mae_ratio": 0.74},
            "us": {"mae": 0.45, "baseline_mae": 1.10, "mae_ratio": 0.41},
        },
        "slices": [
            {
                "market": "de",
                "tag": "road_type",
                "value": "motorway",
                "frames": 600,
                "mae": 0.17,
                "baseline_mae": 0.23,
                "mae_ratio": 0.74,
            },
            {
                "market": "us",
                "tag": "weather",
                "value": "fog_snow",
                "frames": 600,
                "mae": 1.2,
                "baseline_mae": 1.1,
                "mae_ratio": 1.09,
            },
        ],
    }
    checks = models.gate(report, None, models.TrainSettings())
    passed, description, metadata = checks[models.CHECK_BASELINE]
    assert not passed
    assert "too little steering to judge in ['de'] (baseline MAE de 0.23 deg < 0.5)" in description
    assert "not in" not in description  # US passes its ratio; DE is not judged on one
    assert metadata["too_little_steering"] == {"de": 0.23}
    passed, description, metadata = checks[models.CHECK_SLICES]
    assert not passed and metadata["slices_gated"] == 1
    assert metadata["failing_slices"] == ["us:weather=fog_snow (1.09)"]
    # The same DE numbers with enough steering in the test split: judged on the ratio, and failing it.
    report["markets"]["de"]["baseline_mae"] = 0.6
    passed, description, _ = models.gate(report, None, models.TrainSettings())[models.CHECK_BASELINE]
    assert not passed and description.endswith("; not in ['de']")


def test_the_training_config_and_the_model_search_default_to_the_trainers_own_parameters() -> None:
    """A launched training, a search's trials and the benches train alike unless a run's config says otherwise."""
    from ad_core.train.loop import TrainParams

    assert models.TrainSettings().params() == TrainParams()
    search = models.SearchSettings()
    assert (search.seed, search.workers, search.threads) == (TrainParams.seed, TrainParams.workers, TrainParams.threads)
