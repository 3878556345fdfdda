"""Cheap structural validation and inventory of raw drive logs (MDF4, MCAP, manifests).

"Cheap" means: headers, block structure, summaries and checksums — never decoding the signal data.
Anything that is not what its name claims raises :class:`InvalidLogError` naming the file and the reason,
so the asset can quarantine exactly that file and fail only its own drive.
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ad_common.formats import CANEDGE_CONTAINER, GIT_LFS_POINTER, LogKind, classify
from ad_common.hashing import sha256_file

MCAP_MAGIC = b"\x89MCAP0\r\n"  # the full MCAP v0 magic: a damaged line ending fails here
MDF_MAGIC = b"MDF     "
MDF_UNFINALIZED_MAGIC = b"UnFinMF "  # what loggers write until they finalise a file

__all__ = ["InvalidLogError", "LogInventory", "LogKind", "classify", "inspect_file", "sha256_file"]


class InvalidLogError(Exception):
    """A raw log file is not what it claims to be, or is damaged."""

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class LogInventory:
    """What a raw file holds, as recorded in asset metadata and the catalog."""

    name: str
    kind: LogKind
    size_bytes: int
    sha256: str = ""
    format_version: str = ""
    start_ns: int | None = None
    end_ns: int | None = None
    finalized: bool | None = None
    streams: dict[str, int] = field(default_factory=dict)  # channel group / topic -> samples or messages
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        if self.start_ns is None or self.end_ns is None:
            return None
        return (self.end_ns - self.start_ns) / 1e9

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sniff(path: Path, expected: tuple[bytes, ...], what: str) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(GIT_LFS_POINTER):
        raise InvalidLogError(path, f"is a Git LFS pointer, not {what} (fetch the real file with `git lfs pull`)")
    if head.startswith(CANEDGE_CONTAINER):
        raise InvalidLogError(
            path,
            f"is a CANedge compressed/encrypted container (.MFC/.MFE/.MFM), not plain {what}; "
            "convert it with the vendor's mdf2finalized/decrypt tool first",
        )
    if not head.startswith(expected):
        wanted = " or ".join(repr(magic) for magic in expected)
        raise InvalidLogError(path, f"is not {what}: magic bytes are {head[:8]!r}, expected {wanted}")
    return head


def _group_name(channel_group: Any) -> str:
    # MDF4 groups carry an acquisition name or source; MDF3 groups only a comment.
    source = getattr(channel_group, "acq_source", None)
    return (
        getattr(channel_group, "acq_name", "")
        or (source.name if source is not None else "")
        or getattr(channel_group, "comment", "")
    )


def inspect_mdf4(path: Path) -> LogInventory:
    """Header, finalisation state and channel-group inventory of an MDF4 file via asammdf."""
    head = _sniff(path, (MDF_MAGIC, MDF_UNFINALIZED_MAGIC), "an ASAM MDF file")
    version = head[8:16].decode("ascii", "replace").strip()
    inventory = LogInventory(path.name, "mdf4", path.stat().st_size, format_version=version)
    if version.startswith("4"):
        # IDBLOCK id_unfin_flags / id_custom_unfin_flags: non-zero while a logger has not finalised the file.
        unfin, custom_unfin = struct.unpack_from("<HH", head, 60)
        inventory.finalized = head[0:8] == MDF_MAGIC and unfin == 0 and custom_unfin == 0
        if not inventory.finalized:
            inventory.notes.append(f"unfinalized (flags 0x{unfin:04x}/0x{custom_unfin:04x}), as loggers leave files")

    from ad_core.decode.errors import describe_mdf_error
    from ad_core.decode.isolate import NativeCrash, run_isolated

    try:
        # asammdf's native code can crash (SIGSEGV / SIGABRT) on a damaged file: it runs in a child process
        start_ns, streams, first, last = run_isolated("ad_core.inspect:_mdf_structure", str(path))
    except InvalidLogError:
        raise
    except NativeCrash as exc:
        raise InvalidLogError(
            path, f"MDF structure unreadable: the MDF reader crashed ({exc.describe()}) on this damaged file"
        ) from exc
    except Exception as exc:  # asammdf raises MdfException, but also bare struct.error/ValueError/IndexError
        raise InvalidLogError(path, f"MDF structure unreadable ({describe_mdf_error(exc)})") from exc
    inventory.streams.update(streams)
    inventory.start_ns = start_ns + int((first or 0.0) * 1e9)
    inventory.end_ns = start_ns + int((last or 0.0) * 1e9)
    if not inventory.streams:
        inventory.notes.append("no channel groups")
    return inventory


def _mdf_structure(_send: Any, path: str) -> tuple[int, dict[str, int], float | None, float | None]:
    """Runs in the isolated child: header start time, samples per channel group, first/last master time."""
    from asammdf import MDF  # heavy import, kept local so the sensor process does not pay it

    streams: dict[str, int] = {}
    with MDF(path) as mdf:
        start_ns = int(mdf.header.start_time.timestamp() * 1e9)
        first, last = None, None
        for index, group in enumerate(mdf.groups):
            channel_group = group.channel_group
            name = _group_name(channel_group) or f"group_{index}"
            streams[f"{index}:{name}"] = int(channel_group.cycles_nr)
            if channel_group.cycles_nr:
                # the first and the last record only: reading every master value reads the whole file
                head = mdf.get_master(index, record_offset=0, record_count=1)
                tail = mdf.get_master(index, record_offset=int(channel_group.cycles_nr) - 1, record_count=1)
                if not len(tail):  # fewer records than the group declares (unfinalized): read them all
                    tail = mdf.get_master(index)
                if len(head) and len(tail):
                    first = float(head[0]) if first is None else min(first, float(head[0]))
                    last = float(tail[-1]) if last is None else max(last, float(tail[-1]))
    return start_ns, streams, first, last


def inspect_mcap(path: Path) -> LogInventory:
    """Magic, summary, topic inventory and record structure of an MCAP file (chunk contents: see
    ``_check_structure``)."""
    from mcap.reader import make_reader

    _sniff(path, (MCAP_MAGIC,), "an MCAP file")
    with open(path, "rb") as fh:
        fh.seek(-len(MCAP_MAGIC), 2)
        if fh.read() != MCAP_MAGIC:
            raise InvalidLogError(path, "truncated: the closing MCAP magic is missing (file cut before its footer)")
    inventory = LogInventory(path.name, "mcap", path.stat().st_size)
    try:
        with open(path, "rb") as fh:
            reader = make_reader(fh)
            header = reader.get_header()
            inventory.format_version = f"profile={header.profile or '-'} library={header.library or '-'}"
            summary = reader.get_summary()
        if summary is None:
            inventory.notes.append("no summary section (unindexed); decode will stream the whole file")
        else:
            counts = summary.statistics.channel_message_counts if summary.statistics else {}
            for channel_id, channel in sorted(summary.channels.items()):
                schema = summary.schemas.get(channel.schema_id)
                key = f"{channel.topic} [{channel.message_encoding}/{schema.name if schema else '-'}]"
                inventory.streams[key] = int(counts.get(channel_id, 0))
            if summary.statistics and summary.statistics.message_count:
                inventory.start_ns = int(summary.statistics.message_start_time)
                inventory.end_ns = int(summary.statistics.message_end_time)
        indexed = {c.chunk_start_offset for c in summary.chunk_indexes} if summary is not None else set()
        inventory.notes.append(f"{_check_structure(path, indexed)} chunks, record structure valid")
    except InvalidLogError:
        raise
    except Exception as exc:  # the library raises its own errors, but also bare struct/Unicode/LZ4 errors
        from ad_core.decode.errors import describe_mcap_error

        raise InvalidLogError(path, f"MCAP damaged: {describe_mcap_error(exc)}") from exc
    return inventory


def _check_structure(path: Path, indexed_chunks: set[int]) -> int:
    """Walk every record without decompressing: bounds, chunk headers, and the chunks found where the summary's
    chunk index says they are. Chunk contents (decompression, CRC) are verified by the decoder as it
    decompresses them (decoded_signals quarantines a file whose chunk fails). A file the walk refuses, or one with
    messages outside chunks (covered by the data-section CRC only), is read again by the mcap library with CRC
    validation, whose error says what is wrong. Returns the number of chunks."""
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    from ad_core.decode.mcap_chunks import OP_MESSAGE, McapReadError, parse_block, scan

    chunks: list[int] = []
    fast_error = None
    try:
        for block in scan(path, decompress=False):
            if block.chunk:
                chunks.append(block.offset)
            elif any(op == OP_MESSAGE for op, _start, _end in parse_block(block.data, block.offset)):
                break
        else:
            if indexed_chunks and indexed_chunks != set(chunks):
                missing = sorted(indexed_chunks - set(chunks))[:3]
                raise InvalidLogError(
                    path,
                    f"MCAP damaged: the summary indexes {len(indexed_chunks)} chunks, the data section holds "
                    f"{len(chunks)} (no chunk record at byte(s) {missing})"
                    if missing
                    else f"MCAP damaged: {len(set(chunks) - indexed_chunks)} chunk(s) missing from the summary index",
                )
            return len(chunks)
    except McapReadError as exc:
        fast_error = exc
    with open(path, "rb") as fh:
        count = sum(isinstance(r, Chunk) for r in StreamReader(fh, emit_chunks=True, validate_crcs=True).records)
    if fast_error is not None:  # the library read past what the walk refused
        raise InvalidLogError(path, f"MCAP damaged: {fast_error}")
    return count


def inspect_manifest(path: Path) -> LogInventory:
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidLogError(path, f"drive manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise InvalidLogError(path, "drive manifest must be a JSON object")
    inventory = LogInventory(path.name, "manifest", path.stat().st_size)
    if isinstance(manifest.get("start_time_ns"), int):
        inventory.start_ns = manifest["start_time_ns"]
        if isinstance(manifest.get("duration_s"), int | float):
            inventory.end_ns = inventory.start_ns + int(manifest["duration_s"] * 1e9)
    return inventory


def inspect_file(path: Path) -> LogInventory:
    """Validate one landed file by its kind and return its inventory, with its content sha256 (hashed on the
    second core while the file is validated)."""
    kind = classify(path)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hasher:
        digest = hasher.submit(sha256_file, path)
        try:
            if kind == "mdf4":
                inventory = inspect_mdf4(path)
            elif kind == "mcap":
                inventory = inspect_mcap(path)
            elif kind == "manifest":
                inventory = inspect_manifest(path)
            else:
                inventory = LogInventory(path.name, kind, path.stat().st_size)
        finally:
            digest.cancel()
        inventory.sha256 = digest.result()
    return inventory
