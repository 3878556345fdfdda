"""`python -m ad_platform lineage <engine sha256 | model@alias | model/version>`: the chain from an engine to the
raw bytes it learned from, resolved from the current lake and registry, and flagged where it is broken or
where the model lost its approval. The same chain, as recorded at build time, is the catalog view
``engine_lineage`` (``duckdb .state/catalog.duckdb "select * from engine_lineage"``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ad_common.hashing import sha256_file
from ad_common.lake_layout import ENGINE_LINEAGE, ENGINES, engine_record_key
from ad_core.compile import lineage
from ad_core.train import registry
from ad_core.train.data import read_manifest
from ad_resources.catalog import DuckDBCatalog
from ad_resources.lake import Lake

SHA_RE = re.compile(r"[0-9a-f]{8,64}")


class LineageError(Exception):
    """The reference names nothing known (no such engine, model, alias or version)."""


@dataclass
class Lineage:
    engine: dict[str, Any] | None
    version: ModelVersion
    approved_now: str | None
    chain: pa.Table
    manifest_sha256_now: str | None
    problems: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.flags


def _engines(catalog: DuckDBCatalog, where: str, params: list[object]) -> list[dict[str, Any]]:
    with catalog.connect() as con:
        cur = con.execute(f"SELECT * FROM {ENGINES.name} WHERE {where} ORDER BY built_at_ns DESC", params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise LineageError(f"{name} version {version} is not registered") from exc


def find(ref: str, client: MlflowClient, catalog: DuckDBCatalog) -> tuple[dict[str, Any] | None, ModelVersion]:
    """The engine (None if the version has none) and model version a reference names."""
    ref = ref.strip()
    if SHA_RE.fullmatch(ref):
        rows = _engines(catalog, "engine_sha256 LIKE ?", [f"{ref}%"])
        if not rows:
            raise LineageError(f"no engine with sha256 {ref} in the catalog ({ENGINES.name})")
        if len({r["engine_sha256"] for r in rows}) > 1:
            raise LineageError(f"sha256 prefix {ref} names {len(rows)} engines: give more digits")
        engine = rows[0]
        return engine, _version(client, engine["model_name"], engine["model_version"])
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = registry.alias_version(client, name, alias)
        if mv is None:
            raise LineageError(f"{name} has no version with alias {alias!r}")
    else:
        m = re.fullmatch(r"(.+?)[/:](\d+)", ref)
        if not m:
            raise LineageError(f"{ref!r}: expected an engine sha256, MODEL@ALIAS or MODEL/VERSION")
        mv = _version(client, m.group(1), m.group(2))
    rows = _engines(catalog, "model_name = ? AND model_version = ?", [mv.name, str(mv.version)])
    rows.sort(key=lambda r: (r["target"] != "onnx-cpu", -r["built_at_ns"]))
    return (rows[0] if rows else None), mv


def resolve(ref: str, client: MlflowClient, lake: Lake, catalog: DuckDBCatalog) -> Lineage:
    engine, mv = find(ref, client, catalog)
    approved = registry.alias_version(client, mv.name, registry.APPROVED)
    approved_now = None if approved is None else str(approved.version)
    head = {
        "engine_sha256": engine["engine_sha256"] if engine else None,
        "target": engine["target"] if engine else None,
        "model_name": mv.name,
        "model_version": str(mv.version),
        "mlflow_run_id": mv.run_id,
        "manifest_sha256": mv.tags.get("manifest_sha256"),
        "manifest_path": mv.tags.get("manifest_path"),
    }
    problems: list[str] = []
    flags: list[str] = []
    sha_now = None
    chain = ENGINE_LINEAGE.schema.empty_table()
    with lake.file_resolver() as res:
        manifest_path = res(head["manifest_path"]) if head["manifest_path"] else None
        if manifest_path is None or not manifest_path.is_file():
            problems.append(f"split manifest {head['manifest_path']} is not in the lake")
        else:
            sha_now = sha256_file(manifest_path)
            if sha_now != head["manifest_sha256"]:
                problems.append(
                    f"split manifest {head['manifest_path']} changed since training (sha256 {sha_now[:12]} != "
                    f"{(head['manifest_sha256'] or '')[:12]})"
                )
            chain = lineage.resolve_chain(head, read_manifest(manifest_path), res)
    problems += [p for p in lineage.missing_links(chain) if not (engine is None and p.endswith("no engine_sha256"))]
    if engine is None:
        market = mv.name.removeprefix("steering-")
        flags.append(f"no engine built from {mv.name} version {mv.version} yet (materialize {market}/onnx_engine)")
    else:
        if engine["parity_passed"] is False:
            flags.append(f"engine {engine['engine_sha256'][:12]} FAILED its parity check")
        recorded = lake.exists(
            ENGINE_LINEAGE.path(engine["market"], engine_record_key(engine["target"], engine["engine_sha256"]))
        )
        if recorded:
            with lake.local_dir(ENGINE_LINEAGE.market_folder(engine["market"])) as folder:
                stem = engine_record_key(engine["target"], engine["engine_sha256"])
                then = pq.read_table(folder / f"{stem}.parquet")
            if lineage.chain_digest(then) != lineage.chain_digest(chain):
                problems.append("the lake changed since the engine was built: its recorded lineage differs")
        else:
            problems.append("no lineage was recorded when the engine was built")
    if approved_now != str(mv.version):
        revoked = f" (revoked by {mv.tags['revoked.by']} at {mv.tags.get('revoked.at')}: {mv.tags.get('revoked.note')})"
        flags.append(
            f"{mv.name} version {mv.version} is NOT approved now"
            + (revoked if "revoked.by" in mv.tags else "")
            + f"; approved is {'version ' + approved_now if approved_now else 'no version'}"
            + (": this engine must not be deployed" if engine else "")
        )
    return Lineage(engine, mv, approved_now, chain, sha_now, sorted(set(problems)), flags)


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f} MB"


def render(lin: Lineage) -> str:
    mv, e, out = lin.version, lin.engine, []
    if e:
        parity = (
            f"parity {'passed' if e['parity_passed'] else 'FAILED'} (max |diff| {e['parity_max_abs_diff']:.2e} deg, "
            f"MAE {e['mae_engine']:.4f} vs {e['mae_reference']:.4f})"
            if e["parity_max_abs_diff"] is not None
            else "parity: not measured"
        )
        latency = (
            f"latency p50 {e['latency_p50_ms']:.2f} ms / p99 {e['latency_p99_ms']:.2f} ms ({e['latency_where']})"
            if e["latency_p50_ms"] is not None and e["latency_p99_ms"] is not None
            else ""
        )
        out.append(f"engine {e['target']} sha256 {e['engine_sha256']}")
        out.append(f"  {e['engine_path']}, {_mb(e['size_bytes'])}, built {e['built_at']} by {e['code_version']}")
        out.append(f"  {parity}" + (f"; {latency}" if latency else ""))
    else:
        out.append("engine: none built from this model version")
    alias = "approved" if lin.approved_now == str(mv.version) else "NOT approved"
    by = f", approved by {mv.tags['approval.by']} at {mv.tags.get('approval.at')}" if "approval.by" in mv.tags else ""
    out.append(f"└─ model {mv.name} version {mv.version} [{alias}{by}]")
    out.append(f"   MLflow run {mv.run_id}, code {mv.tags.get('code_version')}")
    out.append(
        f"   └─ split manifest {mv.tags.get('manifest_path')} sha256 {mv.tags.get('manifest_sha256')} "
        f"(split version {mv.tags.get('split_version')}; frames {json.dumps(lineage.split_frames(lin.chain))})"
    )
    rows = lin.chain.to_pylist()
    drives: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        drives.setdefault((r["market"], r["drive_id"], r["split"]), []).append(r)
    for i, ((market, drive_id, split), files) in enumerate(drives.items()):
        last = i == len(drives) - 1
        branch, pad = ("└─", "   ") if last else ("├─", "│  ")
        d = files[0]
        out.append(
            f"      {branch} drive {market}/{drive_id} version {d['drive_version']} ({split}: {d['frames']} frames, "
            f"{d['excluded_frames']} excluded)"
        )
        ok = "" if d["synced_sha256_now"] == d["synced_sha256"] else f" (NOW {d['synced_sha256_now']})"
        out.append(f"      {pad}  synced {d['synced_path']} sha256 {d['synced_sha256']}{ok}")
        dbcs = json.loads(d["dbc_files"] or "{}")
        dbc = ", ".join(f"{n} sha256 {s}" for n, s in dbcs.items()) or "no CAN tables"
        out.append(
            f"      {pad}  decoded {d['decoded_path']}: {d['decoded_tables']} tables, decoder {d['decoder_versions']}, "
            f"DBC {dbc}"
        )
        sensors = json.loads(d["sensor_profile"] or "{}")
        out.append(
            f"      {pad}  sensors: " + ", ".join(f"{s} ({v['kind']}, {v['rate_hz']:g} Hz)" for s, v in sensors.items())
        )
        for f in files:
            size = _mb(f["raw_size_bytes"])
            out.append(f"      {pad}  raw {f['raw_file']} ({f['raw_kind']}, {size}) sha256 {f['raw_sha256']}")
    for p in lin.problems:
        out.append(f"MISSING LINK: {p}")
    for f in lin.flags:
        out.append(f"FLAG: {f}")
    n_files = len(rows)
    out.append(
        f"lineage {'complete' if not lin.problems else 'INCOMPLETE'}: {len(drives)} drive(s), {n_files} raw file(s)"
        + ("" if lin.flags else "; model approved")
    )
    return "\n".join(out)
