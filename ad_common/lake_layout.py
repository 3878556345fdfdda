"""The lake's layout: every path the platform writes, and the schema of every catalog record.

This module is the one place that knows where things live. Lake backends (local folder, S3) take these
lake-relative paths; the DuckDB catalog generates its views from :data:`CATALOG_RECORDS` (and dbt's
sources are checked against it), so a record's columns are declared once, here.

Layout (one folder per record kind, one file per drive, so concurrent runs never contend)::

    registry/<market>/<drive_id>.json                      registered version of a drive (per-file sha256, sizes)
    decoded/<market>/<drive_id>/<stream>.parquet            decoded_signals: one table per stream
    synced/<market>/<drive_id>/frames.parquet              synced_frames: one row per reference frame
    catalog/<record>/<market>/<drive_id>.parquet           per-drive catalog records (below)
    reference/<market>/signal_reference.parquet            signal_drift: the market's frozen reference
    reference/<market>/drift_state.json                    signal_drift: drives already evaluated
    reports/signal_drift/<market>/<run_id>/drift.png       signal_drift: the chart of one evaluation
    splits/<market>/<split_version>/manifest.parquet       curated_splits: one row per frame (SPLIT_MANIFEST_SCHEMA)
    odd/<market>/<drive_id>/frame_tags.parquet             odd_tags: per-frame ODD tags and geo cell (FRAME_TAGS_SCHEMA)
    catalog/drive_odd_tags/<market>/<drive_id>.parquet     odd_tags: derived ODD tags of one synced drive
    review/<market>/rejections/*.csv                       reviewer rejections (drive_id, frame_index, reason, ...)
    review/<market>/projects/<split_version>.json          review_project: the Label Studio project of a split version
    catalog/review_verdicts/<market>/<version>.parquet     review_verdicts: one row per reviewed Label Studio task
    recordings/<market>/<drive_id>/recording.mcap          drive_recording: camera, lidar, signals, sync error
    reports/curated_splits/<market>/<split_version>/       split_review: contact sheet, review page, FiftyOne export
    catalog/split_assignments/<market>/<version>.parquet   curated_splits: one row per drive of a split version
    catalog/drive_checks/<market>/<drive_id>@<stage>.parquet  a per-drive stage's asset-check outcomes for one drive
    catalog/model_approvals/<model>/<at_ns>-v<version>.parquet   approve/rollback CLI: the gate's audit trail
    shards/<market>/<split_version>/index.json             training_shards: shard list, manifest sha256, image spec
    shards/<market>/<split_version>/<split>/shard-*.tar    training_shards: WebDataset tar shards of model-ready frames
    shards/<market>/<split_version>/<split>/frames.parquet training_shards: sample order -> frame ids, target, ODD
    models/<market>/search/best_params.json                 model_search: the best trial's params
    models/<market>/train-runs/<run_id>/                    trained_model: job.json, rank 0's model.pt + result.json
    engines/<market>/<target>/<sha256>/engine.<ext>          compiled engines (onnx-cpu, tensorrt-<gpu>-<precision>,
    engines/<market>/<target>/<sha256>/report.json              qnn-<device>): engine, parity/latency/profile report
    catalog/engines/<market>/<target>-<sha256>.parquet     one row per built engine: model version, run, manifest
    catalog/engine_lineage/<market>/<target>-<sha256>.parquet   the engine's chain down to raw files (one row per file)

Names starting with ``.`` are a backend's temporaries (atomic writes) and never part of a listing;
:func:`is_hidden` decides that on the lake-relative path, never on the absolute one (the embedded default
lives under ``.state/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import pyarrow as pa

FRAMES_FILE = "frames.parquet"


def is_hidden(relpath: str) -> bool:
    """True for a path with any component starting with ``.`` (relative to the lake or landing root)."""
    return any(part.startswith(".") for part in PurePosixPath(relpath).parts)


def registry_path(market: str, drive_id: str) -> str:
    """Where the registered version of a drive (per-file sha256, sizes, mtimes, landing time) is kept."""
    return f"{DRIVE_REGISTRY.folder}/{market}/{drive_id}.json"


def decoded_path(market: str, drive_id: str) -> str:
    return f"decoded/{market}/{drive_id}"


def synced_path(market: str, drive_id: str) -> str:
    return f"synced/{market}/{drive_id}"


def split_manifest_path(market: str, split_version: str) -> str:
    """The frame-level manifest of one split version of a market (its sha256 is the asset's data version)."""
    return f"splits/{market}/{split_version}/manifest.parquet"


def odd_frames_path(market: str, drive_id: str) -> str:
    return f"odd/{market}/{drive_id}/frame_tags.parquet"


def rejections_dir(market: str) -> str:
    """Reviewers drop CSV files here (docs/curation.md); the next split version excludes what they list."""
    return f"review/{market}/rejections"


def review_project_path(market: str, split_version: str) -> str:
    """The Label Studio project a split version was pushed to (server URL, project id, tasks)."""
    return f"review/{market}/projects/{split_version}.json"


def recording_path(market: str, drive_id: str) -> str:
    """A synced drive as one MCAP file with Foxglove schemas, for frame-by-frame review in a viewer."""
    return f"recordings/{market}/{drive_id}/recording.mcap"


def split_review_dir(market: str, split_version: str) -> str:
    return f"reports/curated_splits/{market}/{split_version}"


def shards_dir(market: str, split_version: str) -> str:
    """The training shards of one split version of a market (``index.json`` names every shard)."""
    return f"shards/{market}/{split_version}"


def train_run_dir(market: str, run_id: str) -> str:
    """One training run's job spec and rank 0's outputs (what the ranks and the asset exchange)."""
    return f"models/{market}/train-runs/{run_id}"


def search_best_params_path(market: str) -> str:
    """The best hyper-parameters of the market's latest model search (read by trained_model)."""
    return f"models/{market}/search/best_params.json"


def engine_dir(market: str, target: str, sha256: str) -> str:
    """The folder of one compiled engine, named by its content sha256 (its identity)."""
    return f"engines/{market}/{target}/{sha256}"


def engine_record_key(target: str, sha256: str) -> str:
    """The file stem of an engine's catalog records (``ENGINES.path(market, key)``)."""
    return f"{target}-{sha256}"


def drift_reference_path(market: str) -> str:
    return f"reference/{market}/signal_reference.parquet"


def drift_state_path(market: str) -> str:
    return f"reference/{market}/drift_state.json"


def drift_report_dir(market: str, run_id: str) -> str:
    return f"reports/signal_drift/{market}/{run_id}"


@dataclass(frozen=True)
class CatalogRecord:
    """One kind of per-drive record: a catalog view of the same name reads every market's files."""

    name: str
    description: str
    schema: pa.Schema
    folder: str
    file_format: Literal["parquet", "json"] = "parquet"

    def path(self, market: str, drive_id: str) -> str:
        return f"{self.folder}/{market}/{drive_id}.{self.file_format}"

    def market_folder(self, market: str) -> str:
        return f"{self.folder}/{market}"


RAW_FILES = CatalogRecord(
    name="raw_files",
    description="One row per file of a registered drive: kind, size, sha256, format version, time span, streams.",
    folder="catalog/raw_files",
    schema=pa.schema(
        [
            ("market", pa.string()),
            ("drive_id", pa.string()),
            ("drive_version", pa.int64()),
            ("file", pa.string()),
            ("kind", pa.string()),
            ("size_bytes", pa.int64()),
            ("sha256", pa.string()),
            ("format_version", pa.string()),
            ("finalized", pa.bool_()),
            ("start_ns", pa.int64()),
            ("end_ns", pa.int64()),
            ("streams", pa.list_(pa.struct([("name", pa.string()), ("count", pa.int64())]))),
            ("notes", pa.list_(pa.string())),
        ]
    ),
)

DECODED_STREAMS = CatalogRecord(
    name="decoded_streams",
    description="One row per decoded stream of a drive: rows, span, rate, status and its Parquet table.",
    folder="catalog/decoded_streams",
    schema=pa.schema(
        [
            ("market", pa.string()),
            ("drive_id", pa.string()),
            ("stream", pa.string()),
            ("kind", pa.string()),
            ("source_file", pa.string()),
            ("rows", pa.int64()),
            ("start_ns", pa.int64()),
            ("end_ns", pa.int64()),
            ("rate_hz", pa.float64()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("parquet", pa.string()),
            ("decoder_version", pa.string()),
            ("out_of_order_samples", pa.int64()),
        ]
    ),
)

# The signals the drift check summarises (ad_core/quality/drift.py asserts its SIGNALS match these columns).
DRIFT_HISTOGRAM_COLUMNS = ("speed_kmh_hist", "yaw_rate_dps_hist", "brightness_hist")
ODD_TAGS = ("road_type", "time_of_day", "weather", "manoeuvre")

DRIVE_SIGNAL_SUMMARIES = CatalogRecord(
    name="drive_signal_summaries",
    description="One row per synced drive: ODD tags and histograms of speed, yaw rate and frame luma (drift input).",
    folder="catalog/drive_signal_summaries",
    schema=pa.schema(
        [
            ("drive_id", pa.string()),
            ("market", pa.string()),
            ("start_time_ns", pa.int64()),
            *((tag, pa.string()) for tag in ODD_TAGS),
            ("frames", pa.int64()),
            ("brightness_frames", pa.int64()),
            *((column, pa.list_(pa.int32())) for column in DRIFT_HISTOGRAM_COLUMNS),
            ("fingerprint", pa.string()),
        ]
    ),
)

DRIVE_REGISTRY = CatalogRecord(
    name="drive_registry",
    description="The registered version of every drive: content fingerprint, landing time, per-file sha256.",
    folder="registry",
    file_format="json",
    schema=pa.schema(
        [
            ("market", pa.string()),
            ("drive_id", pa.string()),
            ("version", pa.int64()),
            ("fingerprint", pa.string()),
            ("landed_at_ns", pa.int64()),
            ("registered_at_ns", pa.int64()),
            ("total_bytes", pa.int64()),
            # file name -> {sha256, size, mtime_ns}; DuckDB reads it as a STRUCT keyed by the drive's file names.
            ("files", pa.string()),
        ]
    ),
)

SPLITS = ("train", "val", "test")
ODD_UNKNOWN = "unknown"

# The training contract: models read these columns only (frames themselves stay in the synced Parquet).
SPLIT_MANIFEST_SCHEMA = pa.schema(
    [
        ("market", pa.string()),
        ("drive_id", pa.string()),
        ("frame_index", pa.int64()),
        ("timestamp_ns", pa.int64()),
        ("split", pa.string()),  # one of SPLITS
        ("synced_path", pa.string()),  # lake-relative path of the drive's frames.parquet
        ("synced_sha256", pa.string()),
        # lake-relative path of the decoded reference camera table; frame_index is its row (JPEG in column
        # "data", read with ad_core.decode.parquet_out.read_frame); null for a drive without a camera
        ("camera_path", pa.string()),
        *((tag, pa.string()) for tag in ODD_TAGS),  # frame-window tags; ODD_UNKNOWN where a signal is missing
        ("excluded", pa.bool_()),  # reviewer exclusion: excluded frames are listed, never trained on
        ("exclusion_reason", pa.string()),
        ("excluded_by", pa.string()),
        ("excluded_at", pa.string()),
        ("exclusion_source", pa.string()),  # the verdict applied: "<csv file>:<line>" or the Label Studio task
    ]
)

FRAME_TAGS_SCHEMA = pa.schema(
    [
        ("frame_index", pa.int64()),
        ("timestamp_ns", pa.int64()),
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
        ("geo_cell", pa.string()),  # H3 cell of the frame's position; null without a GNSS fix
        *((tag, pa.string()) for tag in ODD_TAGS),
    ]
)

DRIVE_ODD_TAGS = CatalogRecord(
    name="drive_odd_tags",
    description="One row per synced drive: ODD tags derived from its signals (majority over frame windows), "
    "each with the reason where it is unknown, and the share of frames per tag value.",
    folder="catalog/drive_odd_tags",
    schema=pa.schema(
        [
            ("market", pa.string()),
            ("drive_id", pa.string()),
            ("frames", pa.int64()),
            *((tag, pa.string()) for tag in ODD_TAGS),
            *((f"{tag}_reason", pa.string()) for tag in ODD_TAGS),
            *((f"{tag}_shares", pa.string()) for tag in ODD_TAGS),  # JSON {value: share of frames}
            ("geo_cells", pa.list_(pa.string())),
            ("drive_version", pa.int64()),
            ("synced_sha256", pa.string()),
            # the decoded stream whose rows the frames are (frame_index); a camera only if its table is images
            ("reference_stream", pa.string()),
        ]
    ),
)

SPLIT_ASSIGNMENTS = CatalogRecord(
    name="split_assignments",
    description="One row per drive of a split version: its split, frames kept and excluded, geo cells, ODD tags.",
    folder="catalog/split_assignments",
    schema=pa.schema(
        [
            ("market", pa.string()),
            ("split_version", pa.string()),
            ("drive_id", pa.string()),
            ("split", pa.string()),
            ("frames", pa.int64()),
            ("excluded_frames", pa.int64()),
            ("geo_cells", pa.list_(pa.string())),
            *((tag, pa.string()) for tag in ODD_TAGS),
            ("manifest_sha256", pa.string()),
        ]
    ),
)

DRIVE_CHECKS = CatalogRecord(
    name="drive_checks",
    description="One row per asset check of a per-drive stage and drive: passed or not, severity, blocking, run. "
    "Written by the stage with its check results; one file per drive and stage (the dbt catalog's QA status).",
    folder="catalog/drive_checks",
    schema=pa.schema(
        [
            ("market", pa.string()),
            ("drive_id", pa.string()),
            ("drive_version", pa.int64()),  # the registered version the checks ran on (null if unregistered)
            ("stage", pa.string()),  # the stage table's name (decoded_signals, synced_frames, odd_tags)
            ("asset_key", pa.string()),
            ("check_name", pa.string()),
            ("passed", pa.bool_()),
            ("severity", pa.string()),  # ERROR or WARN
            ("blocking", pa.bool_()),
            ("description", pa.string()),
            ("run_id", pa.string()),
            ("evaluated_at_ns", pa.int64()),
        ]
    ),
)

# Label Studio verdicts (docs/review.md): one file per market and split version, written by review_verdicts;
# the next curated split excludes what they reject (path: REVIEW_VERDICTS.path(market, split_version)).
REVIEW_VERDICTS = CatalogRecord(
    name="review_verdicts",
    description="One row per reviewed task of a Label Studio review project: the frame, accept or reject, the "
    "reason (one reason rejects the whole drive), the note, who and when.",
    folder="catalog/review_verdicts",
    schema=pa.schema(
        [
            ("market", pa.string()),
            ("split_version", pa.string()),
            ("project_id", pa.int64()),
            ("task_id", pa.int64()),
            ("annotation_id", pa.int64()),
            ("drive_id", pa.string()),
            ("frame_index", pa.int64()),
            ("verdict", pa.string()),  # accept | reject
            ("reason", pa.string()),
            ("whole_drive", pa.bool_()),
            ("note", pa.string()),
            ("reviewer", pa.string()),
            ("reviewed_at", pa.string()),
            ("source", pa.string()),  # "label-studio <url> project <p> task <t>"
        ]
    ),
)

# Audit trail of the model registry's approval gate: one file per approval or rollback, written by the
# `python -m ad_platform approve|rollback` commands (path: MODEL_APPROVALS.path(model, f"{at_ns}-v{version}")).
MODEL_APPROVALS = CatalogRecord(
    name="model_approvals",
    description="One row per approval or rollback of a registered model version: who, when, why, the version's "
    "test metrics, its split manifest sha256 and code version.",
    folder="catalog/model_approvals",
    schema=pa.schema(
        [
            ("model", pa.string()),
            ("version", pa.string()),
            ("action", pa.string()),
            ("actor", pa.string()),  # who approved or rolled back
            ("note", pa.string()),
            ("at", pa.string()),
            ("at_ns", pa.int64()),
            ("previous_version", pa.string()),
            ("metrics", pa.string()),
            ("manifest_sha256", pa.string()),
            ("code_version", pa.string()),
            ("mlflow_run_id", pa.string()),
        ]
    ),
)


def drive_checks_path(market: str, drive_id: str, stage: str) -> str:
    """One file per drive and stage ('@' never occurs in a drive key), so a stage rewrites only its own rows."""
    return f"{DRIVE_CHECKS.folder}/{market}/{drive_id}@{stage}.{DRIVE_CHECKS.file_format}"


# Compiled engines (docs/engines.md): one file per engine, written by the engine assets.
ENGINES = CatalogRecord(
    name="engines",
    description="One row per compiled engine: target, sha256, size, the model version and MLflow run it was "
    "built from, whether that version was approved at build time, parity and latency.",
    folder="catalog/engines",
    schema=pa.schema(
        [
            ("market", pa.string()),
            ("target", pa.string()),  # onnx-cpu | tensorrt-<gpu>-<precision> | qnn-<device>
            ("engine_sha256", pa.string()),
            ("engine_path", pa.string()),  # lake-relative
            ("size_bytes", pa.int64()),
            ("source_engine_sha256", pa.string()),  # the ONNX engine a device engine was compiled from
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("model_alias_at_build", pa.string()),
            ("mlflow_run_id", pa.string()),
            ("manifest_sha256", pa.string()),
            ("manifest_path", pa.string()),
            ("code_version", pa.string()),
            ("built_at", pa.string()),
            ("built_at_ns", pa.int64()),
            ("parity_passed", pa.bool_()),
            ("parity_max_abs_diff", pa.float64()),
            ("parity_mean_abs_diff", pa.float64()),
            ("mae_reference", pa.float64()),
            ("mae_engine", pa.float64()),
            ("latency_p50_ms", pa.float64()),
            ("latency_p99_ms", pa.float64()),
            ("latency_where", pa.string()),
            ("report", pa.string()),  # JSON: the full parity / latency / profile report
        ]
    ),
)

# The lineage of one engine, resolved when it was built: one row per raw file of every drive whose frames its
# model's split manifest lists. dbt_metadata/ models this (docs/engines.md); `python -m ad_platform lineage`
# prints the same chain, resolved from the current lake and registry.
ENGINE_LINEAGE = CatalogRecord(
    name="engine_lineage",
    description="Engine -> model version and MLflow run -> split manifest -> drive (frames per split) -> synced "
    "frames -> decoded tables (decoder and DBC versions) -> raw file with its sha256; one row per raw file.",
    folder="catalog/engine_lineage",
    schema=pa.schema(
        [
            ("engine_sha256", pa.string()),
            ("target", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("mlflow_run_id", pa.string()),
            ("manifest_sha256", pa.string()),
            ("manifest_path", pa.string()),
            ("market", pa.string()),
            ("drive_id", pa.string()),
            ("drive_version", pa.int64()),
            ("drive_fingerprint", pa.string()),
            ("split", pa.string()),
            ("frames", pa.int64()),
            ("excluded_frames", pa.int64()),
            ("synced_path", pa.string()),
            ("synced_sha256", pa.string()),
            ("synced_sha256_now", pa.string()),  # the file's hash when the lineage was resolved
            ("decoded_path", pa.string()),
            ("decoded_tables", pa.int64()),
            ("decoder_versions", pa.string()),  # comma-separated, sorted
            ("dbc_files", pa.string()),  # JSON {dbc file: sha256} the CAN tables were decoded with
            ("sensor_profile", pa.string()),  # JSON {stream: {kind, rate_hz, rows}} of the decoded tables
            ("raw_file", pa.string()),
            ("raw_kind", pa.string()),
            ("raw_size_bytes", pa.int64()),
            ("raw_sha256", pa.string()),
        ]
    ),
)

CATALOG_RECORDS: tuple[CatalogRecord, ...] = (
    RAW_FILES,
    DECODED_STREAMS,
    DRIVE_SIGNAL_SUMMARIES,
    DRIVE_REGISTRY,
    DRIVE_ODD_TAGS,
    SPLIT_ASSIGNMENTS,
    DRIVE_CHECKS,
    MODEL_APPROVALS,
    ENGINES,
    ENGINE_LINEAGE,
    REVIEW_VERDICTS,
)
