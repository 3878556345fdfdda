"""Decode one drive: its MDF4 (incl. raw CAN + DBC) and MCAP files -> one Parquet file per stream."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ad_common.formats import sniff
from ad_common.hashing import sha256_file
from ad_common.memory import release_memory

from .isolate import NativeCrash, run_isolated
from .mcap_reader import McapDecoder
from .parquet_out import SinkManager
from .report import CorruptChunk, DecodeError, DriveDecodeReport, StreamReport
from .version import DECODER_VERSION


def sniff_format(path: Path) -> str:
    """'mdf' or 'mcap' from the file's magic bytes; raises DecodeError naming what the file is instead."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise DecodeError(f"{path.name}: cannot open: {exc}", file=str(path)) from exc
    kind, why = sniff(head)
    if kind is None:
        raise DecodeError(f"{path.name}: not an MDF or MCAP file: {why}", file=str(path))
    return kind


_GC_LOCK = threading.Lock()
_GC_STATE: dict[str, object] = {"depth": 0, "saved": None}
GC_GEN0_THRESHOLD = 50_000


@contextlib.contextmanager
def _relaxed_gc() -> object:
    """Raise the generation-0 GC threshold while a drive decodes (restored afterwards).

    Decoding allocates millions of short-lived tuples/dicts (message offsets, rows); with the default threshold
    (700) the collector runs thousands of times and its full passes walk every object of asammdf/pandas/sympy:
    ~0.4 s per GB. Collection still happens, just less often."""
    with _GC_LOCK:
        if _GC_STATE["depth"] == 0:
            saved = gc.get_threshold()
            _GC_STATE["saved"] = saved
            gc.set_threshold(max(saved[0], GC_GEN0_THRESHOLD), *saved[1:])
        _GC_STATE["depth"] = int(_GC_STATE["depth"]) + 1  # type: ignore[call-overload]
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_STATE["depth"] = int(_GC_STATE["depth"]) - 1  # type: ignore[call-overload]
            if _GC_STATE["depth"] == 0 and _GC_STATE["saved"] is not None:
                gc.set_threshold(*_GC_STATE["saved"])  # type: ignore[misc]


def decode_drive(
    inputs: Sequence[Path],
    out_dir: Path,
    dbc_files: Sequence[Path] = (),
    *,
    log: Callable[[str], None] | None = None,
    sha256: Mapping[str, str] | None = None,
    fail_on_corrupt_chunk: bool = False,
) -> DriveDecodeReport:
    """Decode one drive's files into ``out_dir`` (an existing, empty folder; the caller makes it atomic).

    ``sha256``: content hashes already verified by the caller (raw_drive's registry), by file name; those files
    are not hashed again (the caller made sure they have not changed since). Raises DecodeError when none of
    the files could be decoded at all. Per-file and per-stream problems are recorded in ``report.errors`` and
    in the stream reports (status ``skipped`` / ``salvaged``). An MCAP chunk that fails its CRC (or does not
    decompress) ends that file's read, salvaging what came before; with ``fail_on_corrupt_chunk`` it raises
    CorruptChunk instead (raw_drive checked the structure only: the file is damaged and gets quarantined).
    """
    try:
        with _relaxed_gc():
            return _decode_drive(inputs, out_dir, dbc_files, log, dict(sha256 or {}), fail_on_corrupt_chunk)
    finally:
        release_memory()


def _decode_drive(
    inputs: Sequence[Path],
    out_dir: Path,
    dbc_files: Sequence[Path],
    log: Callable[[str], None] | None,
    known_sha256: dict[str, str],
    fail_on_corrupt_chunk: bool,
) -> DriveDecodeReport:
    t0 = time.perf_counter()
    logf = log or (lambda _m: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted({Path(p) for p in inputs}, key=lambda p: (p.name, str(p)))
    if not files:
        raise DecodeError("no input files given")
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        raise DecodeError(f"input file names must be unique within a drive: {names}")
    report = DriveDecodeReport(files=[str(p) for p in files])
    report.bytes_in = sum(p.stat().st_size for p in files if p.exists())

    failed: list[str] = []
    kinds: dict[Path, str] = {}
    for p in files:
        try:
            kinds[p] = sniff_format(p)
        except DecodeError as exc:
            failed.append(str(exc))
    # MCAP files are hashed by their reader as they are read (no second pass), MDF files by the MDF decoder
    # process; the others here, beside decoding
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    hashes: dict[str, Future[str]] = {
        p.name: hasher.submit(sha256_file, p)
        for p in files
        if p.exists() and kinds.get(p) not in ("mcap", "mdf") and p.name not in known_sha256
    }
    manager = SinkManager(out_dir)
    try:
        base_meta = {"decoder_version": DECODER_VERSION}

        mdf_files = [p for p in files if kinds.get(p) == "mdf"]
        mdf_result: list[tuple[list, list[str], list[str], dict[str, str]]] = []

        def run_mdf() -> None:
            # MDF parsing (asammdf, native code that can crash on damaged files) runs in a child process
            mdf_result.append(
                decode_mdf_isolated(mdf_files, out_dir, list(dbc_files), base_meta, DECODER_VERSION, logf, known_sha256)
            )

        # MDF and MCAP decode concurrently (zstd, crc32, numpy copies and the Parquet writer release the GIL)
        mdf_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mdf-decode")
        mdf_future = mdf_thread.submit(run_mdf) if mdf_files else None
        mcap = McapDecoder(manager, DECODER_VERSION, logf, fail_on_corrupt_chunk=fail_on_corrupt_chunk)
        mcap_errors: list[str] = []
        try:
            for p in (p for p in files if kinds.get(p) == "mcap"):
                t1 = time.perf_counter()
                try:
                    n, note = mcap.read_file(p, base_meta, hash_file=p.name not in known_sha256)
                except CorruptChunk:
                    raise
                except DecodeError as exc:
                    failed.append(str(exc))
                    continue
                if note:
                    mcap_errors.append(note)
                dt = time.perf_counter() - t1
                logf(f"{p.name}: {n} MCAP messages in {dt:.2f} s ({p.stat().st_size / 1e6 / max(dt, 1e-9):.0f} MB/s)")
        finally:
            mdf_thread.shutdown(wait=True)
        if mdf_future is not None:
            mdf_future.result()  # re-raises a DBC that cannot be loaded
        mdf_reports, mdf_errors, mdf_failed, mdf_hashes = mdf_result[0] if mdf_result else ([], [], [], {})
        failed[:0] = mdf_failed
        report.errors.extend(mdf_errors + mcap_errors)
        for p in files:  # MCAP files not read to the end (salvaged, failed) are hashed separately
            if kinds.get(p) == "mcap" and p.name not in mcap.sha256 and p.name not in known_sha256 and p.exists():
                hashes[p.name] = hasher.submit(sha256_file, p)
        file_hashes = {k: f.result() for k, f in hashes.items()}
        file_hashes.update(known_sha256)
        file_hashes.update(mcap.sha256)
        file_hashes.update(mdf_hashes)
        report.streams.extend(mdf_reports)
        report.streams.extend(mcap.close(file_hashes))
    finally:
        manager.shutdown()
        hasher.shutdown(wait=True)
    # streams that produced no file (e.g. an MDF group without samples)
    report.streams = sorted((s for s in report.streams if s.rows or s.status != "ok"), key=lambda s: s.name)
    report.errors = failed + report.errors
    decoded_files = [p for p in files if kinds.get(p) and not any(e.startswith(f"{p.name}:") for e in failed)]
    if not decoded_files:
        raise DecodeError("no input could be decoded: " + "; ".join(failed))
    report.seconds = time.perf_counter() - t0
    logf(
        f"decoded {len(files)} files, {report.bytes_in / 1e6:.1f} MB in {report.seconds:.2f} s "
        f"({report.bytes_in / 1e6 / max(report.seconds, 1e-9):.0f} MB/s), {len(report.streams)} streams"
    )
    return report


MDF_WORKER = "ad_core.decode.mdf_worker:decode_mdf_files"


def decode_mdf_isolated(
    files: Sequence[Path],
    out_dir: Path,
    dbc_files: Sequence[Path],
    base_meta: dict[str, str],
    decoder_version: str,
    log: Callable[[str], None],
    known_sha256: dict[str, str] | None = None,
) -> tuple[list[StreamReport], list[str], list[str], dict[str, str]]:
    """Decode a drive's MDF files (and their raw CAN) in a child process into ``out_dir`` (the files named in
    ``known_sha256`` are not hashed again).

    The child writes into a private subfolder; its tables are moved into ``out_dir`` only when it returns. If it
    dies (SIGSEGV / SIGABRT in asammdf's native code), the file it was reading is recorded as failed, the
    subfolder is deleted and the remaining files are decoded again by a fresh child, so the output equals a
    decode of the drive without the damaged file. Returns (stream reports, errors, failed, sha256 by name).
    """
    remaining = list(files)
    crashed: list[str] = []
    attempt = 0
    while True:
        work = out_dir / f".mdf-decoder-{attempt}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        current: list[str | None] = [None]

        def on_message(msg: tuple[str, str | None], current: list[str | None] = current) -> None:
            kind, value = msg
            if kind == "file":
                current[0] = value
            elif kind == "log" and value is not None:
                log(value)

        try:
            reports, errors, failed, hashes = run_isolated(
                MDF_WORKER,
                [str(p) for p in remaining],
                str(work),
                [str(d) for d in dbc_files],
                base_meta,
                decoder_version,
                known_sha256 or {},
                on_message=on_message,
            )
        except NativeCrash as exc:
            shutil.rmtree(work, ignore_errors=True)
            name = current[0]
            if name is None:  # died outside any file (DBC loading, closing the CAN tables): nothing to blame
                raise DecodeError(f"MDF decoder crashed ({exc.describe()}) outside any input file") from exc
            crashed.append(
                f"{name}: decoder crashed ({exc.describe()}) while reading this MDF file: it is damaged "
                "(asammdf's native code could not parse it)"
            )
            log(crashed[-1])
            remaining = [p for p in remaining if p.name != name]
            attempt += 1
            if not remaining:
                return [], [], crashed, {}
            continue
        for r in reports:
            if r.parquet:
                src = Path(r.parquet)
                dst = out_dir / src.name
                os.replace(src, dst)
                r.parquet = str(dst)
        shutil.rmtree(work, ignore_errors=True)
        return reports, errors, crashed + failed, hashes


def decode_file(
    path: Path, out_dir: Path, dbc_files: Sequence[Path] = (), *, log: Callable[[str], None] | None = None
) -> DriveDecodeReport:
    """Decode a single file (a one-file drive)."""
    return decode_drive([Path(path)], out_dir, dbc_files, log=log)
