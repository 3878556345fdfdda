"""The stage table: every asset stage of the graph, and where and how big each stage runs on Kubernetes.

Asset stages (:data:`ASSET_STAGES`): name, asset key per market, UI group, pod stage, job, freshness and
tags. Asset keys, groups, op tags, job selections and the alert sensor's monitored keys are all derived
from it, so one stage has one vocabulary. Adding a stage = one row here, one thin asset module in
``ad_assets/`` (exposing ``definitions(market)``), one pure core in ``ad_core/`` and their tests.

Pod sizing per pipeline stage (:data:`STAGE_SPECS`) is the ONE place that says where and how big each
stage runs on Kubernetes.

Every stage maps to a frozen :class:`StageSpec`. Two views are derived from it:

* :func:`k8s_op_tags` -> ``{"dagster-k8s/config": {...}}`` for asset ``op_tags``. The ``k8s_job_executor``
  reads op tags per step (one Kubernetes Job per step), so CPU decode and GPU training of one run land on
  different node pools. Job-level ``dagster-k8s/config`` tags are NOT applied to step pods (dagster-k8s
  ``executor.py``: ``include_run_tags=False``).
* :func:`stage_run_tags` -> run tags for the run queue (``ad-platform/stage``, matched by the Helm
  ``tagConcurrencyLimits``) and the per-run timeout (``dagster/max_runtime``, enforced by run monitoring).
  ``with_pod_config=True`` adds the stage's ``dagster-k8s/config`` so that a run executed in-process (one pod
  per run, the K8sRunLauncher default) gets the stage's pod too.

Sizes assume ~4 GB drives processed with bounded-memory streaming (decode/sync never hold a whole drive).
Pure data, no dagster-k8s import: cheap to import from asset modules; tests validate the output against
dagster-k8s and the Kubernetes 1.31 schema (tests/deploy/test_k8s.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Literal

from dagster import AssetKey

__all__ = [
    "ASSET_STAGES",
    "GPU_RESOURCE",
    "JOBS",
    "K8S_CONFIG_TAG",
    "LANDED_AT_TAG",
    "LATENESS_CHECK",
    "LATENESS_SLO",
    "MARKET_TAG",
    "MAX_RUNTIME_TAG",
    "POOL_LABEL",
    "STAGES",
    "STAGE_SPECS",
    "STAGE_TAG",
    "AssetStage",
    "JobSpec",
    "StageSpec",
    "k8s_config",
    "k8s_op_tags",
    "stage_run_tags",
    "stage_spec",
]

# Node label both pools carry; docs/deploy.md labels the node groups with it.
POOL_LABEL = "ad-platform/pool"
# Run tag (and pod label) naming the stage; the Helm run queue limits concurrency on it.
STAGE_TAG = "ad-platform/stage"
# Asset tag naming the market (filter the UI's asset catalog by it).
MARKET_TAG = "ad-platform/market"
# Run tag of a sensor-requested ingest run: when the drive landed (the start of its lateness clock).
LANDED_AT_TAG = "ad-platform/landed_at_ns"
# Landing -> synced frames, per drive: the one SLO both the synced_frames check and the alert sensor use.
LATENESS_SLO = timedelta(hours=6)
LATENESS_CHECK = "drive_lateness"
# Tag read by dagster-k8s (dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY).
K8S_CONFIG_TAG = "dagster-k8s/config"
# Per-run timeout read by the run-monitoring daemon (dagster._core.storage.tags.MAX_RUNTIME_SECONDS_TAG).
MAX_RUNTIME_TAG = "dagster/max_runtime"
# Extended resource advertised by the NVIDIA device plugin; GPU nodes are tainted with the same key.
GPU_RESOURCE = "nvidia.com/gpu"

# Kubernetes kills a step Job this long after Dagster's own timeout should have fired: a backstop for a
# wedged pod, not the primary timeout (run monitoring marks the run failed and cleans up first).
_K8S_DEADLINE_GRACE_S = 15 * 60

Pool = Literal["cpu", "gpu"]
QAIHUB_SECRET = "ad-platform-qaihub"
# AD_MLFLOW_TRACKING_URI (PostgreSQL, with the password) for the stages that use MLflow: train, compile.
MLFLOW_SECRET = "ad-platform-mlflow"


@dataclass(frozen=True)
class StageSpec:
    """Pod resources of one stage. Quantities use Kubernetes notation ("500m", "2Gi")."""

    name: str
    pool: Pool
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    ephemeral_storage_request: str
    ephemeral_storage_limit: str
    max_runtime_s: int
    gpus: int = 0
    # GPU stages: PyTorch DataLoader workers / TensorRT share tensors via /dev/shm, which is 64 MiB by
    # default in a container. A memory-backed emptyDir counts against memory_limit.
    shm_size: str | None = None
    # Kubernetes service account of the stage's pods (IRSA role, deploy/terraform/modules/identity); None: the
    # run's own (the code server's account, which may read the lake but not write models or engines).
    service_account: str | None = None
    # Kubernetes secrets exposed to the stage's pods as environment variables (envFrom), e.g. a vendor API token;
    # created by deploy/terraform/modules/k8s-addons, their values set outside Terraform (docs/deploy.md).
    env_secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.pool == "gpu") != (self.gpus > 0):
            raise ValueError(f"stage {self.name!r}: GPU pool iff gpus > 0 (pool={self.pool}, gpus={self.gpus})")
        if self.max_runtime_s <= 0:
            raise ValueError(f"stage {self.name!r}: max_runtime_s must be positive")


_SPECS: tuple[StageSpec, ...] = (
    # Registration/validation of a landed drive: reads headers, not payloads.
    StageSpec(
        name="ingest",
        pool="cpu",
        cpu_request="250m",
        cpu_limit="1",
        memory_request="512Mi",
        memory_limit="1Gi",
        ephemeral_storage_request="1Gi",
        ephemeral_storage_limit="2Gi",
        max_runtime_s=30 * 60,
    ),
    # MDF4/MCAP -> Parquet. asammdf needs a seekable local copy of the ~4 GB file (ephemeral storage);
    # decoding streams in chunks, so memory stays bounded well below the file size.
    StageSpec(
        name="decode",
        pool="cpu",
        cpu_request="2",
        cpu_limit="4",
        memory_request="2Gi",
        memory_limit="4Gi",
        ephemeral_storage_request="12Gi",
        ephemeral_storage_limit="24Gi",
        max_runtime_s=2 * 60 * 60,
    ),
    # Time alignment of decoded signals and frames: streaming merge over Parquet row groups.
    StageSpec(
        name="sync",
        pool="cpu",
        cpu_request="2",
        cpu_limit="4",
        memory_request="2Gi",
        memory_limit="4Gi",
        ephemeral_storage_request="8Gi",
        ephemeral_storage_limit="16Gi",
        max_runtime_s=2 * 60 * 60,
    ),
    # Split assignment over the synced index: small tables.
    StageSpec(
        name="curate",
        pool="cpu",
        cpu_request="1",
        cpu_limit="2",
        memory_request="1Gi",
        memory_limit="2Gi",
        ephemeral_storage_request="2Gi",
        ephemeral_storage_limit="4Gi",
        max_runtime_s=60 * 60,
    ),
    StageSpec(
        name="train",
        pool="gpu",
        cpu_request="8",
        cpu_limit="8",
        memory_request="32Gi",
        memory_limit="48Gi",
        ephemeral_storage_request="50Gi",
        ephemeral_storage_limit="100Gi",
        max_runtime_s=12 * 60 * 60,
        gpus=1,
        shm_size="8Gi",
        service_account="ad-platform-train",
        env_secrets=(MLFLOW_SECRET,),  # runs and registers models; the trainer rank pods get it too
    ),
    # ONNX export + TensorRT engine build: must run on the GPU model the engine targets.
    StageSpec(
        name="compile",
        pool="gpu",
        cpu_request="4",
        cpu_limit="8",
        memory_request="8Gi",
        memory_limit="16Gi",
        ephemeral_storage_request="10Gi",
        ephemeral_storage_limit="20Gi",
        max_runtime_s=2 * 60 * 60,
        gpus=1,
        shm_size="2Gi",
        service_account="ad-platform-compile",
        # MLflow: loads the approved version, tags it with the engines; QAIHUB_API_TOKEN for Qualcomm AI Hub.
        env_secrets=(MLFLOW_SECRET, QAIHUB_SECRET),
    ),
    # dbt on DuckDB: one writer, light.
    StageSpec(
        name="catalog",
        pool="cpu",
        cpu_request="500m",
        cpu_limit="2",
        memory_request="1Gi",
        memory_limit="2Gi",
        ephemeral_storage_request="2Gi",
        ephemeral_storage_limit="4Gi",
        max_runtime_s=60 * 60,
    ),
)

STAGE_SPECS: Mapping[str, StageSpec] = MappingProxyType({s.name: s for s in _SPECS})
# Pipeline order.
STAGES: tuple[str, ...] = tuple(s.name for s in _SPECS)


def stage_spec(stage: str) -> StageSpec:
    """The spec of ``stage``; KeyError naming the known stages otherwise (a typo must not fall back)."""
    try:
        return STAGE_SPECS[stage]
    except KeyError:
        raise KeyError(f"unknown stage {stage!r}; known stages: {', '.join(STAGES)}") from None


def k8s_config(stage: str) -> dict[str, Any]:
    """The ``dagster-k8s/config`` value for ``stage`` (camelCase Kubernetes field names, as in manifests).

    Only the keys dagster-k8s allows (``container_config``, ``pod_template_spec_metadata``,
    ``pod_spec_config``, ``job_spec_config``, ...); a fresh dict on every call so callers may mutate it.
    """
    spec = stage_spec(stage)
    requests: dict[str, str] = {
        "cpu": spec.cpu_request,
        "memory": spec.memory_request,
        "ephemeral-storage": spec.ephemeral_storage_request,
    }
    limits: dict[str, str] = {
        "cpu": spec.cpu_limit,
        "memory": spec.memory_limit,
        "ephemeral-storage": spec.ephemeral_storage_limit,
    }
    if spec.gpus:
        # Extended resources cannot be overcommitted: request must equal limit.
        requests[GPU_RESOURCE] = str(spec.gpus)
        limits[GPU_RESOURCE] = str(spec.gpus)

    container: dict[str, Any] = {"resources": {"requests": requests, "limits": limits}}
    if spec.env_secrets:
        container["envFrom"] = [{"secretRef": {"name": name}} for name in spec.env_secrets]
    pod_spec: dict[str, Any] = {"nodeSelector": {POOL_LABEL: spec.pool}}
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    if spec.pool == "gpu":
        # GPU nodes carry the taint nvidia.com/gpu=present:NoSchedule (docs/deploy.md) so CPU work never
        # lands there; only GPU stages tolerate it.
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if spec.shm_size:
        pod_spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}]
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]

    return {
        "container_config": container,
        "pod_spec_config": pod_spec,
        # Labels let `kubectl get pods -l ad-platform/stage=train` and cost reports slice by stage.
        "pod_template_spec_metadata": {"labels": {STAGE_TAG: spec.name, POOL_LABEL: spec.pool}},
        "job_spec_config": {"activeDeadlineSeconds": spec.max_runtime_s + _K8S_DEADLINE_GRACE_S},
    }


def k8s_op_tags(stage: str) -> dict[str, Any]:
    """``op_tags`` for the assets of ``stage``: ``{"dagster-k8s/config": {...}}``.

    Dagster JSON-encodes the dict value (``normalize_tags``); dagster-k8s decodes and validates it.
    """
    return {K8S_CONFIG_TAG: k8s_config(stage)}


def stage_run_tags(stage: str, *, with_pod_config: bool = False) -> dict[str, str]:
    """Run tags for a run of ``stage`` (RunRequest/job tags; values are strings as Dagster run tags require).

    ``ad-platform/stage`` feeds the run queue's tag concurrency limits, ``dagster/max_runtime`` the
    run-monitoring timeout. ``with_pod_config`` also sizes the run pod itself: use it for runs that execute
    in-process in the run pod, NOT with the k8s_job_executor (the run pod then only orchestrates and would
    hold an idle GPU).
    """
    spec = stage_spec(stage)
    tags = {STAGE_TAG: spec.name, MAX_RUNTIME_TAG: str(spec.max_runtime_s)}
    if with_pod_config:
        tags[K8S_CONFIG_TAG] = json.dumps(k8s_config(stage), sort_keys=True)
    return tags


@dataclass(frozen=True)
class JobSpec:
    """A job over asset stages: per market (``ingest_de``) or one for all markets (``market_assets``)."""

    name: str
    per_market: bool
    # The pod stage whose run-queue limit and timeout the job's runs get (its longest stage).
    run_stage: str
    description: str
    cron: str | None = None

    def job_name(self, market: str | None = None) -> str:
        if self.per_market:
            if market is None:
                raise ValueError(f"job {self.name!r} is per market: give the market")
            return f"{self.name}_{market}"
        return self.name


INGEST_JOB = JobSpec(
    name="ingest",
    per_market=True,
    run_stage="decode",
    description="Register, validate, decode and sync {market} drives (one run per drive from the landing sensor; "
    "backfills batch drives per run).",
)
MARKET_ASSETS_JOB = JobSpec(
    name="market_assets",
    per_market=False,
    run_stage="curate",
    description="Per-market assets over all synced drives: the signal drift check against each market's reference, "
    "the curated train/val/test splits and their review page.",
    cron="17 * * * *",
)
TRAIN_JOB = JobSpec(
    name="train_models",
    per_market=True,
    run_stage="train",
    description="Train, evaluate and register the {market} steering model on the market's latest curated splits; "
    "blocking gate checks decide the candidate alias, approval is `python -m ad_platform approve`.",
)
SEARCH_JOB = JobSpec(
    name="model_search",
    per_market=True,
    run_stage="train",
    description="Hyper-parameter search (Optuna) for the {market} steering model: N short trials as nested MLflow "
    "runs under one parent; the best trial's params feed the trained_model asset.",
)
ONNX_JOB = JobSpec(
    name="compile_onnx",
    per_market=True,
    run_stage="compile",
    description="Export the {market} steering model's `approved` version to ONNX (onnx-cpu), with its blocking "
    "parity check against the registered PyTorch model on the test split and its CPU latency.",
)
TENSORRT_JOB = JobSpec(
    name="compile_tensorrt",
    per_market=True,
    run_stage="compile",
    description="Build TensorRT engines (FP16, INT8 calibrated on val frames) of the {market} ONNX engine on the GPU "
    "pool; runs only where the tensorrt Python package imports.",
)
QNN_JOB = JobSpec(
    name="compile_qnn",
    per_market=True,
    run_stage="compile",
    description="Compile and profile the {market} ONNX engine for a Snapdragon device on Qualcomm AI Hub "
    "(needs an AI Hub API token).",
)
REVIEW_JOB = JobSpec(
    name="review_projects",
    per_market=False,
    run_stage="curate",
    description="Push each market's curated split to its Label Studio review project (stratified sample and every "
    "flagged frame; re-pushing adds only new frames) and pull the verdicts back (`make review`, docs/review.md).",
)
JOBS: tuple[JobSpec, ...] = (
    INGEST_JOB,
    MARKET_ASSETS_JOB,
    TRAIN_JOB,
    SEARCH_JOB,
    ONNX_JOB,
    TENSORRT_JOB,
    QNN_JOB,
    REVIEW_JOB,
)
# The dbt metadata catalog (group "catalog", ad_assets/metadata_catalog.py): not a stage of the table, its assets
# are the dbt models. Hourly, after the market assets (:17) have written the splits.
METADATA_CATALOG_JOB = JobSpec(
    name="metadata_catalog",
    per_market=False,
    run_stage="catalog",
    description="dbt build of the metadata catalog (dbt_metadata/): models over the lake's catalog records of every "
    "market and their dbt tests as asset checks.",
    cron="47 * * * *",
)


@dataclass(frozen=True)
class AssetStage:
    """One asset per market: ``<market>/<name>``."""

    name: str
    group: str
    pod: str  # pod sizing (STAGE_SPECS) and the ``ad-platform/stage`` tag
    job: JobSpec
    per_drive: bool = True  # partitioned by the market's drives
    upstream: tuple[str, ...] = ()  # asset names in the same market
    alerted: bool = True  # its failed checks become alerts
    freshness: bool = True  # carries the market freshness policy

    def __post_init__(self) -> None:
        stage_spec(self.pod)  # a typo must fail at import, not in a pod

    def key(self, market: str) -> AssetKey:
        return AssetKey([market, self.name])

    def deps(self, market: str) -> list[AssetKey]:
        return [AssetKey([market, name]) for name in self.upstream]

    def tags(self, market: str) -> dict[str, str]:
        return {STAGE_TAG: self.pod, MARKET_TAG: market}


# The market's DBC files and sensor profiles: observable source assets, not stages (nothing materializes them).
VEHICLE_DBC = "vehicle_dbc"
SENSOR_PROFILES = "sensor_profiles"

RAW_DRIVE = AssetStage("raw_drive", group="raw", pod="ingest", job=INGEST_JOB)
DECODED_SIGNALS = AssetStage(
    "decoded_signals", group="decoded", pod="decode", job=INGEST_JOB, upstream=(RAW_DRIVE.name, VEHICLE_DBC)
)
SYNCED_FRAMES = AssetStage(
    "synced_frames", group="synced", pod="sync", job=INGEST_JOB, upstream=(DECODED_SIGNALS.name, SENSOR_PROFILES)
)
SIGNAL_DRIFT = AssetStage(
    "signal_drift",
    group="synced",
    pod="curate",
    job=MARKET_ASSETS_JOB,
    per_drive=False,
    upstream=(SYNCED_FRAMES.name,),
    alerted=False,  # warn-only, per market: shown in the UI, not paged
)
ODD_TAGS_STAGE = AssetStage("odd_tags", group="curated", pod="curate", job=INGEST_JOB, upstream=(SYNCED_FRAMES.name,))
CURATED_SPLITS = AssetStage(
    "curated_splits",
    group="curated",
    pod="curate",
    job=MARKET_ASSETS_JOB,
    per_drive=False,
    upstream=(ODD_TAGS_STAGE.name,),
)
SPLIT_REVIEW = AssetStage(
    "split_review",
    group="curated",
    pod="curate",
    job=MARKET_ASSETS_JOB,
    per_drive=False,
    upstream=(CURATED_SPLITS.name,),
    alerted=False,  # a report for reviewers, no checks of its own
)
# A synced drive as one MCAP file (Foxglove schemas) for frame-by-frame review in a viewer (docs/review.md).
DRIVE_RECORDING = AssetStage(
    "drive_recording",
    group="synced",
    pod="sync",
    job=INGEST_JOB,
    upstream=(SYNCED_FRAMES.name,),
    alerted=False,  # a viewing aid: a failed recording never holds back the training data
)
# Review in Label Studio (docs/review.md): push a split version's frames, pull the verdicts back. The next
# curated split reads the verdicts from the lake (a graph edge back to curated_splits would be a cycle).
REVIEW_PROJECT = AssetStage(
    "review_project",
    group="review",
    pod="curate",
    job=REVIEW_JOB,
    per_drive=False,
    upstream=(CURATED_SPLITS.name,),
    alerted=False,
    freshness=False,  # pushed when a split is to be reviewed, not on a clock
)
REVIEW_VERDICTS_STAGE = AssetStage(
    "review_verdicts",
    group="review",
    pod="curate",
    job=REVIEW_JOB,
    per_drive=False,
    upstream=(REVIEW_PROJECT.name,),
    alerted=False,
    freshness=False,  # materialized by review_verdicts_sensor when reviewers answer
)
# Model-ready WebDataset shards of the latest split version (docs/training-at-scale.md): the split stage's output
# in the form trainers stream; re-written only when the manifest or the image spec changes.
TRAINING_SHARDS = AssetStage(
    "training_shards",
    group="curated",
    pod="curate",
    job=MARKET_ASSETS_JOB,
    per_drive=False,
    upstream=(CURATED_SPLITS.name,),
    alerted=False,  # no checks of its own: a failure fails the market_assets run
)
TRAINED_MODEL = AssetStage(
    "trained_model",
    group="models",
    pod="train",
    job=TRAIN_JOB,
    per_drive=False,
    upstream=(TRAINING_SHARDS.name,),
    alerted=False,  # a model that fails its gate is not an incident: it is simply not a candidate
    freshness=False,  # retrained on demand (new splits), not on a clock
)
MODEL_SEARCH = AssetStage(
    "model_search",
    group="models",
    pod="train",
    job=SEARCH_JOB,
    per_drive=False,
    upstream=(CURATED_SPLITS.name,),
    alerted=False,
    freshness=False,
)
# Stage 6, compiled engines (docs/engines.md): all run in the compile pod (GPU pool, ad-platform-compile
# service account, the one allowed to write engines). ONNX export is the source of the device engines.
ONNX_ENGINE = AssetStage(
    "onnx_engine",
    group="engines",
    pod="compile",
    job=ONNX_JOB,
    per_drive=False,
    upstream=(TRAINED_MODEL.name,),
    alerted=False,
    freshness=False,  # built when a version is approved, not on a clock
)
TENSORRT_ENGINE = AssetStage(
    "tensorrt_engine",
    group="engines",
    pod="compile",
    job=TENSORRT_JOB,
    per_drive=False,
    upstream=(ONNX_ENGINE.name,),
    alerted=False,
    freshness=False,
)
QNN_ENGINE = AssetStage(
    "qnn_engine",
    group="engines",
    pod="compile",
    job=QNN_JOB,
    per_drive=False,
    upstream=(ONNX_ENGINE.name,),
    alerted=False,
    freshness=False,
)
ASSET_STAGES: tuple[AssetStage, ...] = (
    RAW_DRIVE,
    DECODED_SIGNALS,
    SYNCED_FRAMES,
    SIGNAL_DRIFT,
    DRIVE_RECORDING,
    ODD_TAGS_STAGE,
    CURATED_SPLITS,
    SPLIT_REVIEW,
    REVIEW_PROJECT,
    REVIEW_VERDICTS_STAGE,
    TRAINING_SHARDS,
    MODEL_SEARCH,
    TRAINED_MODEL,
    ONNX_ENGINE,
    TENSORRT_ENGINE,
    QNN_ENGINE,
)


def job_asset_keys(job: JobSpec, markets: tuple[str, ...]) -> list[AssetKey]:
    """The assets a job selects: every stage of that job, in ``markets``."""
    return [stage.key(m) for stage in ASSET_STAGES if stage.job is job for m in markets]


def alerted_asset_keys(markets: tuple[str, ...]) -> list[AssetKey]:
    return [stage.key(m) for m in markets for stage in ASSET_STAGES if stage.alerted]
