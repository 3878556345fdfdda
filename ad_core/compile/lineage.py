"""The lineage of an engine, from its split manifest down to the raw bytes (pure: lake files in, a table out).

For every drive the manifest lists: its frames per split, the synced frames file (the sha256 the manifest
pinned and the file's sha256 now), the decoded tables (decoder versions, the DBC files and sha256 the CAN
tables were decoded with, the streams and rates: the drive's sensor profile) and every registered raw file
with its sha256 (the drive registry). One row per raw file, in ``ENGINE_LINEAGE``'s schema; a drive whose
records are missing still gets a row, with nulls where a link is missing, so :func:`missing_links` can name it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ad_common.hashing import sha256_file
from ad_common.lake_layout import DECODED_STREAMS, ENGINE_LINEAGE, RAW_FILES, decoded_path, registry_path

Resolve = Callable[[str], Path]  # lake-relative path -> local file (may not exist)

# Links every row must have; a null in one of them is a broken chain.
REQUIRED = (
    "engine_sha256",
    "model_version",
    "mlflow_run_id",
    "manifest_sha256",
    "drive_id",
    "drive_version",
    "synced_sha256",
    "synced_sha256_now",
    "decoder_versions",
    "raw_file",
    "raw_sha256",
)


def _read(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist() if path.is_file() else []


def _decoded(resolve: Resolve, market: str, drive_id: str) -> dict[str, Any]:
    streams = _read(resolve(DECODED_STREAMS.path(market, drive_id)))
    folder = decoded_path(market, drive_id)
    dbcs: dict[str, str] = {}
    for s in streams:
        if not s.get("parquet") or s.get("kind") != "can":
            continue
        table = resolve(s["parquet"])
        if table.is_file():
            kv = pq.ParquetFile(table).schema_arrow.metadata or {}
            if b"dbc_file" in kv:
                dbcs[kv[b"dbc_file"].decode()] = kv.get(b"dbc_sha256", b"").decode()
    ok = [s for s in streams if s.get("status") in (None, "ok")]
    return {
        "decoded_path": folder if streams else None,
        "decoded_tables": len(ok) if streams else None,
        "decoder_versions": ",".join(sorted({s["decoder_version"] for s in streams if s.get("decoder_version")}))
        or None,
        "dbc_files": json.dumps(dict(sorted(dbcs.items()))),
        "sensor_profile": json.dumps(
            {
                s["stream"]: {"kind": s["kind"], "rate_hz": round(s["rate_hz"] or 0.0, 3), "rows": s["rows"]}
                for s in sorted(ok, key=lambda s: s["stream"])
                if s.get("kind") != "can"
            }
        ),
    }


def resolve_chain(engine: Mapping[str, Any], manifest: pa.Table, resolve: Resolve) -> pa.Table:
    """The chain of ``engine`` (``engine_sha256``, ``target``, ``model_name``, ``model_version``,
    ``mlflow_run_id``, ``manifest_sha256``, ``manifest_path``) through ``manifest`` to the raw files."""
    head = {k: engine.get(k) for k in ENGINE_LINEAGE.schema.names[:7]}
    rows: list[dict[str, Any]] = []
    drives = manifest.group_by(["market", "drive_id", "split", "synced_path", "synced_sha256"]).aggregate(
        [("frame_index", "count"), ("excluded", "sum")]
    )
    for d in sorted(drives.to_pylist(), key=lambda r: (r["market"], r["drive_id"], r["split"])):
        market, drive_id = d["market"], d["drive_id"]
        registry = {}
        reg_path = resolve(registry_path(market, drive_id))
        if reg_path.is_file():
            registry = json.loads(reg_path.read_text())
        synced = resolve(d["synced_path"])
        drive = {
            **head,
            "market": market,
            "drive_id": drive_id,
            "drive_version": registry.get("version"),
            "drive_fingerprint": registry.get("fingerprint"),
            "split": d["split"],
            "frames": int(d["frame_index_count"]),
            "excluded_frames": int(d["excluded_sum"] or 0),
            "synced_path": d["synced_path"],
            "synced_sha256": d["synced_sha256"],
            "synced_sha256_now": sha256_file(synced) if synced.is_file() else None,
            **_decoded(resolve, market, drive_id),
        }
        raw = {r["file"]: r for r in _read(resolve(RAW_FILES.path(market, drive_id)))}
        files = registry.get("files") or {}
        names = sorted(set(files) | set(raw)) or [None]
        for name in names:
            rec, inv = files.get(name, {}), raw.get(name, {})
            rows.append(
                {
                    **drive,
                    "raw_file": name,
                    "raw_kind": inv.get("kind"),
                    "raw_size_bytes": rec.get("size", inv.get("size_bytes")),
                    "raw_sha256": rec.get("sha256", inv.get("sha256")),
                }
            )
    return pa.Table.from_pylist(rows, schema=ENGINE_LINEAGE.schema)


def missing_links(chain: pa.Table) -> list[str]:
    """Every broken link of the chain, named: a null required column, a synced file whose bytes changed since
    the manifest pinned them, a registry hash that disagrees with the raw-file inventory."""
    problems: list[str] = []
    if chain.num_rows == 0:
        return ["the split manifest lists no drives"]
    for r in chain.to_pylist():
        where = f"{r['market']}/{r['drive_id']}" + (f" {r['raw_file']}" if r["raw_file"] else "")
        for col in REQUIRED:
            if r[col] in (None, ""):
                problems.append(f"{where}: no {col}")
        if r["synced_sha256_now"] and r["synced_sha256_now"] != r["synced_sha256"]:
            problems.append(
                f"{where}: synced frames changed since the manifest (sha256 {r['synced_sha256_now'][:12]} != "
                f"{r['synced_sha256'][:12]})"
            )
    return sorted(set(problems))


def drive_summary(chain: pa.Table) -> pa.Table:
    """One row per drive (the raw-file rows collapsed)."""
    cols = [c for c in chain.schema.names if not c.startswith("raw_")]
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in chain.select(cols).to_pylist():
        seen.setdefault((r["market"], r["drive_id"], r["split"]), r)
    return pa.Table.from_pylist(list(seen.values()))


def chain_digest(chain: pa.Table) -> str:
    """One sha256 over the hashes of the chain (manifest, synced, DBC and raw), for comparing two chains."""
    import hashlib

    cols = ["manifest_sha256", "market", "drive_id", "synced_sha256", "dbc_files", "raw_file", "raw_sha256"]
    t = chain.select(cols).sort_by([(c, "ascending") for c in [*cols[1:3], "raw_file"]])
    return hashlib.sha256(json.dumps(t.to_pylist(), sort_keys=True).encode()).hexdigest()


def split_frames(chain: pa.Table) -> dict[str, int]:
    drives = drive_summary(chain)
    if drives.num_rows == 0:
        return {}
    agg = drives.group_by("split").aggregate([("frames", "sum")])
    counts = pc.cast(agg.column("frames_sum"), pa.int64()).to_pylist()
    return dict(zip(agg.column("split").to_pylist(), counts, strict=True))
