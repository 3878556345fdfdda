"""Pipeline metrics in the Prometheus text format, computed from the Dagster instance and the lake registry.

Run `python -m ad_platform.metrics --port 9464` (or `python -m ad_platform metrics`) next to the webserver and
point Prometheus at `http://<host>:9464/metrics`. Every scrape reads the instance (SQLite locally, Postgres in
production); nothing is counted in-process, so the numbers survive restarts and agree with the UI.

Series (all gauges unless noted; `market` is the first asset-key component, `stage` the last):

- `ad_drives_landed{market}`: drive partitions the landing sensor registered (`drives_<market>`).
- `ad_drives_registered{market}`: drives with a registry record in the lake (validated by `raw_drive`).
- `ad_drives_decoded{market}`: drive partitions with a `decoded_signals` materialization.
- `ad_asset_partitions{market,asset,status}`: every partitioned asset's drives by status
  (materialized, failed, in_progress, missing): later stages appear without code changes here.
- `ad_ingest_lag_seconds{market}` (histogram): landing (`landed_at_ns` in the registry) to the first
  `decoded_signals` materialization of that drive version.
- `ad_stage_bytes{market,stage}` / `ad_stage_seconds{market,stage}` (summaries, `_sum` and `_count`): bytes and
  seconds of each drive's latest materialization, from its metadata (`total_bytes`; `seconds` with `mb_per_s`).
- `ad_stage_throughput_mb_per_s{market,stage}`: bytes / seconds over the drives that report both.
- `ad_asset_check_failures{market,asset,check,severity}`: failed check evaluations in the instance's history.
- `ad_asset_check_latest_failed{market,asset,check,severity}`: 1 where the latest evaluation failed.
- `ad_runs{job,status}`: runs per job and status (`status="FAILURE"` are the failed runs).
- `ad_metrics_collect_seconds`: how long the scrape took to compute.
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    BetaWarning,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    DynamicPartitionsDefinition,
    RunsFilter,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from prometheus_client.core import (
    CollectorRegistry,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ad_common.markets import MARKETS
from ad_common.stages import DECODED_SIGNALS, RAW_DRIVE
from ad_platform.instance import local_instance
from ad_resources.lake import Lake

RAW_STAGE = RAW_DRIVE.name
DECODED_STAGE = DECODED_SIGNALS.name
# Landing → decoded: seconds (a demo drive takes ~5 s; a 4 GB drive behind a queue takes minutes to hours).
LAG_BUCKETS_S: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
RUN_STATUSES = (
    DagsterRunStatus.SUCCESS,
    DagsterRunStatus.FAILURE,
    DagsterRunStatus.CANCELED,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.QUEUED,
)
_PAGE = 1000
_CHECK_HISTORY_LIMIT = 100_000  # per check; a bound, not an expectation


def _market_of(key: AssetKey) -> str:
    return key.path[0] if len(key.path) > 1 else ""


def _number(value: Any) -> float | None:
    """A metadata value as a float, or None (missing, null, non-numeric)."""
    raw = getattr(value, "value", value)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return float(raw) if math.isfinite(raw) else None


@dataclass
class _PartitionFacts:
    timestamps: list[float] = field(default_factory=list)  # every materialization, ascending
    latest_storage_id: int = 0
    bytes: float | None = None  # of the latest materialization
    seconds: float | None = None


@dataclass
class _AssetIndex:
    """What the metrics need from one asset's materializations, kept up to date incrementally.

    A scrape reads only the events after the last storage id it saw, so the cost of a scrape follows the
    rate of new materializations, not the size of the history (the first scrape reads it all, in pages).
    """

    cursor: int = 0
    partitions: dict[str, _PartitionFacts] = field(default_factory=lambda: defaultdict(_PartitionFacts))

    def refresh(self, instance: DagsterInstance, key: AssetKey, max_pages: int = 10_000) -> None:
        for _ in range(max_pages):
            result = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, after_storage_id=self.cursor or None), limit=_PAGE, ascending=True
            )
            for record in result.records:
                self.cursor = max(self.cursor, record.storage_id)
                materialization = record.asset_materialization
                if materialization is None or materialization.partition is None:
                    continue
                facts = self.partitions[materialization.partition]
                facts.timestamps.append(record.timestamp)
                facts.latest_storage_id = record.storage_id
                metadata = materialization.metadata
                seconds = _number(metadata.get("seconds"))
                total_bytes = _number(metadata.get("total_bytes"))
                mb_per_s = _number(metadata.get("mb_per_s"))
                if total_bytes is None and seconds is not None and mb_per_s is not None:
                    total_bytes = mb_per_s * seconds * 1e6  # bytes read, from the stage's own throughput
                facts.bytes, facts.seconds = total_bytes, seconds
            if not result.has_more:
                return


class PipelineCollector(Collector):
    """A `prometheus_client` collector: every `collect()` computes the metrics from the instance and the lake."""

    def __init__(
        self,
        defs: Definitions,
        instance: DagsterInstance,
        lake: Lake | None = None,
        markets: Sequence[str] = MARKETS,
    ) -> None:
        self._graph = defs.resolve_asset_graph()
        self._job_names = sorted(job.name for job in defs.get_repository_def().get_all_jobs())
        self._instance = instance
        self._lake: Lake = lake if lake is not None else defs.resources["lake"]
        self._markets = tuple(markets)
        self._indexes: dict[AssetKey, _AssetIndex] = defaultdict(_AssetIndex)
        self._registry_cache: dict[str, tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()  # the WSGI server is threaded; the incremental indexes are not

    # -- inputs -----------------------------------------------------------------------------------------
    def _partitioned_assets(self) -> list[tuple[AssetKey, DynamicPartitionsDefinition]]:
        out = []
        for node in self._graph.asset_nodes:
            if node.is_materializable and isinstance(node.partitions_def, DynamicPartitionsDefinition):
                out.append((node.key, node.partitions_def))
        return sorted(out, key=lambda item: item[0].to_user_string())

    def _registry(self, market: str) -> dict[str, dict[str, Any]]:
        """Registry records by drive; re-read only when the drive's raw_drive materialization changed."""
        raw = self._indexes.get(AssetKey([market, RAW_STAGE]))
        records = {}
        for relpath in self._lake.list_files(f"registry/{market}", ".json"):
            drive_id = relpath.rsplit("/", 1)[-1].removesuffix(".json")
            version = raw.partitions[drive_id].latest_storage_id if raw and drive_id in raw.partitions else -1
            cached = self._registry_cache.get(relpath)
            if cached is None or cached[0] != version or version == -1:
                record = self._lake.read_json(relpath)
                if record is None:
                    continue
                cached = (version, record)
                self._registry_cache[relpath] = cached
            records[drive_id] = cached[1]
        return records

    # -- collect ----------------------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return []  # computed per scrape; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            started = time.monotonic()
            families = list(self._collect())
            took = GaugeMetricFamily(
                "ad_metrics_collect_seconds", "Seconds the last scrape took to compute the pipeline metrics."
            )
            took.add_metric([], time.monotonic() - started)
        yield from families
        yield took

    def _collect(self) -> Iterator[Metric]:
        instance = self._instance
        assets = self._partitioned_assets()
        for key, _ in assets:
            self._indexes[key].refresh(instance, key)

        landed = GaugeMetricFamily(
            "ad_drives_landed", "Drive partitions registered by the landing sensor, per market.", labels=["market"]
        )
        registered = GaugeMetricFamily(
            "ad_drives_registered",
            "Drives with a registry record in the lake (validated by raw_drive), per market.",
            labels=["market"],
        )
        decoded = GaugeMetricFamily(
            "ad_drives_decoded", "Drive partitions with a decoded_signals materialization.", labels=["market"]
        )
        lag = HistogramMetricFamily(
            "ad_ingest_lag_seconds",
            "Seconds from a drive landing to its first decoded_signals materialization (per drive version).",
            labels=["market"],
        )
        for market in self._markets:
            keys = set(instance.get_dynamic_partitions(f"drives_{market}"))
            landed.add_metric([market], len(keys))
            registry = self._registry(market)
            registered.add_metric([market], len(registry))
            decoded_key = AssetKey([market, DECODED_STAGE])
            decoded.add_metric([market], len(instance.get_materialized_partitions(decoded_key) & keys))
            index = self._indexes.get(decoded_key)
            lags = []
            for drive_id, record in registry.items():
                facts = index.partitions.get(drive_id) if index else None
                landed_at_ns = record.get("landed_at_ns")
                if not facts or not facts.timestamps or not isinstance(landed_at_ns, int):
                    continue
                landed_at = landed_at_ns / 1e9
                # The first decode of this version: a later re-decode (e.g. after a DBC change) is not lag.
                at = bisect.bisect_left(facts.timestamps, landed_at)
                first = facts.timestamps[at] if at < len(facts.timestamps) else facts.timestamps[-1]
                lags.append(max(0.0, first - landed_at))
            buckets = [(str(float(b)), sum(1 for v in lags if v <= b)) for b in LAG_BUCKETS_S]
            buckets.append(("+Inf", len(lags)))
            lag.add_metric([market], buckets, sum_value=sum(lags))
        yield from (landed, registered, decoded, lag)

        partitions = GaugeMetricFamily(
            "ad_asset_partitions",
            "Drive partitions of each partitioned asset by status (materialized, failed, in_progress, missing).",
            labels=["market", "asset", "status"],
        )
        stage_bytes = SummaryMetricFamily(
            "ad_stage_bytes",
            "Bytes of each drive's latest materialization per stage (raw_drive: total_bytes; "
            "other stages: mb_per_s x seconds, the bytes read).",
            labels=["market", "stage"],
        )
        stage_seconds = SummaryMetricFamily(
            "ad_stage_seconds",
            "Seconds of each drive's latest materialization per stage (metadata `seconds`).",
            labels=["market", "stage"],
        )
        throughput = GaugeMetricFamily(
            "ad_stage_throughput_mb_per_s",
            "MB/s per stage: bytes / seconds over the drives whose latest materialization reports both.",
            labels=["market", "stage"],
        )
        for key, partitions_def in assets:
            market, stage = _market_of(key), key.path[-1]
            partition_keys = list(instance.get_dynamic_partitions(partitions_def.name or ""))
            status = instance.get_status_by_partition(key, partition_keys, partitions_def) or {}
            counts = dict.fromkeys(("materialized", "failed", "in_progress", "missing"), 0)
            for partition_key in partition_keys:
                value = status.get(partition_key)
                if value == AssetPartitionStatus.MATERIALIZED:
                    counts["materialized"] += 1
                elif value == AssetPartitionStatus.FAILED:
                    counts["failed"] += 1
                elif value == AssetPartitionStatus.IN_PROGRESS:
                    counts["in_progress"] += 1
                else:
                    counts["missing"] += 1
            for name, count in counts.items():
                partitions.add_metric([market, key.to_user_string(), name], count)

            current = set(partition_keys)
            facts = [f for p, f in self._indexes[key].partitions.items() if p in current]
            with_bytes = [f.bytes for f in facts if f.bytes is not None]
            with_seconds = [f.seconds for f in facts if f.seconds is not None]
            if with_bytes:
                stage_bytes.add_metric([market, stage], len(with_bytes), sum(with_bytes))
            if with_seconds:
                stage_seconds.add_metric([market, stage], len(with_seconds), sum(with_seconds))
            both = [(f.bytes, f.seconds) for f in facts if f.bytes is not None and f.seconds]
            if both:
                total_s = sum(s for _, s in both)
                throughput.add_metric([market, stage], sum(b for b, _ in both) / 1e6 / total_s)
        yield from (partitions, stage_bytes, stage_seconds, throughput)

        yield from self._check_metrics()

        runs = GaugeMetricFamily(
            "ad_runs", "Runs per job and status (FAILURE = failed runs).", labels=["job", "status"]
        )
        for job in self._job_names:
            for run_status in RUN_STATUSES:
                count = instance.get_runs_count(RunsFilter(job_name=job, statuses=[run_status]))
                runs.add_metric([job, run_status.value], count)
        yield runs

    def _check_metrics(self) -> Iterator[Metric]:
        failures = GaugeMetricFamily(
            "ad_asset_check_failures",
            "Failed asset check evaluations in the instance's history, per check and severity.",
            labels=["market", "asset", "check", "severity"],
        )
        latest_failed = GaugeMetricFamily(
            "ad_asset_check_latest_failed",
            "1 where the latest evaluation of the check failed, else 0.",
            labels=["market", "asset", "check", "severity"],
        )
        storage = self._instance.event_log_storage
        check_keys = sorted(self._graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name))
        latest = storage.get_latest_asset_check_execution_by_key(check_keys) if check_keys else {}
        for check_key in check_keys:
            by_severity: dict[str, int] = defaultdict(int)
            cursor = None
            seen = 0
            while seen < _CHECK_HISTORY_LIMIT:
                history = storage.get_asset_check_execution_history(
                    check_key, limit=_PAGE, cursor=cursor, status={AssetCheckExecutionRecordStatus.FAILED}
                )
                for record in history:
                    by_severity[_severity(record)] += 1
                seen += len(history)
                if len(history) < _PAGE:
                    break
                cursor = history[-1].id
            labels = [_market_of(check_key.asset_key), check_key.asset_key.to_user_string(), check_key.name]
            for severity, count in sorted(by_severity.items()):
                failures.add_metric([*labels, severity], count)
            record = latest.get(check_key)
            if record is not None and record.status != AssetCheckExecutionRecordStatus.PLANNED:
                failed = record.status == AssetCheckExecutionRecordStatus.FAILED
                latest_failed.add_metric([*labels, _severity(record)], 1.0 if failed else 0.0)
        yield failures
        yield latest_failed


def _severity(record: Any) -> str:
    """ERROR / WARN from the evaluation event; ERROR when the event carries none (Dagster's default)."""
    event = record.event.dagster_event if record.event is not None else None
    evaluation = event.event_specific_data if event is not None else None
    severity = getattr(evaluation, "severity", None)
    return severity.value if severity is not None else "ERROR"


def build_registry(defs: Definitions, instance: DagsterInstance, **kwargs: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(defs, instance, **kwargs))
    return registry


def render(defs: Definitions, instance: DagsterInstance) -> str:
    """One exposition, e.g. for a cron job writing a node-exporter textfile."""
    return generate_latest(build_registry(defs, instance)).decode()


def serve(port: int, host: str = "127.0.0.1", defs: Definitions | None = None, instance: DagsterInstance | None = None):  # type: ignore[no-untyped-def]
    """Start the endpoint in a daemon thread; returns (server, thread). `server.shutdown()` stops it."""
    from prometheus_client import start_http_server

    if defs is None:
        from ad_platform.definitions import defs
    if instance is None:
        instance = local_instance()
    return start_http_server(port, addr=host, registry=build_registry(defs, instance))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=9464, help="port of /metrics (default 9464)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)"
    )
    parser.add_argument("--once", action="store_true", help="print one exposition to stdout and exit")


def run(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore", category=BetaWarning)  # definitions use beta APIs on purpose
    from ad_platform.definitions import defs

    instance = local_instance()
    if args.once:
        sys.stdout.write(render(defs, instance))
        return 0
    server, _ = serve(args.port, args.host, defs=defs, instance=instance)
    print(f"serving pipeline metrics on http://{args.host}:{server.server_port}/metrics", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ad_platform.metrics", description="Prometheus metrics endpoint")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
