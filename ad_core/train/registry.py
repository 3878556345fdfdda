"""The model registry's approval gate: aliases and tags only (registry stages are deprecated in MLflow).

* ``candidate``: set by training when every automated gate check passed (``gate.<check>`` version tags).
* ``approved``: moved only by :func:`approve` (a named human, a note), which refuses a version whose gate did
  not pass; :func:`rollback` moves it back to the previously approved version (or removes it). Both return an
  :class:`AuditRecord` for the catalog and write the same facts to the version's MLflow tags.
* ``production``: set on release by the compile/deploy stage (not here).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pyarrow as pa
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ad_common.lake_layout import MODEL_APPROVALS

CANDIDATE, APPROVED, PRODUCTION = "candidate", "approved", "production"
GATE_PREFIX = "gate."
GATE_STATUS = "gate.status"
PASSED, FAILED = "passed", "failed"


class GateRefused(Exception):
    """An approval the gate does not allow (a failed or missing check, an unknown version, no approver)."""


def model_name(market: str) -> str:
    """One registered model per task and market: ``steering-de``."""
    return f"steering-{market}"


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def record_gate(client: MlflowClient, name: str, version: str, results: dict[str, bool]) -> bool:
    """Write each check's outcome to the version's tags; all passed -> the ``candidate`` alias. Returns that."""
    for check, passed in results.items():
        client.set_model_version_tag(name, version, f"{GATE_PREFIX}{check}", PASSED if passed else FAILED)
    ok = bool(results) and all(results.values())
    client.set_model_version_tag(name, version, GATE_STATUS, PASSED if ok else FAILED)
    if ok:
        client.set_registered_model_alias(name, CANDIDATE, version)
    return ok


def failed_checks(version: ModelVersion) -> list[str]:
    return sorted(
        k[len(GATE_PREFIX) :]
        for k, v in version.tags.items()
        if k.startswith(GATE_PREFIX) and k != GATE_STATUS and v == FAILED
    )


@dataclass(frozen=True)
class AuditRecord:
    """One approval or rollback: who, when, which version, with which metrics and manifest."""

    model: str
    version: str
    action: str  # "approve" | "rollback"
    actor: str  # who approved / rolled back
    note: str
    at: str  # ISO 8601 UTC
    at_ns: int
    previous_version: str | None
    metrics: str  # JSON {name: value} of the version's test metrics
    manifest_sha256: str | None
    code_version: str | None
    mlflow_run_id: str | None

    def to_table(self) -> pa.Table:
        return pa.Table.from_pylist([asdict(self)], schema=MODEL_APPROVALS.schema)


def _record(
    client: MlflowClient, mv: ModelVersion, action: str, by: str, note: str, previous: str | None
) -> AuditRecord:
    at_ns = time.time_ns()
    metrics = {}
    if mv.run_id:
        metrics = {k: v for k, v in client.get_run(mv.run_id).data.metrics.items() if k.startswith("test_")}
    return AuditRecord(
        model=mv.name,
        version=str(mv.version),
        action=action,
        actor=by,
        note=note,
        at=datetime.fromtimestamp(at_ns / 1e9, UTC).isoformat(timespec="seconds"),
        at_ns=at_ns,
        previous_version=previous,
        metrics=json.dumps(metrics, sort_keys=True),
        manifest_sha256=mv.tags.get("manifest_sha256"),
        code_version=mv.tags.get("code_version"),
        mlflow_run_id=mv.run_id,
    )


def _get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise GateRefused(f"{name} version {version} is not registered") from exc


def approve(client: MlflowClient, name: str, version: str, by: str, note: str) -> AuditRecord:
    """Move ``approved`` to ``version`` if its gate passed; tag who/when/why on the version."""
    if not by.strip():
        raise GateRefused("an approval needs the approver's name (--by)")
    mv = _get_version(client, name, version)
    status = mv.tags.get(GATE_STATUS)
    if status != PASSED:
        failed = failed_checks(mv)
        why = f"failed gate checks: {', '.join(failed)}" if failed else "its gate checks have not run"
        raise GateRefused(f"refusing to approve {name} version {version}: {why}")
    current = alias_version(client, name, APPROVED)
    previous = str(current.version) if current is not None else None
    if previous == str(version):
        raise GateRefused(f"{name} version {version} is already approved")
    record = _record(client, mv, "approve", by, note, previous)
    client.set_registered_model_alias(name, APPROVED, str(version))
    for key, value in {
        "approval.by": by,
        "approval.at": record.at,
        "approval.note": note,
        "approval.previous_version": previous or "",
    }.items():
        client.set_model_version_tag(name, str(version), key, value)
    return record


def rollback(client: MlflowClient, name: str, by: str, note: str, to_version: str | None = None) -> AuditRecord:
    """Move ``approved`` back: to ``to_version`` (a version approved before) or the one approved before the
    current; with neither, remove the alias. Tags the revoked version."""
    if not by.strip():
        raise GateRefused("a rollback needs the name of who rolls back (--by)")
    current = alias_version(client, name, APPROVED)
    if current is None:
        raise GateRefused(f"{name} has no approved version to roll back")
    target = to_version or current.tags.get("approval.previous_version") or None
    if target is not None:
        mv = _get_version(client, name, target)
        if "approval.by" not in mv.tags:
            raise GateRefused(f"{name} version {target} was never approved: approve it instead of rolling back to it")
        client.set_registered_model_alias(name, APPROVED, str(target))
    else:
        client.delete_registered_model_alias(name, APPROVED)
    record = _record(client, current, "rollback", by, note, target)
    for key, value in {"revoked.by": by, "revoked.at": record.at, "revoked.note": note}.items():
        client.set_model_version_tag(name, str(current.version), key, value)
    return record
