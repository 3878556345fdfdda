"""Stage 5, trained models: a steering CNN per market trained on the market's latest curated splits, tracked in
MLflow, registered with the split manifest sha256 and code version, and gated (docs/models.md).

The curated splits asset (``<market>/curated_splits``) records ``manifest_path`` (lake-relative),
``manifest_sha256`` and ``split_version`` in its materialization metadata; training reads the manifest named
by the latest one and refuses a manifest whose bytes no longer match that sha256.
"""

import contextlib
import io
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pyarrow as pa
import torch
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from ad_assets.stage_asset import stage_asset_args
from ad_common.hashing import sha256_file
from ad_common.lake_layout import search_best_params_path, train_run_dir
from ad_common.stages import CURATED_SPLITS, MODEL_SEARCH, TRAINED_MODEL, TRAINING_SHARDS
from ad_core.train import registry
from ad_core.train.data import ImageSpec, SplitFrames, read_manifest, select_split
from ad_core.train.loop import TrainParams, evaluate_frames, predict, predict_dataset, robust_scale, train
from ad_core.train.mlflow_io import load_model, log_model
from ad_core.train.model import PilotNet
from ad_core.train.shards import ShardSplit, ShardStream, join_uri, load_split, read_uri, write_uri
from ad_core.train.version import code_version, version_tags
from ad_core.train.worker import MODEL_FILE, RESULT_FILE, TrainJob, job_tracking_uri, train_job
from ad_resources.lake import Lake
from ad_resources.tracking import MlflowTracking
from ad_resources.training import TrainingLauncher

CHECK_BASELINE = "test_mae_vs_baseline"
CHECK_REGRESSION = "no_regression_vs_approved"
CHECK_SLICES = "odd_slices_beat_baseline"
SEARCHED_PARAMS = ("learning_rate", "weight_decay", "dropout", "batch_size")


# The trainer's defaults (ad_core.train.loop.TrainParams): the config shows and overrides them, never restates
# them, so a launched training, a model search's trials and the benches train alike.
_TRAINER = TrainParams()


class TrainSettings(Config):
    epochs: int = Field(default=_TRAINER.epochs, description="Passes over the train split.")
    batch_size: int = _TRAINER.batch_size
    learning_rate: float = _TRAINER.learning_rate
    weight_decay: float = _TRAINER.weight_decay
    dropout: float = _TRAINER.dropout
    seed: int = _TRAINER.seed
    workers: int = Field(
        default=_TRAINER.workers, description="DataLoader processes decoding JPEGs (0: in the trainer)."
    )
    threads: int = Field(
        default=_TRAINER.threads,
        description="torch threads of each rank (part of determinism; ranks x threads <= cores).",
    )
    flip: bool = Field(default=_TRAINER.flip, description="Mirror half the frames, steering negated.")
    image_height: int = _TRAINER.image.height
    image_width: int = _TRAINER.image.width
    crop_top: float = _TRAINER.image.crop_top
    ranks: int = Field(
        default=1,
        description="Data-parallel ranks (torch.distributed): 1 trains in the step's process; N launches N ranks "
        "through the training launcher resource (local torchrun, or pods on the GPU pool). batch_size is global.",
    )
    shuffle_buffer: int = Field(
        default=_TRAINER.shuffle_buffer, description="Samples each loader worker mixes (bounded memory)."
    )
    device: str = Field(default=_TRAINER.device, description="cpu, or cuda (NCCL between ranks; not run on a GPU yet).")
    ema_decay: float = Field(
        default=_TRAINER.ema_decay,
        description="Validate, keep and register an exponential moving average of the weights (per step; 0: the raw "
        "weights).",
    )
    use_search_params: bool = Field(
        default=True, description="Take learning rate, weight decay, dropout, batch size from the latest model search."
    )
    max_mae_ratio: float = Field(default=0.5, description="Gate: test MAE <= this x the baseline's, every market.")
    regression_tolerance: float = Field(
        default=0.0, description="Gate: test MAE < (1 + this) x the approved version's on the same frames."
    )
    slice_max_mae_ratio: float = Field(default=1.0, description="Gate: every ODD slice's MAE <= this x baseline.")
    min_baseline_mae_deg: float = Field(
        default=0.5,
        description="A test split whose train-mean baseline MAE is below this (deg) has too little steering for a "
        "ratio to mean anything: its market fails the baseline check with that reason, and such a slice is "
        "reported, not gated.",
    )
    min_slice_frames: int = Field(default=50, description="Slices with fewer test frames are reported, not gated.")
    also_train_on: list[str] = Field(
        default=[],
        description="Other markets whose latest curated splits join this model's train/val splits; their test "
        "splits are evaluated and gated too (every market must pass). Empty: this market only.",
    )

    def params(self) -> TrainParams:
        return TrainParams(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            dropout=self.dropout,
            seed=self.seed,
            workers=self.workers,
            threads=self.threads,
            flip=self.flip,
            shuffle_buffer=self.shuffle_buffer,
            image=ImageSpec(self.image_height, self.image_width, self.crop_top),
            device=self.device,
            ema_decay=self.ema_decay,
        )


def latest_splits(context: AssetExecutionContext, market: str) -> dict[str, str]:
    """manifest_path / manifest_sha256 / split_version of the latest ``<market>/curated_splits``."""
    key = CURATED_SPLITS.key(market)
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise Failure(
            f"{key.to_user_string()} has never been materialized: there is no split manifest to train on "
            f"(materialize {key.to_user_string()} first)"
        )
    metadata = event.asset_materialization.metadata
    missing = [k for k in ("manifest_path", "manifest_sha256", "split_version") if k not in metadata]
    if missing:
        raise Failure(f"the latest {key.to_user_string()} materialization lacks {', '.join(missing)} in its metadata")
    return {k: str(metadata[k].value) for k in ("manifest_path", "manifest_sha256", "split_version")}


def latest_shards(context: AssetExecutionContext, market: str) -> dict[str, str]:
    """index_path / manifest_sha256 / manifest_path / split_version / image_spec of the latest
    ``<market>/training_shards``; refused when the market's curated splits moved on since (stale shards)."""
    key = TRAINING_SHARDS.key(market)
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise Failure(
            f"{key.to_user_string()} has never been materialized: there are no shards to train on "
            f"(materialize {key.to_user_string()} first)"
        )
    metadata = {k: str(v.value) for k, v in event.asset_materialization.metadata.items()}
    splits = latest_splits(context, market)
    if metadata.get("manifest_sha256") != splits["manifest_sha256"]:
        raise Failure(
            f"{key.to_user_string()} holds manifest {metadata.get('manifest_sha256', '?')[:12]} but the latest "
            f"{CURATED_SPLITS.key(market).to_user_string()} is {splits['manifest_sha256'][:12]}: materialize "
            f"{key.to_user_string()} again"
        )
    return metadata


@contextlib.contextmanager
def manifest_files(lake: Lake, splits: dict[str, str]) -> Iterator[tuple[pa.Table, Callable[[str], Path]]]:
    """The manifest (checked against its recorded sha256) and a resolver of lake-relative paths to local files;
    remote lakes download each needed folder once (a drive's synced and decoded folders)."""
    with lake.file_resolver() as resolve:
        path = resolve(splits["manifest_path"])
        if not path.is_file():
            raise Failure(f"split manifest {splits['manifest_path']} is not in the lake")
        sha = sha256_file(path)
        if sha != splits["manifest_sha256"]:
            raise Failure(
                f"split manifest {splits['manifest_path']} changed since curated_splits recorded it "
                f"(sha256 {sha[:12]} != {splits['manifest_sha256'][:12]}): re-materialize curated_splits"
            )
        yield read_manifest(path), resolve


def _market_table(report: dict[str, Any], approved: dict[str, float] | None) -> str:
    rows = [
        f"| {m} | {s['frames']} | {s['mae']:.3f} | {s['rmse']:.3f} | {s['baseline_mae']:.3f} | {s['mae_ratio']:.2f} | "
        f"{'' if approved is None or m not in approved else f'{approved[m]:.3f}'} |"
        for m, s in report["markets"].items()
    ]
    return (
        "| market | test frames | MAE deg | RMSE deg | baseline MAE | ratio | approved MAE |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )


def _slice_table(report: dict[str, Any]) -> str:
    rows = [
        f"| {s['market']} | {s['tag']}={s['value']} | {s['frames']} | {s['mae']:.3f} | {s['baseline_mae']:.3f} | "
        f"{s['mae_ratio']:.2f} |"
        for s in report["slices"]
    ]
    return "| market | slice | frames | MAE | baseline MAE | ratio |\n|---|---|---|---|---|---|\n" + "\n".join(rows)


def gate(
    report: dict[str, Any], approved: dict[str, float] | None, settings: TrainSettings
) -> dict[str, tuple[bool, str, dict[str, Any]]]:
    """The three automated gate checks: name -> (passed, description, metadata)."""
    markets = report["markets"]
    flat = settings.min_baseline_mae_deg
    # A near-zero baseline (a straight test drive) turns any ratio into noise: fail, and say why.
    uninformative = {m: round(s["baseline_mae"], 3) for m, s in markets.items() if s["baseline_mae"] < flat}
    worse = {
        m: round(s["mae_ratio"], 3)
        for m, s in markets.items()
        if m not in uninformative and not s["mae_ratio"] <= settings.max_mae_ratio
    }
    problems = ([f"not in {sorted(worse)}"] if worse else []) + (
        [
            f"too little steering to judge in {sorted(uninformative)} (baseline MAE "
            + ", ".join(f"{m} {v:g}" for m, v in sorted(uninformative.items()))
            + f" deg < {flat:g}): curate a test split with curves"
        ]
        if uninformative
        else []
    )
    out = {
        CHECK_BASELINE: (
            not problems,
            f"test MAE <= {settings.max_mae_ratio:g} x train-mean baseline in every market"
            + "".join(f"; {p}" for p in problems),
            {
                "mae_ratio": {m: round(s["mae_ratio"], 4) for m, s in markets.items()},
                "baseline_mae": {m: round(s["baseline_mae"], 4) for m, s in markets.items()},
                "too_little_steering": uninformative,
            },
        )
    }
    if approved is None:
        out[CHECK_REGRESSION] = (True, "no approved version yet: nothing to regress against", {})
    else:
        limit = 1.0 + settings.regression_tolerance
        regressed = {
            m: {"mae": round(s["mae"], 4), "approved_mae": round(approved[m], 4)}
            for m, s in markets.items()
            if m in approved and not s["mae"] < limit * approved[m]
        }
        out[CHECK_REGRESSION] = (
            not regressed,
            "beats the approved version in every market on the same test frames"
            if not regressed
            else f"does not beat the approved version in {sorted(regressed)}",
            {"regressed": regressed, "approved_mae": approved},
        )
    gated = [s for s in report["slices"] if s["frames"] >= settings.min_slice_frames and s["baseline_mae"] >= flat]
    bad = [
        f"{s['market']}:{s['tag']}={s['value']} ({s['mae_ratio']:.2f})"
        for s in gated
        if not s["mae_ratio"] <= settings.slice_max_mae_ratio
    ]
    out[CHECK_SLICES] = (
        not bad,
        f"every ODD slice with >= {settings.min_slice_frames} test frames and a baseline MAE >= {flat:g} deg has "
        f"MAE <= {settings.slice_max_mae_ratio:g} x baseline" + (f"; failing: {', '.join(bad)}" if bad else ""),
        {"failing_slices": bad, "slices_gated": len(gated)},
    )
    return out


def _approved_mae(
    tracking: MlflowTracking, name: str, test: ShardSplit, settings: TrainSettings
) -> tuple[dict[str, float] | None, str | None]:
    """Per-market test MAE of the current ``approved`` version, re-evaluated on *these* test frames."""
    client = tracking.client()
    approved = registry.alias_version(client, name, registry.APPROVED)
    if approved is None:
        return None, None
    tracking.activate()
    model = load_model(f"models:/{name}@{registry.APPROVED}")
    pred, _ = predict_dataset(model, ShardStream(test.shards), test.size, workers=settings.workers)
    report = evaluate_frames(pred, test.frames, test.targets(), 0.0)
    return {m: s["mae"] for m, s in report["markets"].items()}, str(approved.version)


def _search_params(lake: Lake, market: str, params: TrainParams) -> tuple[TrainParams, dict[str, Any] | None]:
    best = lake.read_json(search_best_params_path(market))
    if not best:
        return params, None
    chosen = {k: best["params"][k] for k in SEARCHED_PARAMS if k in best.get("params", {})}
    return replace(params, **chosen), best


def _log_epoch(context: AssetExecutionContext) -> Callable[[Any], None]:
    def log(s: Any) -> None:
        val = f", val MAE {s.val_mae:.3f}" if s.val_mae is not None else ""
        context.log.info(f"epoch {s.epoch}: loss {s.train_loss:.4f}, {s.train_frames_per_s:.0f} frames/s{val}")

    return log


def train_market(
    context: AssetExecutionContext,
    market: str,
    settings: TrainSettings,
    lake: Lake,
    tracking: MlflowTracking,
    launcher: TrainingLauncher,
) -> MaterializeResult:
    markets = [market, *(m for m in settings.also_train_on if m != market)]
    all_shards = {m: latest_shards(context, m) for m in markets}
    shards = all_shards[market]
    name = registry.model_name(market)
    params = settings.params()
    search = None
    if settings.use_search_params:
        params, search = _search_params(lake, market, params)
    for m, s in all_shards.items():
        if ImageSpec.from_json(s["image_spec"]) != params.image:
            raise Failure(
                f"{m}/training_shards hold {s['image_spec']} frames but the model takes {params.image.to_json()}: "
                f"materialize {m}/training_shards with that image spec"
            )
    index_uris = [lake.uri(all_shards[m]["index_path"]) for m in markets]
    train_set, val_set, test_set = (load_split(index_uris, split) for split in ("train", "val", "test"))
    if train_set.size == 0:
        raise Failure(f"no train frames in the shards of {markets} (all excluded, or no steering synced)")
    no_test = [m for m in markets if m not in set(test_set.frames.column("market").to_pylist())]
    if no_test:
        raise Failure(f"no test frames to evaluate on in {', '.join(no_test)} (training shards of {markets})")
    target_column = str((lake.read_json(shards["index_path"]) or {}).get("target_column", ""))
    tags = {
        **version_tags(),
        "manifest_sha256": shards["manifest_sha256"],
        "manifest_path": shards["manifest_path"],
        "split_version": shards["split_version"],
        "shards_index": shards["index_path"],
        **{f"manifest_sha256.{m}": s["manifest_sha256"] for m, s in all_shards.items() if m != market},
        "markets": ",".join(markets),
        "dagster_run_id": context.run.run_id,
        "dagster_asset_key": context.asset_key.to_user_string(),
        "dagster_partition": context.partition_key if context.has_partition_key else "",
        "target_column": target_column,
        "image_spec": params.image.to_json(),
    }
    targets = train_set.targets()
    run_dir = train_run_dir(market, context.run.run_id)
    with tracking.run(f"{market}-trained_model-{context.run.run_id[:8]}", tags=tags) as run:
        mlflow.log_params(
            {
                **params.to_dict(),
                "ranks": settings.ranks,
                "train_frames": train_set.size,
                "val_frames": val_set.size,
                "test_frames": test_set.size,
                "train_shards": len(train_set.shards),
                "searched_params": bool(search),
            }
        )
        job = TrainJob(
            train=train_set.shards,
            val=val_set.shards,
            params=params,
            target_mean=float(targets.mean()),
            target_scale=robust_scale(targets),
            output_uri=lake.uri(run_dir),
            mlflow_tracking_uri=job_tracking_uri(tracking.tracking_uri),
            mlflow_run_id=run.info.run_id,
            train_frames=train_set.size,
        )
        job_uri = lake.uri(f"{run_dir}/job.json")
        write_uri(job_uri, job.to_json().encode())
        if settings.ranks == 1 and launcher.single_rank_in_process:
            train_job(job, _log_epoch(context))
        else:
            launcher.launch(context, job_uri, settings.ranks)
        summary = json.loads(read_uri(join_uri(job.output_uri, RESULT_FILE)))
        model = PilotNet(params.image.height, params.image.width, summary["target_mean"], summary["target_scale"])
        model.load_state_dict(torch.load(io.BytesIO(read_uri(join_uri(job.output_uri, MODEL_FILE))), weights_only=True))
        model.eval()
        pred, eval_s = predict_dataset(model, ShardStream(test_set.shards), test_set.size, workers=params.workers)
        report = evaluate_frames(pred, test_set.frames, test_set.targets(), summary["target_mean"])
        metrics = {
            "test_mae": report["overall"]["mae"],
            "test_rmse": report["overall"]["rmse"],
            "test_baseline_mae": report["overall"]["baseline_mae"],
            "eval_frames_per_s": test_set.size / eval_s,
            "best_epoch": summary["best_epoch"],
        }
        for m, s in report["markets"].items():
            metrics.update(
                {
                    f"test_mae_{m}": s["mae"],
                    f"test_rmse_{m}": s["rmse"],
                    f"test_baseline_mae_{m}": s["baseline_mae"],
                    f"test_mae_ratio_{m}": s["mae_ratio"],
                }
            )
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report, "evaluation.json")
        mlflow.log_dict(summary["history"], "history.json")
        if search:
            mlflow.log_dict(search, "search_best_params.json")
        example = np.stack(
            [image.float().div(255).numpy() for image, _y, _i in itertools.islice(ShardStream(test_set.shards), 2)]
        )
        version = log_model(model, params.image, example, name)
        assert version is not None
        client = tracking.client()
        for k, v in {**tags, "mlflow_run_id": run.info.run_id}.items():
            client.set_model_version_tag(name, version, k, v)
        approved_mae, approved_version = _approved_mae(tracking, name, test_set, settings)
        checks = gate(report, approved_mae, settings)
        candidate = registry.record_gate(client, name, version, {k: v[0] for k, v in checks.items()})
        mlflow.set_tags({"registered_model": name, "registered_version": version, "candidate": str(candidate)})
    context.log.info(
        f"{name} version {version}: test MAE {report['overall']['mae']:.3f} deg vs baseline "
        f"{report['overall']['baseline_mae']:.3f}; "
        + ("candidate, waiting for approval" if candidate else "not a candidate (gate failed)")
    )
    return MaterializeResult(
        metadata={
            "registered_model": name,
            "version": version,
            "candidate": candidate,
            "mlflow_run_id": run.info.run_id,
            "manifest_sha256": shards["manifest_sha256"],
            "split_version": shards["split_version"],
            "shards_index": shards["index_path"],
            "ranks": settings.ranks,
            "code_version": code_version(),
            "approved_version": approved_version or "",
            "test_mae": report["overall"]["mae"],
            "test_baseline_mae": report["overall"]["baseline_mae"],
            "train_frames": train_set.size,
            "test_frames": test_set.size,
            "trained_on_markets": MetadataValue.json(markets),
            "markets": MetadataValue.md(_market_table(report, approved_mae)),
            "odd_slices": MetadataValue.md(_slice_table(report)),
            "history": MetadataValue.json(summary["history"]),
            "params": MetadataValue.json(params.to_dict()),
            "search": MetadataValue.json(search or {}),
            "approve_with": f"python -m ad_platform approve {name} {version} --by NAME --note TEXT",
        },
        check_results=[
            AssetCheckResult(
                check_name=check,
                passed=passed,
                severity=AssetCheckSeverity.ERROR,
                description=description,
                metadata={
                    "model_version": version,
                    **{k: MetadataValue.json(v) if isinstance(v, dict | list) else v for k, v in meta.items()},
                },
            )
            for check, (passed, description, meta) in checks.items()
        ],
    )


class SearchSettings(Config):
    n_trials: int = Field(default=8, description="Optuna trials (each a nested MLflow run).")
    epochs: int = Field(default=2, description="Epochs per trial.")
    max_frames_per_drive: int | None = Field(default=300, description="Frames per drive per trial (None: all).")
    seed: int = _TRAINER.seed
    workers: int = _TRAINER.workers
    threads: int = _TRAINER.threads


def _holdout(split: SplitFrames, share: float = 0.2) -> tuple[SplitFrames, SplitFrames]:
    """Without a val split: the last ``share`` of every train drive (time-contiguous) validates the trials."""
    fit, hold = [], []
    for d in split.drives:
        cut = int(len(d.frame_index) * (1 - share))
        fit.append(replace(d, frame_index=d.frame_index[:cut], rows=d.rows[:cut], target=d.target[:cut]))
        hold.append(replace(d, frame_index=d.frame_index[cut:], rows=d.rows[cut:], target=d.target[cut:]))
    return replace(split, drives=fit), replace(split, split="holdout", drives=hold)


def search_market(
    context: AssetExecutionContext, market: str, settings: SearchSettings, lake: Lake, tracking: MlflowTracking
) -> MaterializeResult:
    splits = latest_splits(context, market)
    with manifest_files(lake, splits) as (manifest, resolve):
        kw = {"markets": [market], "max_frames_per_drive": settings.max_frames_per_drive}
        fit = select_split(manifest, "train", resolve, **kw)
        val = select_split(manifest, "val", resolve, **kw)
        validation = "val split"
        if val.frames == 0:
            fit, val = _holdout(fit)
            validation = "last 20 % of every train drive (no val split)"
        val_targets = np.zeros(0, np.float32)
        if val.frames:
            val_targets = np.concatenate([d.target for d in val.drives])
        tags = {
            **version_tags(),
            "manifest_sha256": splits["manifest_sha256"],
            "markets": market,
            "dagster_run_id": context.run.run_id,
            "validation": validation,
        }
        trials: list[dict[str, Any]] = []
        with tracking.run(f"{market}-model_search-{context.run.run_id[:8]}", tags=tags) as parent:
            mlflow.log_params(
                {
                    "n_trials": settings.n_trials,
                    "epochs": settings.epochs,
                    "max_frames_per_drive": settings.max_frames_per_drive,
                    "seed": settings.seed,
                }
            )

            def objective(trial: optuna.Trial) -> float:
                chosen = {
                    "learning_rate": trial.suggest_float("learning_rate", 2e-4, 3e-3, log=True),
                    "weight_decay": trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True),
                    "dropout": trial.suggest_float("dropout", 0.0, 0.3),
                    "batch_size": trial.suggest_categorical("batch_size", [32, 64]),
                }
                params = TrainParams(
                    epochs=settings.epochs,
                    seed=settings.seed,
                    workers=settings.workers,
                    threads=settings.threads,
                    **chosen,
                )
                with tracking.run(f"trial-{trial.number}", tags={"optuna_trial": str(trial.number)}, nested=True):
                    mlflow.log_params(chosen)
                    result = train(fit, None, params)
                    pred = _predict_drives(result.model, val, params.image, settings.workers)
                    mae = float(np.mean(np.abs(pred - val_targets)))
                    mlflow.log_metric("val_mae", mae)
                trials.append({"trial": trial.number, **chosen, "val_mae": mae})
                context.log.info(f"trial {trial.number}: val MAE {mae:.4f} with {chosen}")
                return mae

            study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=settings.seed))
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study.optimize(objective, n_trials=settings.n_trials)
            best = {
                "params": study.best_params,
                "val_mae": study.best_value,
                "trial": study.best_trial.number,
                "mlflow_run_id": parent.info.run_id,
                "manifest_sha256": splits["manifest_sha256"],
                "validation": validation,
            }
            mlflow.log_params({f"best_{k}": v for k, v in study.best_params.items()})
            mlflow.log_metric("best_val_mae", study.best_value)
            mlflow.log_dict(trials, "trials.json")
    lake.write_json(search_best_params_path(market), best)
    table = "| trial | lr | weight decay | dropout | batch | val MAE |\n|---|---|---|---|---|---|\n" + "\n".join(
        f"| {t['trial']} | {t['learning_rate']:.2e} | {t['weight_decay']:.1e} | {t['dropout']:.2f} | "
        f"{t['batch_size']} | {t['val_mae']:.4f} |"
        for t in trials
    )
    return MaterializeResult(
        metadata={
            "best_params": MetadataValue.json(study.best_params),
            "best_val_mae": study.best_value,
            "best_trial": study.best_trial.number,
            "trials": MetadataValue.md(table),
            "mlflow_parent_run_id": parent.info.run_id,
            "validation": validation,
            "manifest_sha256": splits["manifest_sha256"],
        }
    )


def _predict_drives(model: Any, split: SplitFrames, spec: ImageSpec, workers: int) -> np.ndarray:
    """Predictions in drive order (the holdout's rows are not a frame table of their own)."""
    flat = replace(split, table=pa.table({"i": np.arange(sum(len(d.rows) for d in split.drives))}))
    drives, start = [], 0
    for d in split.drives:
        drives.append(replace(d, rows=np.arange(start, start + len(d.rows))))
        start += len(d.rows)
    pred, _ = predict(model, replace(flat, drives=drives), spec, workers=workers)
    return pred


def definitions(market: str) -> Definitions:
    key = TRAINED_MODEL.key(market)

    @asset(
        **stage_asset_args(TRAINED_MODEL, market),
        check_specs=[
            AssetCheckSpec(
                CHECK_BASELINE,
                asset=key,
                blocking=True,
                description="Test MAE of steering at most max_mae_ratio (0.5) x the train-mean baseline's, "
                "in every market; a market whose baseline MAE is under min_baseline_mae_deg (0.5 deg: a straight "
                "test split) fails with that reason.",
            ),
            AssetCheckSpec(
                CHECK_REGRESSION,
                asset=key,
                blocking=True,
                description="Beats the registry's approved version in every market, both evaluated on the "
                "same test frames (within regression_tolerance).",
            ),
            AssetCheckSpec(
                CHECK_SLICES,
                asset=key,
                blocking=True,
                description="Every ODD slice (road type, time of day, weather) with enough test frames and "
                "steering (baseline MAE >= min_baseline_mae_deg) beats the baseline (MAE <= slice_max_mae_ratio x "
                "baseline).",
            ),
        ],
        kinds={"pytorch", "mlflow"},
        description=f"The {market.upper()} steering model: a PilotNet-sized CNN trained on the train split of the "
        f"latest {market}/curated_splits manifest, evaluated per market and ODD slice on its test split, logged to "
        "MLflow "
        "and registered with the manifest sha256 and code version. Passing every gate check sets the `candidate` "
        "alias; `approved` is set only by `python -m ad_platform approve` (docs/models.md).",
    )
    def trained_model(
        context: AssetExecutionContext,
        config: TrainSettings,
        lake: Lake,
        mlflow_tracking: MlflowTracking,
        training: TrainingLauncher,
    ) -> MaterializeResult:
        return train_market(context, market, config, lake, mlflow_tracking, training)

    @asset(
        **stage_asset_args(MODEL_SEARCH, market),
        kinds={"optuna", "mlflow"},
        description=f"Hyper-parameter search for the {market.upper()} steering model: n_trials short Optuna (TPE) "
        "trials, each a nested MLflow run under one parent; the best params are written to the lake and taken by "
        f"{market}/trained_model (use_search_params).",
    )
    def model_search(
        context: AssetExecutionContext, config: SearchSettings, lake: Lake, mlflow_tracking: MlflowTracking
    ) -> MaterializeResult:
        return search_market(context, market, config, lake, mlflow_tracking)

    return Definitions(assets=[model_search, trained_model])
