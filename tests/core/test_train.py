"""The training core on a real synced fleet (no Dagster): manifest contract, streaming order, exclusions,
augmentation, bounded reads, the model's batch-size independence and the evaluation arithmetic."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from ad_core.train.data import CameraFrames, ImageSpec, read_manifest, select_split
from ad_core.train.loop import TrainParams, _stats, evaluate, predict, train
from ad_core.train.model import PilotNet, parameter_count
from tests.support.splits import lake_view, write_manifest


@pytest.fixture
def manifest(de_fleet: Path, tmp_path: Path) -> tuple[pa.Table, Path]:
    lake = lake_view(de_fleet, tmp_path)
    drives = sorted(p.name for p in (lake / "synced" / "de").iterdir())
    rel, _ = write_manifest(
        lake, "de", splits=dict(zip(drives, ("train", "val", "test"), strict=True)), exclude={drives[0]: range(0, 40)}
    )
    return read_manifest(lake / rel), lake


def _ids(dataset: CameraFrames, workers: int) -> list[int]:
    loader = DataLoader(dataset, batch_size=16, num_workers=workers)
    return [int(r) for _img, _y, rows in loader for r in rows]


def test_a_manifest_missing_a_contract_column_is_refused(tmp_path: Path, manifest: tuple[pa.Table, Path]) -> None:
    table, _ = manifest
    pq.write_table(table.drop_columns(["camera_path"]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="missing camera_path"):
        read_manifest(tmp_path / "bad.parquet")


def test_excluded_frames_are_never_trained_on_and_every_other_frame_comes_once(
    manifest: tuple[pa.Table, Path],
) -> None:
    table, lake = manifest
    split = select_split(table, "train", lambda rel: lake / rel)
    assert split.target_column == "eps_steering_angle.SteeringWheelAngle"  # the EPS CAN signal, synced
    frames = split.table.column("frame_index").to_pylist()
    assert min(frames) == 40 and split.frames == table.filter(pa.compute.equal(table["split"], "train")).num_rows - 40
    dataset = CameraFrames(split.drives, ImageSpec(), shuffle=True, seed=3, shuffle_buffer=64)
    ids = _ids(dataset, workers=2)
    assert sorted(ids) == list(range(split.frames))  # each frame exactly once per epoch, none excluded


def test_order_is_deterministic_per_seed_and_epoch_and_images_match_the_targets(
    manifest: tuple[pa.Table, Path],
) -> None:
    table, lake = manifest
    split = select_split(table, "val", lambda rel: lake / rel, max_frames_per_drive=64)
    dataset = CameraFrames(split.drives, ImageSpec(), shuffle=True, flip=True, seed=1, shuffle_buffer=32)
    first, again = _ids(dataset, 1), _ids(dataset, 1)
    assert first == again
    dataset.set_epoch(1)
    assert _ids(dataset, 1) != first and sorted(_ids(dataset, 1)) == sorted(first)
    # Flipped frames carry the negated steering of the same frame; unflipped ones the synced value.
    targets = split.targets()
    plain = {int(r): (img, float(y)) for img, y, r in CameraFrames(split.drives, ImageSpec())}
    for img, y, r in dataset:
        expected_img, expected_y = plain[int(r)]
        if torch.equal(img, expected_img):
            assert float(y) == pytest.approx(expected_y) == pytest.approx(float(targets[int(r)]))
        else:
            assert torch.equal(img, expected_img.flip(-1)) and float(y) == pytest.approx(-expected_y)


def test_pilotnet_size_and_any_batch_size() -> None:
    model = PilotNet(66, 200, target_mean=1.5, target_scale=2.0).eval()
    assert 250_000 < parameter_count(model) < 255_000
    x = torch.rand(7, 3, 66, 200)
    with torch.no_grad():
        assert torch.allclose(model(x)[:3], model(x[:3]), atol=1e-5)
        assert torch.allclose(model(x), model.standardized(x) * 2.0 + 1.5)


def test_a_tiny_training_run_is_reproducible_and_evaluates_per_slice(manifest: tuple[pa.Table, Path]) -> None:
    table, lake = manifest
    resolve = lambda rel: lake / rel  # noqa: E731
    train_split = select_split(table, "train", resolve, max_frames_per_drive=32)
    test = select_split(table, "test", resolve, max_frames_per_drive=32)
    params = TrainParams(epochs=1, batch_size=16, workers=0, threads=1)
    runs = [train(train_split, None, params) for _ in range(2)]
    preds = [predict(r.model, test, params.image, workers=0)[0] for r in runs]
    assert np.array_equal(preds[0], preds[1])
    # What is kept is the weights' moving average: it shadows training (the same losses) but is another model.
    raw = train(train_split, None, replace(params, ema_decay=0.0))
    assert [h.train_loss for h in raw.history] == [h.train_loss for h in runs[0].history]
    assert not np.array_equal(predict(raw.model, test, params.image, workers=0)[0], preds[0])
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # else deterministic mode raises on a GPU's first matmul
    report = evaluate(preds[0], test, runs[0].target_mean)
    assert report["markets"]["de"]["frames"] == test.frames == 32
    assert {s["tag"] for s in report["slices"]} == {"road_type", "time_of_day", "weather", "manoeuvre"}
    assert report["markets"]["de"]["baseline_mae"] == pytest.approx(
        float(np.mean(np.abs(test.targets() - train_split.targets().mean()))), rel=1e-5
    )


def test_stats_against_hand_computed_values() -> None:
    s = _stats(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0]), baseline=0.0)
    assert s["mae"] == pytest.approx(4 / 3) and s["rmse"] == pytest.approx(np.sqrt(10 / 3))
    assert s["baseline_mae"] == 1.0 and s["mae_ratio"] == pytest.approx(4 / 3)


def test_a_job_file_never_carries_the_tracking_stores_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """job.json lives in the lake: a URI with credentials stays out, and the rank reads it from its environment."""
    from mlflow.tracking import MlflowClient

    from ad_core.train import worker
    from ad_core.train.loop import EpochStats

    secret = "postgresql+psycopg2://dagster:s3cret@db:5432/mlflow?sslmode=require"
    local = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert worker.job_tracking_uri(secret) is None
    assert worker.job_tracking_uri(local) == local
    job = worker.TrainJob(
        train=[],
        val=[],
        params=TrainParams(),
        target_mean=0.0,
        target_scale=1.0,
        output_uri=str(tmp_path),
        mlflow_tracking_uri=worker.job_tracking_uri(secret),
        mlflow_run_id="r1",
    )
    assert "s3cret" not in job.to_json() and "mlflow_tracking_uri" in job.to_json()
    monkeypatch.delenv(worker.TRACKING_URI_ENV, raising=False)
    assert worker._mlflow_logger(job) is None  # no URI anywhere: no MLflow logging, rather than a wrong store
    # The rank's environment names the store (the secret in a pod; a real SQLite store here): epochs land there.
    client = MlflowClient(tracking_uri=local)
    run = client.create_run(client.create_experiment("ranks", artifact_location=(tmp_path / "a").as_uri()))
    monkeypatch.setenv(worker.TRACKING_URI_ENV, local)
    log = worker._mlflow_logger(replace(job, mlflow_run_id=run.info.run_id))
    assert log is not None
    log(EpochStats(epoch=0, train_loss=0.25, train_frames=10, train_seconds=2.0, val_mae=1.5, learning_rate=1e-3))
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics == {"train_loss": 0.25, "train_frames_per_s": 5.0, "val_mae": 1.5}


def test_the_training_scale_is_set_by_the_road_not_by_a_few_junction_turns() -> None:
    from ad_core.train.loop import robust_scale

    road = np.random.default_rng(0).normal(0.0, 2.0, 1000)  # deg
    with_turns = np.r_[road, np.full(30, 120.0)]  # a junction turn: 3 % of the frames
    # The turn still moves the mean (0 -> 3.5 deg), so the road's p90 |deviation| grows 3.3 -> 6.2 deg; the std
    # would be 20 deg, a scale at which the road's steering is lost in the loss.
    assert 3.0 < robust_scale(road) < 3.6 and 5.5 < robust_scale(with_turns) < 7.0 < with_turns.std() / 2
    assert robust_scale(np.zeros(100)) == 1.0 and robust_scale(np.zeros(0)) == 1.0  # never divides by ~0
