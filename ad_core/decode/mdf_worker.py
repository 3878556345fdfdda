"""The MDF half of a drive decode, run in a child process (``isolate.run_isolated``).

``decode_mdf_files`` decodes a drive's MDF files (and their raw CAN with the DBCs) into ``out_dir``, exactly as
the in-process decoder did, and returns the stream reports, per-file errors and files that failed, and the
files' SHA-256s. Before each file it sends ``("file", name)``, so the parent can name the file being read if the
process dies in native code; log lines go to the parent as ``("log", line)``.

Imported by the forkserver at its start (the preload), so this module imports the heavy libraries up front.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ad_common.hashing import sha256_file

from .can import CanDecoder
from .errors import describe_mdf_error
from .mdf import _asammdf, decode_mdf
from .parquet_out import SinkManager
from .report import DecodeError, StreamReport

PROGRESS_EVERY_S = 5.0  # at most one channel group's line per this many seconds

_asammdf()  # imported by the forkserver at its start: every child starts with asammdf (and its deps) imported


def decode_mdf_files(
    send: Callable[[Any], None],
    files: Sequence[str],
    out_dir: str,
    dbc_files: Sequence[str],
    base_meta: dict[str, str],
    decoder_version: str,
    known_sha256: dict[str, str],
) -> tuple[list[StreamReport], list[str], list[str], dict[str, str]]:
    """Returns (stream reports, errors, failed-file messages, sha256 by file name); the files in
    ``known_sha256`` are not hashed again."""

    def log(msg: str) -> None:
        send(("log", msg))

    last_progress = -float("inf")

    def progress(msg: str) -> None:
        """A channel group's line, at most one per PROGRESS_EVERY_S: each line is an event in the run's log, and
        a logger's file can hold hundreds of groups."""
        nonlocal last_progress
        if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
            last_progress = time.monotonic()
            log(msg)

    paths = [Path(f) for f in files]
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    hashes = {p.name: hasher.submit(sha256_file, p) for p in paths if p.name not in known_sha256}
    manager = SinkManager(Path(out_dir))
    reports: list[StreamReport] = []
    errors: list[str] = []
    failed: list[str] = []
    try:
        can = CanDecoder([Path(d) for d in dbc_files], manager, decoder_version)
        sinks: list = []
        for p in paths:
            send(("file", p.name))
            t1 = time.perf_counter()
            try:
                file_sinks, skipped, errs = decode_mdf(p, manager, can, base_meta, progress)
            except DecodeError as exc:
                failed.append(str(exc))
                continue
            except Exception as exc:
                failed.append(f"{p.name}: {describe_mdf_error(exc)}")
                continue
            sinks.extend((p, s) for s in file_sinks)
            reports.extend(skipped)
            errors.extend(errs)
            dt = time.perf_counter() - t1
            rows = sum(sink.report.rows + sink.pending_rows for sink in file_sinks)
            log(
                f"{p.name}: MDF read in {dt:.2f} s ({p.stat().st_size / 1e6 / max(dt, 1e-9):.0f} MB/s), "
                f"{len(file_sinks)} channel-group tables, {rows} rows"
            )
        send(("file", None))
        file_hashes = {p.name: known_sha256[p.name] for p in paths if p.name in known_sha256}
        file_hashes.update({k: f.result() for k, f in hashes.items()})
        for p, s in sinks:
            reports.append(s.close({"source_file": p.name, "source_sha256": file_hashes.get(p.name, "")}))
        reports.extend(can.close(file_hashes))
    finally:
        manager.shutdown()
        hasher.shutdown(wait=True)
    return reports, errors, failed, file_hashes
