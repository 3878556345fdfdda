"""Stage 6, compiled engines (docs/engines.md): the market's `approved` steering model exported to ONNX with a
blocking parity check and CPU latency, TensorRT engines built from it (GPU pool, where ``tensorrt`` imports) and
a Qualcomm AI Hub compile + profile for a Snapdragon device. Every engine is named by its sha256 and recorded
in the catalog with its lineage down to the raw files (``engines``, ``engine_lineage``).
"""

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    DataVersion,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    asset,
)
from mlflow.entities.model_registry import ModelVersion
from pydantic import Field

from ad_assets.models import manifest_files
from ad_assets.stage_asset import stage_asset_args
from ad_common.lake_layout import ENGINE_LINEAGE, ENGINES, engine_dir, engine_record_key
from ad_common.stages import ONNX_ENGINE, QNN_ENGINE, TENSORRT_ENGINE
from ad_core.compile import lineage, onnx_export, parity
from ad_core.compile import qaihub as hub
from ad_core.compile import tensorrt_build as trt_build
from ad_core.train import registry
from ad_core.train.data import ImageSpec, select_split
from ad_core.train.version import code_version
from ad_resources.lake import Lake
from ad_resources.tracking import MlflowTracking

ONNX_TARGET = "onnx-cpu"
CHECK_PARITY = "onnx_parity"
CHECK_LINEAGE = "lineage_complete"
CHECK_TRT_PARITY = "tensorrt_parity"
TRT_PRECISIONS = StaticPartitionsDefinition(["fp16", "int8"])


class OnnxSettings(Config):
    parity_batch_size: int = Field(
        default=7, description="Batch size of the parity run: deliberately not the export example's (2)."
    )
    parity_atol: float = Field(default=1e-3, description="Max |torch - onnxruntime| over the test frames, degrees.")
    mae_tolerance: float = Field(default=0.01, description="|MAE(torch) - MAE(onnxruntime)| allowed, degrees.")
    max_frames_per_drive: int | None = Field(default=None, description="Test frames per drive (None: all).")
    latency_runs: int = Field(default=200, description="Timed onnxruntime runs at batch 1 (after 20 warm-up runs).")
    latency_threads: int = Field(default=1, description="onnxruntime intra-op threads for the latency figure.")
    verify_reproducible: bool = Field(default=True, description="Export a second time; different bytes fail.")


def approved_version(tracking: MlflowTracking, name: str) -> ModelVersion:
    mv = registry.alias_version(tracking.client(), name, registry.APPROVED)
    if mv is None:
        raise Failure(
            f"{name} has no `{registry.APPROVED}` version: only approved models are compiled "
            f"(python -m ad_platform approve {name} VERSION --by NAME --note TEXT)"
        )
    return mv


@contextlib.contextmanager
def _model_files(tracking: MlflowTracking, mv: ModelVersion) -> Iterator[Path]:
    tracking.activate()
    with tempfile.TemporaryDirectory(prefix="engine-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=tmp)
        yield Path(local)


def _image_spec(mv: ModelVersion) -> ImageSpec:
    return ImageSpec.from_json(mv.tags["image_spec"]) if "image_spec" in mv.tags else ImageSpec()


def _parity_columns(report: Any) -> dict[str, Any]:
    """The engines record's parity columns from an ONNX or TensorRT parity report."""
    return {
        "parity_passed": report.passed,
        "parity_max_abs_diff": report.max_abs_diff,
        "parity_mean_abs_diff": report.mean_abs_diff,
        "mae_reference": report.mae_reference,
        "mae_engine": report.mae_engine,
    }


def _publish_engine(
    lake: Lake,
    market: str,
    target: str,
    mv: ModelVersion,
    artifact: Path,
    sha: str,
    size: int,
    report: dict[str, Any],
    extra_files: dict[str, str] | None = None,
    **columns: Any,
) -> str:
    """Write the engine, its report (and ``extra_files``) into the engine's lake folder, then its catalog row
    (last, so the catalog never names an engine whose files are missing); returns the engine's lake path."""
    folder = engine_dir(market, target, sha)
    path = f"{folder}/engine{artifact.suffix}"
    files = {**(extra_files or {}), "report.json": json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"}
    with lake.write_dir(folder) as out:
        shutil.copyfile(artifact, out / Path(path).name)
        for name, text in files.items():
            (out / name).write_text(text)
    row = _engine_row(market, target, sha, path, size, mv, report, **columns)
    lake.write_table(
        ENGINES.path(market, engine_record_key(target, sha)), pa.Table.from_pylist([row], schema=ENGINES.schema)
    )
    return path


def _engine_row(
    market: str, target: str, sha: str, path: str, size: int, mv: ModelVersion, report: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    at_ns = time.time_ns()
    row = {name: None for name in ENGINES.schema.names}
    row.update(
        market=market,
        target=target,
        engine_sha256=sha,
        engine_path=path,
        size_bytes=size,
        model_name=mv.name,
        model_version=str(mv.version),
        model_alias_at_build=",".join(sorted(a for a in (mv.aliases or []))) or registry.APPROVED,
        mlflow_run_id=mv.run_id,
        manifest_sha256=mv.tags.get("manifest_sha256"),
        manifest_path=mv.tags.get("manifest_path"),
        code_version=code_version(),
        built_at=datetime.fromtimestamp(at_ns / 1e9, UTC).isoformat(timespec="seconds"),
        built_at_ns=at_ns,
        report=json.dumps(report, sort_keys=True, default=str),
    )
    row.update(extra)
    return row


def build_onnx(
    context: AssetExecutionContext, market: str, settings: OnnxSettings, lake: Lake, tracking: MlflowTracking
) -> MaterializeResult:
    name = registry.model_name(market)
    mv = approved_version(tracking, name)
    splits = {k: mv.tags.get(k, "") for k in ("manifest_path", "manifest_sha256")}
    if not all(splits.values()):
        raise Failure(f"{name} version {mv.version} has no manifest_path/manifest_sha256 tags: its data is unknown")
    markets = [m for m in mv.tags.get("markets", market).split(",") if m]
    spec = _image_spec(mv)
    context.log.info(f"compiling {name} version {mv.version} (approved) for {ONNX_TARGET}")
    with (
        _model_files(tracking, mv) as model_dir,
        manifest_files(lake, splits) as (manifest, resolve),
        tempfile.TemporaryDirectory() as tmp,
    ):
        program = onnx_export.load_program(onnx_export.find_pt2(model_dir))
        test = select_split(
            manifest, "test", resolve, markets=markets, max_frames_per_drive=settings.max_frames_per_drive
        )
        if test.frames == 0:
            raise Failure(f"no test frames in {splits['manifest_path']}: nothing to check parity on")
        example = parity.first_frames(test, spec, 2)
        engine = onnx_export.export(program, Path(tmp) / "engine.onnx", example)
        reproducible = None
        if settings.verify_reproducible:
            again = onnx_export.export(program, Path(tmp) / "again.onnx", example)
            reproducible = again.sha256 == engine.sha256
            if not reproducible:
                raise Failure(f"exporting twice gave different bytes ({engine.sha256[:12]} != {again.sha256[:12]})")
        session = parity.ort_session(engine.path)
        report = parity.compare(
            parity.torch_predictor(program.module()),
            parity.ort_predictor(session),
            test,
            spec,
            batch_size=settings.parity_batch_size,
            atol=settings.parity_atol,
            mae_tolerance=settings.mae_tolerance,
        )
        latency = parity.ort_latency(engine.path, example, runs=settings.latency_runs, threads=settings.latency_threads)
        full_report = {
            "engine": {k: str(v) if isinstance(v, Path) else v for k, v in vars(engine).items() if k != "path"},
            "model": {"name": name, "version": str(mv.version), "mlflow_run_id": mv.run_id},
            "parity": report.to_dict(),
            "latency": latency.to_dict(),
            "reproducible": reproducible,
        }
        chain = lineage.resolve_chain(
            {
                "engine_sha256": engine.sha256,
                "target": ONNX_TARGET,
                "model_name": name,
                "model_version": str(mv.version),
                "mlflow_run_id": mv.run_id,
                **splits,
            },
            manifest,
            resolve,
        )
        lake.write_table(ENGINE_LINEAGE.path(market, engine_record_key(ONNX_TARGET, engine.sha256)), chain)
        engine_path = _publish_engine(
            lake,
            market,
            ONNX_TARGET,
            mv,
            engine.path,
            engine.sha256,
            engine.size_bytes,
            full_report,
            **_parity_columns(report),
            latency_p50_ms=latency.p50_ms,
            latency_p99_ms=latency.p99_ms,
            latency_where=f"onnxruntime {latency.provider}, batch 1, {latency.threads} thread(s), this CPU",
        )
    tracking.client().set_model_version_tag(name, str(mv.version), f"engine.{ONNX_TARGET}.sha256", engine.sha256)
    broken = lineage.missing_links(chain)
    return MaterializeResult(
        data_version=DataVersion(engine.sha256),
        metadata={
            "target": ONNX_TARGET,
            "engine_sha256": engine.sha256,
            "engine_path": engine_path,
            "size_bytes": engine.size_bytes,
            "opset": engine.opset,
            "input": f"{engine.input_name} {list(engine.input_shape)} float32",
            "model": f"{name} version {mv.version}",
            "model_version": str(mv.version),
            "mlflow_run_id": mv.run_id or "",
            "manifest_sha256": splits["manifest_sha256"],
            "reproducible_export": bool(reproducible),
            "parity_max_abs_diff": report.max_abs_diff,
            "parity_mean_abs_diff": report.mean_abs_diff,
            "mae_torch": report.mae_reference,
            "mae_onnxruntime": report.mae_engine,
            "parity_frames": report.frames,
            "parity_batch_size": report.batch_size,
            "latency_p50_ms": latency.p50_ms,
            "latency_p99_ms": latency.p99_ms,
            "latency": MetadataValue.json(latency.to_dict()),
            "lineage": f"python -m ad_platform lineage {engine.sha256}",
            "lineage_drives": lineage.drive_summary(chain).num_rows,
            "lineage_raw_files": chain.num_rows,
        },
        check_results=[
            AssetCheckResult(
                check_name=CHECK_PARITY,
                passed=report.passed,
                severity=AssetCheckSeverity.ERROR,
                description=f"onnxruntime vs torch on {report.frames} test frames at batch {report.batch_size}: "
                f"max |diff| {report.max_abs_diff:.2e} deg (<= {report.atol:g}), MAE {report.mae_engine:.4f} vs "
                f"{report.mae_reference:.4f} deg (|delta| {report.mae_delta:.2e} <= {report.mae_tolerance:g})",
                metadata={"report": MetadataValue.json(report.to_dict())},
            ),
            AssetCheckResult(
                check_name=CHECK_LINEAGE,
                passed=not broken,
                severity=AssetCheckSeverity.ERROR,
                description="every link from the engine to the raw files is recorded"
                if not broken
                else f"{len(broken)} missing link(s): {'; '.join(broken[:5])}",
                metadata={"missing": MetadataValue.json(broken)},
            ),
        ],
    )


def latest_onnx(context: AssetExecutionContext, market: str) -> dict[str, str]:
    key = AssetKey([market, ONNX_ENGINE.name])
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise Failure(f"{key.to_user_string()} has never been materialized: there is no ONNX engine to compile")
    meta = event.asset_materialization.metadata
    return {k: str(meta[k].value) for k in ("engine_sha256", "engine_path", "model_version", "manifest_sha256")}


class TensorRtSettings(Config):
    workspace_mib: int = Field(default=2048, description="Builder workspace memory pool.")
    calibration_batches: int = Field(default=16, description="INT8: val-split batches fed to the calibrator.")
    calibration_batch_size: int = 8
    max_batch: int = Field(default=16, description="Largest batch of the engine's optimization profile.")
    atol_fp16: float = 0.05
    atol_int8: float = 0.5
    max_frames_per_drive: int | None = None


def build_tensorrt(
    context: AssetExecutionContext, market: str, settings: TensorRtSettings, lake: Lake, tracking: MlflowTracking
) -> MaterializeResult:
    precision = context.partition_key
    trt = trt_build.require_tensorrt()  # fails here, with the reason, where TensorRT cannot import
    source = latest_onnx(context, market)
    name = registry.model_name(market)
    mv = approved_version(tracking, name)
    if str(mv.version) != source["model_version"]:
        raise Failure(
            f"the latest ONNX engine is of {name} version {source['model_version']}, but version {mv.version} is "
            f"approved now: materialize {market}/{ONNX_ENGINE.name} first"
        )
    splits = {k: mv.tags.get(k, "") for k in ("manifest_path", "manifest_sha256")}
    spec = _image_spec(mv)
    with (
        manifest_files(lake, splits) as (manifest, resolve),
        lake.local_dir(str(Path(source["engine_path"]).parent)) as onnx_dir,
        tempfile.TemporaryDirectory() as tmp,
    ):
        onnx_path = onnx_dir / "engine.onnx"
        kw = {"markets": [market], "max_frames_per_drive": settings.max_frames_per_drive}
        val = select_split(manifest, "val", resolve, **kw)
        test = select_split(manifest, "test", resolve, **kw)
        calib = val if val.frames else select_split(manifest, "train", resolve, **kw)
        built = trt_build.build_engine(
            trt,
            onnx_path,
            Path(tmp) / "engine.plan",
            precision=precision,
            spec=spec,
            calibration=calib if precision == "int8" else None,
            calibration_batches=settings.calibration_batches,
            calibration_batch_size=settings.calibration_batch_size,
            max_batch=settings.max_batch,
            workspace_mib=settings.workspace_mib,
        )
        report = trt_build.parity_vs_onnxruntime(
            built.path, onnx_path, test, spec, atol=settings.atol_fp16 if precision == "fp16" else settings.atol_int8
        )
        target = f"tensorrt-{built.gpu_slug}-{precision}"
        full = {"engine": built.to_dict(), "parity": report.to_dict(), "source_onnx_sha256": source["engine_sha256"]}
        engine_path = _publish_engine(
            lake,
            market,
            target,
            mv,
            built.path,
            built.sha256,
            built.size_bytes,
            full,
            source_engine_sha256=source["engine_sha256"],
            **_parity_columns(report),
            latency_p50_ms=built.latency_p50_ms,
            latency_p99_ms=built.latency_p99_ms,
            latency_where=f"TensorRT on {built.gpu_name}, batch 1",
        )
    return MaterializeResult(
        data_version=DataVersion(built.sha256),
        metadata={
            "target": target,
            "engine_sha256": built.sha256,
            "engine_path": engine_path,
            "size_bytes": built.size_bytes,
            "source_onnx_sha256": source["engine_sha256"],
            "gpu": built.gpu_name,
            "tensorrt_version": built.tensorrt_version,
            "latency_p50_ms": built.latency_p50_ms,
            "latency_p99_ms": built.latency_p99_ms,
            "parity": MetadataValue.json(report.to_dict()),
        },
        check_results=[
            AssetCheckResult(
                check_name=CHECK_TRT_PARITY,
                passed=report.passed,
                severity=AssetCheckSeverity.ERROR,
                description=f"TensorRT {precision} vs onnxruntime on {report.frames} test frames: max |diff| "
                f"{report.max_abs_diff:.3g} deg, MAE {report.mae_engine:.3f} vs {report.mae_reference:.3f}",
            )
        ],
    )


class QnnSettings(Config):
    device: str = Field(default=hub.DEFAULT_DEVICE, description="AI Hub device name (Snapdragon Ride: SA8775P ADP).")
    api_url: str = Field(default=hub.DEFAULT_API_URL, description="AI Hub API endpoint (tests: a loopback stand-in).")
    target_runtime: str = Field(default="qnn_context_binary", description="AI Hub compile --target_runtime.")
    timeout_s: int = Field(default=3600, description="Longest wait for each AI Hub job.")


def build_qnn(
    context: AssetExecutionContext, market: str, settings: QnnSettings, lake: Lake, tracking: MlflowTracking
) -> MaterializeResult:
    try:
        config = hub.client_config(settings.api_url)  # fails fast, before any request, without a token
    except hub.NoToken as exc:
        raise Failure(str(exc)) from exc
    source = latest_onnx(context, market)
    mv = approved_version(tracking, registry.model_name(market))
    spec = _image_spec(mv)
    with (
        lake.local_dir(str(Path(source["engine_path"]).parent)) as onnx_dir,
        tempfile.TemporaryDirectory() as tmp,
    ):
        result = hub.compile_and_profile(
            config,
            onnx_dir / "engine.onnx",
            Path(tmp),
            device=settings.device,
            input_shape=(1, 3, spec.height, spec.width),
            target_runtime=settings.target_runtime,
            timeout_s=settings.timeout_s,
            log=context.log.info,
        )
        target = f"qnn-{hub.device_slug(settings.device)}"
        full = {**result.to_dict(), "source_onnx_sha256": source["engine_sha256"]}
        engine_path = _publish_engine(
            lake,
            market,
            target,
            mv,
            result.path,
            result.sha256,
            result.size_bytes,
            full,
            extra_files={"profile.json": json.dumps(result.profile, indent=2, sort_keys=True) + "\n"},
            source_engine_sha256=source["engine_sha256"],
            latency_p50_ms=result.inference_ms,
            latency_p99_ms=None,
            latency_where=f"AI Hub profile on {settings.device} ({settings.api_url})",
        )
    return MaterializeResult(
        data_version=DataVersion(result.sha256),
        metadata={
            "target": target,
            "device": settings.device,
            "api_url": settings.api_url,
            "engine_sha256": result.sha256,
            "engine_path": engine_path,
            "size_bytes": result.size_bytes,
            "source_onnx_sha256": source["engine_sha256"],
            "compile_job": result.compile_job_id,
            "profile_job": result.profile_job_id,
            "inference_ms": result.inference_ms if result.inference_ms is not None else float("nan"),
            "peak_memory_mib": result.peak_memory_mib if result.peak_memory_mib is not None else float("nan"),
        },
    )


def definitions(market: str) -> Definitions:
    onnx_key = ONNX_ENGINE.key(market)

    @asset(
        **stage_asset_args(ONNX_ENGINE, market),
        check_specs=[
            AssetCheckSpec(
                CHECK_PARITY,
                asset=onnx_key,
                blocking=True,
                description="onnxruntime matches the registered PyTorch model on the test split (max |diff| and "
                "MAE agreement within tolerance), at a batch size different from the export's.",
            ),
            AssetCheckSpec(
                CHECK_LINEAGE,
                asset=onnx_key,
                blocking=True,
                description="The chain engine -> model version -> split manifest -> drives -> synced frames -> "
                "decoded tables -> raw files has no missing link.",
            ),
        ],
        kinds={"onnx", "mlflow"},
        description=f"The {market.upper()} steering model's `approved` version exported to ONNX (target onnx-cpu: "
        "dynamo exporter, dynamic batch, onnx.checker), named by its sha256, with a parity report against the "
        "registered PyTorch model on the test split and its onnxruntime CPU latency (docs/engines.md).",
    )
    def onnx_engine(
        context: AssetExecutionContext, config: OnnxSettings, lake: Lake, mlflow_tracking: MlflowTracking
    ) -> MaterializeResult:
        return build_onnx(context, market, config, lake, mlflow_tracking)

    trt_key = TENSORRT_ENGINE.key(market)

    @asset(
        **{**stage_asset_args(TENSORRT_ENGINE, market), "partitions_def": TRT_PRECISIONS},
        check_specs=[
            AssetCheckSpec(
                CHECK_TRT_PARITY,
                asset=trt_key,
                blocking=True,
                description="The TensorRT engine matches onnxruntime on the test split within the precision's "
                "tolerance.",
            )
        ],
        kinds={"tensorrt"},
        description=f"TensorRT engines (partitions: fp16, int8 calibrated on val frames) of the {market.upper()} ONNX "
        "engine, built on the GPU pool through the tensorrt Python API; fails with the reason where tensorrt "
        "cannot import (docs/engines.md).",
    )
    def tensorrt_engine(
        context: AssetExecutionContext, config: TensorRtSettings, lake: Lake, mlflow_tracking: MlflowTracking
    ) -> MaterializeResult:
        return build_tensorrt(context, market, config, lake, mlflow_tracking)

    @asset(
        **stage_asset_args(QNN_ENGINE, market),
        kinds={"qualcomm"},
        description=f"The {market.upper()} ONNX engine compiled and profiled for a Snapdragon device on Qualcomm AI "
        "Hub (qai_hub: compile job, profile job, compiled model and profile downloaded); needs an API token "
        "(QAIHUB_API_TOKEN from a Kubernetes secret, or the client's ini file).",
    )
    def qnn_engine(
        context: AssetExecutionContext, config: QnnSettings, lake: Lake, mlflow_tracking: MlflowTracking
    ) -> MaterializeResult:
        return build_qnn(context, market, config, lake, mlflow_tracking)

    return Definitions(assets=[onnx_engine, tensorrt_engine, qnn_engine])
