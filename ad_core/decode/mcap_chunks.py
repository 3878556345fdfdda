"""Chunk-level MCAP reading: a helper thread reads records front to back, decompresses chunks and checks their CRCs.

Why not mcap's reader: with ``validate_crcs=True`` it also checksums the whole data section on every small read
(~2.3 s/GB), and it parses every record through a byte stream in Python (~1 s/GB). Here:

* the file is read record by record (the 9-byte opcode/length prefix, then the record in one ``read``;
  attachments, metadata and index records are skipped with a seek), so indexed, unindexed and truncated files
  take the same path and nothing is held beyond the chunk being decoded;
* each Chunk record is decompressed with ``zstandard`` / ``lz4`` (both release the GIL), its length checked
  against ``uncompressed_size`` and ``zlib.crc32`` of the uncompressed records compared with
  ``uncompressed_crc`` (when not 0) -- in the helper thread, so it overlaps with the Python work on the previous
  chunk. The data-section CRC of the DataEnd record is not checked (the chunk CRCs cover every message);
* the consumer gets ``Block`` objects: a buffer of concatenated records (a whole decompressed chunk, or a run of
  top-level Schema/Channel/Message records of an unchunked file) and the file offset of the record it came
  from. ``parse_block`` splits a buffer with ``struct.unpack_from``.

Any problem (bad magic, truncated record, CRC mismatch, decompression error, unknown compression, malformed
records) ends the stream with an ``McapReadError`` carrying the byte offset of the record that failed;
everything before it has been delivered, which is what salvage needs. A chunk whose content is damaged (it does
not decompress, to its declared size, with its CRC) also carries the chunk's ordinal (``chunk``).

``scan(path, decompress=False)`` walks the same records without decompressing anything: every record's bounds,
each chunk's header (compression known, records inside the record). That is raw_drive's structural check; the
chunk contents are verified by the decoder, which decompresses them anyway.
"""

from __future__ import annotations

import hashlib
import queue
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

try:
    import lz4.frame as lz4_frame
except ImportError:  # pragma: no cover - lz4 is a dependency of mcap's extras
    lz4_frame = None
try:  # ISA-L's CRC-32 (same polynomial as zlib's, ~9 GB/s vs ~2 GB/s here); installed with asammdf
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover
    from zlib import crc32

MAGIC = b"\x89MCAP0\r\n"
OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK, OP_DATA_END = 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F
TOP_LEVEL_KEEP = (OP_SCHEMA, OP_CHANNEL, OP_MESSAGE)
RUN_BYTES = 1 << 20  # top-level records are handed over in runs of about this size
QUEUE_BLOCKS = 3  # decompressed chunks read ahead (bounded memory: ~3 chunks)
HASH_SLICE = 1 << 20

PREFIX = struct.Struct("<BQ")
_CHUNK_HEAD = struct.Struct("<QQQII")  # start, end, uncompressed_size, uncompressed_crc, compression length
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_MSG_HEAD = struct.Struct("<HIQQ")  # channel_id, sequence, log_time, publish_time (22 bytes)


_local = threading.local()  # one zstd decompression context per reading thread


class McapReadError(Exception):
    """The file could not be read past ``offset`` (byte offset of the failing record). ``chunk``: the 1-based
    ordinal of the chunk whose content is damaged (decompression, size or CRC), None for other problems."""

    def __init__(self, offset: int, cause: str, chunk: int | None = None) -> None:
        super().__init__(f"at byte {offset}: {cause}")
        self.offset = offset
        self.cause = cause
        self.chunk = chunk


class ChunkDamaged(ValueError):
    """A chunk's content does not decompress, to its declared size, with its CRC."""


@dataclass(slots=True)
class Block:
    offset: int  # file offset of the record the buffer came from (chunk record, or first top-level record)
    data: bytes  # concatenated records: opcode u8, length u64, content
    chunk: bool


def decompress(compression: str, data: bytes | memoryview, size: int) -> bytes:
    if compression == "":
        return bytes(data)
    if compression == "zstd":
        dctx = getattr(_local, "zstd", None)
        if dctx is None:
            dctx = _local.zstd = zstandard.ZstdDecompressor()
        return dctx.decompress(data, max_output_size=size)
    if compression == "lz4":
        if lz4_frame is None:  # pragma: no cover
            raise ValueError("lz4 chunk compression needs the lz4 package")
        return lz4_frame.decompress(data)
    raise ValueError(f"unsupported chunk compression {compression!r}")  # chunk_header refused it already


SUPPORTED_COMPRESSIONS = ("", "zstd", "lz4")


def chunk_header(content: bytes | memoryview) -> tuple[int, int, str, int, int]:
    """Chunk record content -> (uncompressed_size, uncompressed_crc, compression, records start, records length).
    Raises ValueError when the header does not fit the record or names an unknown compression."""
    if len(content) < _CHUNK_HEAD.size:
        raise ValueError("chunk record too short")
    _start, _end, usize, ucrc, clen = _CHUNK_HEAD.unpack_from(content, 0)
    pos = _CHUNK_HEAD.size
    compression = bytes(content[pos : pos + clen]).decode("utf-8", "replace")
    pos += clen
    if pos + 8 > len(content):
        raise ValueError("chunk record too short")
    (rlen,) = _U64.unpack_from(content, pos)
    pos += 8
    if compression not in SUPPORTED_COMPRESSIONS:
        raise ValueError(f"unsupported chunk compression {compression!r}")
    return usize, ucrc, compression, pos, rlen


def read_chunk(content: bytes | memoryview) -> tuple[bytes, str]:
    """Chunk record content -> (uncompressed, CRC-checked records, compression). Raises ValueError for a bad
    header, ChunkDamaged for damaged content.

    ``content`` may be a view of a reused read buffer: the result never refers to it."""
    usize, ucrc, compression, pos, rlen = chunk_header(content)
    if pos + rlen > len(content):
        raise ValueError(f"chunk records length {rlen} exceeds the record")
    payload = memoryview(content)[pos : pos + rlen]
    try:
        data = decompress(compression, payload, usize)
    except Exception as exc:  # zstd.ZstdError, lz4 RuntimeError
        raise ChunkDamaged(f"{compression} decompression failed: {type(exc).__name__}: {exc}") from exc
    if len(data) != usize:
        raise ChunkDamaged(f"chunk decompressed to {len(data)} bytes, uncompressed_size says {usize}")
    if ucrc:
        crc = crc32(data)
        if crc != ucrc:
            raise ChunkDamaged(f"chunk CRC mismatch (expected {ucrc:#010x}, computed {crc:#010x})")
    return data, compression


CHUNK_HEADER_READ = 4096  # structural check: the part of a chunk record read for its header


def scan(
    path: Path, stop: threading.Event | None = None, hasher: Any = None, *, decompress: bool = True
) -> Iterator[Block]:
    """Yield the blocks of an MCAP file in file order; raise McapReadError where reading stops.

    With ``hasher`` (a hashlib object) every byte of the file is fed to it as it is read (records that are not
    needed are read instead of skipped), so the file's SHA-256 needs no second pass; complete only when the
    generator finishes without error. ``decompress=False``: chunk records are checked by their header only and
    yielded as empty chunk blocks (the structural check)."""
    size = path.stat().st_size
    with open(path, "rb", buffering=1 << 16) as fh:  # large reads bypass the buffer
        head = fh.read(8)
        update = hasher.update if hasher is not None else None
        if update is not None:
            update(head)
        if head != MAGIC:
            raise McapReadError(0, f"bad magic {head!r}" if len(head) == 8 else "file shorter than the MCAP magic")
        pos = 8
        run = bytearray()
        run_start = -1
        rbuf = bytearray(8 << 20)
        in_data = True
        chunks = 0
        while True:
            if stop is not None and stop.is_set():
                return
            prefix = fh.read(9)
            if update is not None:
                update(prefix)
            if len(prefix) < 9:
                if run:
                    yield Block(run_start, bytes(run), False)
                why = "end of file before the footer" if not prefix else "truncated record header"
                raise McapReadError(pos, f"{why} (file truncated?)")
            op, length = PREFIX.unpack(prefix)
            end = pos + 9 + length
            if end > size:
                if run:
                    yield Block(run_start, bytes(run), False)
                raise McapReadError(
                    pos,
                    f"record (opcode {op:#04x}) of {length} bytes runs past the end of the file "
                    f"({size} bytes; truncated?)",
                )
            if op == OP_DATA_END:  # the summary section follows: repeated schemas/channels, indexes
                if run:
                    yield Block(run_start, bytes(run), False)
                    run.clear()
                in_data = False
                _skip(fh, length, rbuf, update)
            elif op in TOP_LEVEL_KEEP and in_data:
                content = fh.read(length)
                if update is not None:
                    update(content)
                if len(content) != length:
                    raise McapReadError(pos, "truncated record")
                if run_start < 0 or not run:
                    run_start = pos
                run += prefix
                run += content
                if len(run) >= RUN_BYTES:
                    yield Block(run_start, bytes(run), False)
                    run.clear()
            elif op == OP_CHUNK:
                if run:
                    yield Block(run_start, bytes(run), False)
                    run.clear()
                chunks += 1
                if not decompress:
                    _check_chunk_header(fh, pos, length, rbuf, update)
                    yield Block(pos, b"", True)
                    pos = end
                    continue
                if len(rbuf) < length:  # compressed chunks are read into one reused buffer (no page faults)
                    rbuf = bytearray(max(length, 2 * len(rbuf)))
                view = memoryview(rbuf)[:length]
                if _read_into(fh, view, update) != length:
                    raise McapReadError(pos, "truncated chunk record")
                try:
                    data, _comp = read_chunk(view)
                except ChunkDamaged as exc:
                    raise McapReadError(pos, str(exc), chunk=chunks) from exc
                except ValueError as exc:
                    raise McapReadError(pos, str(exc)) from exc
                finally:
                    view.release()
                yield Block(pos, data, True)
            elif op == OP_FOOTER:
                if run:
                    yield Block(run_start, bytes(run), False)
                _skip(fh, length, rbuf, update)
                tail = fh.read(8)
                if update is not None:
                    update(tail)
                    while rest := fh.read(1 << 20):  # bytes after the closing magic still belong to the file
                        update(rest)
                if tail != MAGIC:
                    raise McapReadError(end, "missing or damaged magic after the footer")
                return
            else:  # header, indexes, attachments, metadata, statistics, summary offsets, summary records, unknown
                _skip(fh, length, rbuf, update)
            pos = end


def _check_chunk_header(fh: Any, pos: int, length: int, buf: bytearray, update: Any) -> None:
    """Read the head of the chunk record at ``pos`` (the file is just past its prefix), check it, skip the rest."""
    n = min(length, CHUNK_HEADER_READ)
    head = memoryview(buf)[:n]
    try:
        if _read_into(fh, head, update) != n:
            raise McapReadError(pos, "truncated chunk record")
        try:
            _usize, _ucrc, _compression, start, rlen = chunk_header(head)
        except ValueError as exc:
            raise McapReadError(pos, str(exc)) from exc
        if start + rlen > length:
            raise McapReadError(pos, f"chunk records length {rlen} exceeds the record")
    finally:
        head.release()
    _skip(fh, length - n, buf, update)


def _read_into(fh: Any, view: memoryview, update: Any) -> int:
    """Fill ``view`` from ``fh``; with a hash ``update``, in slices small enough to be hashed while still in cache
    (1.5x faster than hashing a multi-MiB read afterwards). Returns the bytes read."""
    if update is None:
        return fh.readinto(view)
    got = 0
    while got < len(view):
        n = fh.readinto(view[got : got + HASH_SLICE])
        if not n:
            break
        update(view[got : got + n])
        got += n
    return got


def _skip(fh: Any, length: int, buf: bytearray, update: Any) -> None:
    """Move past ``length`` bytes: a seek, or (when hashing) a read into ``buf`` fed to the hash."""
    if update is None:
        fh.seek(length, 1)
        return
    mv = memoryview(buf)
    while length > 0:
        n = _read_into(fh, mv[: min(length, len(buf))], update)
        if not n:
            return
        length -= n
    mv.release()


def parse_block(buf: bytes, offset: int) -> Iterator[tuple[int, int, int]]:
    """(opcode, content start, content end) of every record in a block; McapReadError on malformed records."""
    pos, n = 0, len(buf)
    unpack = PREFIX.unpack_from
    while pos < n:
        if pos + 9 > n:
            raise McapReadError(offset, f"malformed records: {n - pos} stray bytes at the end of a chunk")
        op, length = unpack(buf, pos)
        start = pos + 9
        pos = start + length
        if pos > n:
            raise McapReadError(offset, f"malformed records: record of {length} bytes overruns its chunk")
        yield op, start, pos


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    return bytes(buf[pos : pos + n]).decode("utf-8"), pos + n


def parse_schema(buf: bytes, start: int, end: int) -> tuple[int, str, str, bytes]:
    """Schema record content -> (id, name, encoding, data)."""
    (sid,) = _U16.unpack_from(buf, start)
    name, pos = _string(buf, start + 2)
    encoding, pos = _string(buf, pos)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > end:
        raise ValueError("schema data overruns its record")
    return sid, name, encoding, bytes(buf[pos : pos + n])


def parse_channel(buf: bytes, start: int, end: int) -> tuple[int, int, str, str, dict[str, str]]:
    """Channel record content -> (id, schema_id, topic, message_encoding, metadata)."""
    cid, sid = struct.unpack_from("<HH", buf, start)
    topic, pos = _string(buf, start + 4)
    encoding, pos = _string(buf, pos)
    meta: dict[str, str] = {}
    if pos + 4 <= end:
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        stop = min(pos + n, end)
        while pos < stop:
            k, pos = _string(buf, pos)
            v, pos = _string(buf, pos)
            meta[k] = v
    return cid, sid, topic, encoding, meta


MSG_HEAD = _MSG_HEAD


class ChunkReader:
    """Runs ``scan`` in a helper thread; iterate for blocks. ``close()`` stops the thread early."""

    def __init__(self, path: Path, depth: int = QUEUE_BLOCKS, sha256: bool = False) -> None:
        self.path = path
        self._hasher = hashlib.sha256() if sha256 else None
        self.sha256: str | None = None  # hex digest of the whole file, set once it has been read completely
        self._q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mcap-read-{path.name}", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[str, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for block in scan(self.path, self._stop, self._hasher):
                if not self._put(("block", block)):
                    return
            if self._hasher is not None and not self._stop.is_set():
                self.sha256 = self._hasher.hexdigest()
            self._put(("end", None))
        except McapReadError as exc:
            self._put(("error", exc))
        except Exception as exc:  # OSError, ... : report at the start of the file's unread part
            self._put(("error", McapReadError(-1, f"{type(exc).__name__}: {exc}")))

    def __iter__(self) -> Iterator[Block]:
        while True:
            kind, item = self._q.get()
            if kind == "block":
                yield item  # type: ignore[misc]
            elif kind == "end":
                return
            else:
                raise item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
