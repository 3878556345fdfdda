"""One training rank: ``python -m ad_core.train.worker JOB_URI`` (under torchrun, in a pod, or called in-process).

The job (``job.json``, local path or ``s3://``) names the train/val shards, the params, the target's train mean
and scale and where rank 0 writes ``model.pt`` (state dict) and ``result.json`` (history, best epoch). With
``RANK``/``WORLD_SIZE`` in the environment (torchrun sets them) the process group is initialised (gloo on CPU,
NCCL on GPU) and :func:`ad_core.train.loop.fit` trains data-parallel; each rank streams its own part of the
shards. Rank 0 logs per-epoch metrics to the MLflow run named in the job, and, when launched through Dagster
Pipes (``DAGSTER_PIPES_CONTEXT`` set), reports each epoch to the Dagster run. A failing rank records its error
for torchrun (``@record``: the launcher names the first failed rank) and, in a Kubernetes pod, in the
container's termination message.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from ad_core.train.data import ImageSpec
from ad_core.train.loop import EpochStats, TrainParams, TrainResult, fit
from ad_core.train.shards import ShardRef, ShardStream, join_uri, read_uri, write_uri

MODEL_FILE = "model.pt"
RESULT_FILE = "result.json"
TRACKING_URI_ENV = "AD_MLFLOW_TRACKING_URI"
TERMINATION_LOG = Path("/dev/termination-log")


@dataclass
class TrainJob:
    train: list[ShardRef]
    val: list[ShardRef]
    params: TrainParams
    target_mean: float
    target_scale: float
    output_uri: str
    # None when the store's URI carries a password: job.json lives in the lake, so ranks then read the URI
    # from their own environment (TRACKING_URI_ENV, the Kubernetes secret). See job_tracking_uri.
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    train_frames: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["params"]["image"] = asdict(self.params.image)
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        d = json.loads(text)
        params = d.pop("params")
        params = TrainParams(**{**params, "image": ImageSpec(**params["image"])})
        return cls(
            train=[ShardRef(**s) for s in d.pop("train")],
            val=[ShardRef(**s) for s in d.pop("val")],
            params=params,
            **d,
        )


def job_tracking_uri(uri: str | None) -> str | None:
    """What a job file may say about the MLflow store: its URI unless that holds credentials."""
    return None if uri and urlsplit(uri).password else uri


def _mlflow_logger(job: TrainJob) -> Callable[[EpochStats], None] | None:
    uri = job.mlflow_tracking_uri or os.environ.get(TRACKING_URI_ENV)
    if not (uri and job.mlflow_run_id):
        return None
    from mlflow.tracking import MlflowClient

    client, run_id = MlflowClient(tracking_uri=uri), job.mlflow_run_id

    def log(s: EpochStats) -> None:
        metrics = {"train_loss": s.train_loss, "train_frames_per_s": s.train_frames_per_s}
        if s.val_mae is not None:
            metrics["val_mae"] = s.val_mae
        for k, v in metrics.items():
            client.log_metric(run_id, k, v, step=s.epoch)

    return log


def train_job(job: TrainJob, on_epoch: Callable[[EpochStats], None] | None = None) -> TrainResult:
    """Train this rank's part of ``job``; rank 0 logs to MLflow and writes the model and result."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    p = job.params
    train_set = ShardStream(
        job.train,
        shuffle=True,
        flip=p.flip,
        seed=p.seed,
        shuffle_buffer=p.shuffle_buffer,
        rank=rank,
        world=world,
        pad=True,
    )
    val_set = ShardStream(job.val, rank=rank, world=world) if job.val else None
    log = _mlflow_logger(job) if rank == 0 else None

    def epoch_done(s: EpochStats) -> None:
        for callback in (log, on_epoch):
            if callback is not None:
                callback(s)

    result = fit(train_set, val_set, p, job.target_mean, job.target_scale, job.train_frames, epoch_done)
    if rank == 0:
        buf = io.BytesIO()
        torch.save(result.model.state_dict(), buf)
        write_uri(join_uri(job.output_uri, MODEL_FILE), buf.getvalue())
        summary = {
            "best_epoch": result.best_epoch,
            "history": [vars(h) for h in result.history],
            "ranks": world,
            "target_mean": result.target_mean,
            "target_scale": result.target_scale,
            "train_frames": result.train_frames,
        }
        write_uri(join_uri(job.output_uri, RESULT_FILE), json.dumps(summary, indent=2, sort_keys=True).encode())
    return result


@contextlib.contextmanager
def _pipes(rank: int) -> Iterator[Callable[[EpochStats], None] | None]:
    """Rank 0 reports to the Dagster run when launched through Pipes; the other ranks stay quiet."""
    if rank != 0 or "DAGSTER_PIPES_CONTEXT" not in os.environ:
        yield None
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:

        def report(s: EpochStats) -> None:
            pipes.log.info(
                f"epoch {s.epoch}: loss {s.train_loss:.4f}, {s.train_frames_per_s:.0f} frames/s per rank"
                + (f", val MAE {s.val_mae:.3f}" if s.val_mae is not None else "")
            )
            pipes.report_custom_message({"epoch": s.epoch, **{k: v for k, v in vars(s).items() if k != "epoch"}})

        yield report


@record
def main(argv: list[str] | None = None) -> None:
    (job_uri,) = argv if argv is not None else sys.argv[1:]
    job = TrainJob.from_json(read_uri(job_uri).decode())
    distributed = "WORLD_SIZE" in os.environ
    if distributed and job.params.device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        job.params = replace(job.params, device=f"cuda:{local_rank}")
    try:
        if distributed:
            dist.init_process_group("nccl" if job.params.device.startswith("cuda") else "gloo")
        with _pipes(dist.get_rank() if distributed else 0) as report:
            train_job(job, report)
    except BaseException:
        if TERMINATION_LOG.exists():  # mounted by Kubernetes: shown as the pod's termination message
            with contextlib.suppress(OSError):
                TERMINATION_LOG.write_text(traceback.format_exc()[-4000:])
        raise
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
