"""Structured JSON-lines logs for log aggregation (Loki, CloudWatch, Elasticsearch): one object per line.

Fields: ``timestamp`` (UTC ISO 8601), ``level``, ``logger``, ``message`` (the message as logged, without
Dagster's ``job - run_id - step -`` prefix), ``run_id``, ``job``, ``step``, ``asset_key`` (or ``asset_keys``
for a multi-asset step), ``partition`` (or ``partition_range`` for a batched backfill run) and ``drive`` (the same
key: drive assets are partitioned by drive id), ``market`` (the asset key's first part, ``de/raw_drive`` -> ``de``),
``event_type`` (Dagster event, e.g. ``ASSET_MATERIALIZATION``), ``error`` (a failure event's error and cause
chain) and ``exc_info`` for exceptions. Absent values are
omitted. Messages and tracebacks are redacted (:func:`redact`): URL credentials, http(s) URL paths and queries
(webhook URLs are secrets), ``password=...``-style pairs and the values of known secret environment variables.

``AD_LOG_FORMAT=json`` turns the ``console`` logger of :func:`platform_loggers` into this formatter too, so local
runs and Kubernetes run/step pods (the Helm values set it) print JSON lines without any run config.

Two ways to switch it on:

1. Per job, as a Dagster logger: ``Definitions(loggers=platform_loggers())`` (console + json) and the run config
   ``{"loggers": {"json": {"config": {"log_level": "INFO"}}}}`` (the launchpad, a schedule or ``run_config=``).
   Asset-key attribution comes from the job's asset layer.
2. For every run of an instance, without touching run config: ``python_logs`` in ``dagster.yaml``::

       python_logs:
         dagster_handler_config:
           handlers:
             json:
               class: logging.StreamHandler
               stream: ext://sys.stdout
               formatter: json
               level: INFO
           formatters:
             json:
               (): ad_platform.json_logging.JsonLineFormatter

   Here the step's asset key is derived from the op name (``de__raw_drive`` -> ``de/raw_drive``), which is how
   Dagster names the op of a single ``@asset``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dagster import Field, InitLoggerContext, LoggerDefinition, colored_console_logger, logger
from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR

from ad_common.redaction import redact

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
LOG_FORMAT_ENV = "AD_LOG_FORMAT"


def json_console_enabled() -> bool:
    """``AD_LOG_FORMAT=json``: the console logger writes JSON lines (anything else: Dagster's colored console)."""
    return os.environ.get(LOG_FORMAT_ENV, "").strip().lower() == "json"


def _asset_keys_by_step(job_def: Any) -> dict[str, list[str]]:
    """Op name -> the asset keys it materializes, from the job's asset layer (empty for op-only jobs)."""
    out: dict[str, list[str]] = {}
    try:
        layer = job_def.asset_layer
        for key in layer.executable_asset_keys:
            node = layer.get_op_output_handle(key).node_handle.to_string()
            out.setdefault(node, []).append(key.to_user_string())
    except Exception:  # attribution is best effort: a log line must never fail a run
        return {}
    return out


class JsonLineFormatter(logging.Formatter):
    """Formats Dagster's log records (they carry ``record.dagster_meta``) and plain records as one JSON line."""

    def __init__(self, asset_keys_by_step: Mapping[str, list[str]] | None = None) -> None:
        super().__init__()
        self._asset_keys_by_step = dict(asset_keys_by_step or {})

    def to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        meta: Mapping[str, Any] = getattr(record, LOG_RECORD_METADATA_ATTR, None) or {}
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(
                str(meta["orig_message"] if meta.get("orig_message") is not None else record.getMessage())
            ),
            "run_id": meta.get("run_id"),
            "job": meta.get("job_name"),
            "step": meta.get("step_key"),
        }
        tags: Mapping[str, str] = meta.get("job_tags") or {}
        if PARTITION_TAG in tags:
            line["partition"] = line["drive"] = tags[PARTITION_TAG]
        elif RANGE_START_TAG in tags:
            line["partition_range"] = [tags[RANGE_START_TAG], tags.get(RANGE_END_TAG)]
        event = meta.get("dagster_event")
        if event is not None:
            line["event_type"] = event.event_type_value
            # STEP_FAILURE/RUN_FAILURE messages say only "failed": the error (with its cause chain) is the event's.
            error = getattr(getattr(event, "event_specific_data", None), "error", None)
            if error is not None and hasattr(error, "to_string"):
                line["error"] = redact(error.to_string())
        keys = self._asset_keys(meta.get("step_key"), event)
        if len(keys) == 1:
            line["asset_key"] = keys[0]
        elif keys:
            line["asset_keys"] = keys
        # Assets are keyed <market>/<name>: one market per step, also for multi-asset steps.
        markets = {k.split("/", 1)[0] for k in keys if "/" in k}
        if len(markets) == 1:
            line["market"] = markets.pop()
        if record.exc_info:
            line["exc_info"] = redact(self.formatException(record.exc_info))
        return {k: v for k, v in line.items() if v is not None}

    def _asset_keys(self, step_key: str | None, event: Any) -> list[str]:
        event_key = getattr(event, "asset_key", None) if event is not None else None
        if event_key is not None:
            return [event_key.to_user_string()]
        if not step_key:
            return []
        op = step_key.split("[", 1)[0]  # dynamic steps: op[mapping_key]
        if op in self._asset_keys_by_step:
            return self._asset_keys_by_step[op]
        return [op.replace("__", "/")] if self._asset_keys_by_step == {} and "__" in op else []

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.to_dict(record), default=str, ensure_ascii=False)


@logger(
    config_schema={
        "log_level": Field(str, is_required=False, default_value="INFO"),
        "stream": Field(str, is_required=False, default_value="stderr", description="stdout or stderr"),
        "name": Field(str, is_required=False, default_value="ad_platform_json"),
    },
    description="JSON lines (timestamp, level, run_id, job, step, asset_key, partition, event_type, message).",
)
def json_logger(init_context: InitLoggerContext) -> logging.Logger:
    config = init_context.logger_config
    # A fresh Logger object per run (not logging.getLogger): no handlers pile up across runs in one process.
    out = logging.Logger(config["name"], level=config["log_level"].upper())
    handler = logging.StreamHandler(sys.stdout if config["stream"] == "stdout" else sys.stderr)
    handler.setFormatter(JsonLineFormatter(_asset_keys_by_step(init_context.job_def)))
    out.addHandler(handler)
    return out


def platform_loggers() -> dict[str, LoggerDefinition]:
    """The loggers for ``Definitions(loggers=...)``: ``console`` must stay, because a job's logger set replaces
    Dagster's default one and run configs (``ad_platform/runner.py``) configure ``console`` by name.

    With ``AD_LOG_FORMAT=json`` (read when the Definitions are built) ``console`` is the JSON logger: same
    config keys (``log_level``), stderr like the colored one."""
    return {"console": json_logger if json_console_enabled() else colored_console_logger, "json": json_logger}
