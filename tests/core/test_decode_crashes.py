"""Damaged inputs fail their own file, with a message that says what is wrong, never the process.

The fuzz reproducers live in ../shared/data/bad/fuzz (never copied into the repo): tests that use them are
``realdata`` and skip where that folder is absent. The other tests build their damaged files themselves.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ad_core.decode import CorruptChunk, DecodeError, decode_drive, decode_file
from ad_core.inspect import InvalidLogError, inspect_mcap, inspect_mdf4

REPO = Path(__file__).resolve().parents[2]
SEGV = ("segv_get_scalar_8548.mf4", "segv_get_scalar_8559.mf4", "segv_vlsd_9095.mf4", "segv_get_master_9619.mf4")
ABORT = ("abort_malloc_convert_3660.mf4",)
T0_S = 1_700_000_000


def _fuzz(shared_data: Path, name: str) -> Path:
    p = shared_data / "bad" / "fuzz" / name
    if not p.exists():
        pytest.skip(f"fuzz reproducer {p} not found")
    return p


def _signal_mdf(path: Path, t: np.ndarray, name: str = "Powertrain 1kHz") -> Path:
    from asammdf import MDF, Signal

    m = MDF(version="4.10")
    m.append([Signal(np.arange(len(t), dtype=np.float64), t, name="v", unit="V")], acq_name=name)
    m.save(path, overwrite=True)
    return path


# ---------------------------------------------------------------- 1. native crashes fail one file
@pytest.mark.realdata
@pytest.mark.parametrize("name", SEGV)
def test_native_crash_in_mdf_decode_fails_that_file_only(shared_data: Path, tmp_path: Path, name: str) -> None:
    bad = _fuzz(shared_data, name)
    good = _signal_mdf(tmp_path / "good.mf4", np.arange(1000) / 1000.0)
    with pytest.raises(DecodeError) as info:
        decode_file(bad, tmp_path / "out1")
    msg = str(info.value)
    assert name in msg and "decoder crashed" in msg and "SIGSEGV" in msg, msg
    # a drive with a good file beside the bad one: the good one is decoded, the bad one listed
    rep = decode_drive([bad, good], tmp_path / "out2")
    assert [s.name for s in rep.streams] == ["mdf__powertrain_1khz"]
    assert rep.streams[0].rows == 1000
    assert pq.read_table(rep.streams[0].parquet).num_rows == 1000
    assert any(e.startswith(f"{name}: ") and "decoder crashed" in e for e in rep.errors), rep.errors
    # nothing half-written by the crashed decoder is left in the output
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["mdf__powertrain_1khz.parquet"]


@pytest.mark.realdata
@pytest.mark.parametrize("name", ABORT)
def test_heap_corruption_never_takes_the_process_down(shared_data: Path, tmp_path: Path, name: str) -> None:
    """glibc detects this file's heap corruption (SIGABRT) most, but not all, of the time: whatever the child
    does, the good file beside it is decoded and the parent lives on."""
    bad = _fuzz(shared_data, name)
    good = _signal_mdf(tmp_path / "good.mf4", np.arange(1000) / 1000.0)
    rep = decode_drive([bad, good], tmp_path / "out")
    stream = next(s for s in rep.streams if s.name == "mdf__powertrain_1khz")
    assert stream.rows == 1000 and pq.read_table(stream.parquet).num_rows == 1000
    crashed = [e for e in rep.errors if e.startswith(f"{name}: ") and "decoder crashed" in e]
    assert all(re.search(r"SIG(ABRT|SEGV)", e) for e in crashed), crashed


@pytest.mark.realdata
@pytest.mark.parametrize("name", SEGV + ABORT)
def test_native_crash_in_raw_validation_is_invalid_log(shared_data: Path, name: str) -> None:
    bad = _fuzz(shared_data, name)
    try:
        inspect_mdf4(bad)
    except InvalidLogError as exc:
        assert exc.path == str(bad) and exc.reason
    # a file that asammdf opens without crashing may still be accepted: the test is that we got here at all


@pytest.mark.realdata
@pytest.mark.parametrize(("name", "sig"), [("segv_get_master_9619.mf4", "SIGSEGV")])
def test_native_crash_in_raw_validation_names_signal(shared_data: Path, name: str, sig: str) -> None:
    bad = _fuzz(shared_data, name)
    with pytest.raises(InvalidLogError) as info:
        inspect_mdf4(bad)
    assert info.value.path == str(bad)
    assert "crashed" in info.value.reason and sig in info.value.reason, info.value.reason


@pytest.mark.realdata
def test_decode_cli_reports_a_crash_cleanly(shared_data: Path, tmp_path: Path) -> None:
    bad = _fuzz(shared_data, "segv_get_master_9619.mf4")
    proc = subprocess.run(
        [sys.executable, "-m", "ad_core.decode", str(bad), "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] is False
    assert "segv_get_master_9619.mf4" in out["errors"][0] and "SIGSEGV" in out["errors"][0], out


# ---------------------------------------------------------------- 2. timestamps >= 2^63
@pytest.mark.realdata
@pytest.mark.parametrize("name", ["overflow_push_cdr_601.mcap", "overflow_rows_to_table_776.mcap"])
def test_log_time_beyond_int64_is_a_stream_error(shared_data: Path, tmp_path: Path, name: str) -> None:
    bad = _fuzz(shared_data, name)
    rep = decode_file(bad, tmp_path / "out")
    damaged = [s for s in rep.streams if s.error and "2^63" in s.error]
    assert damaged, rep.to_dict()
    for s in damaged:
        assert s.status in ("salvaged", "skipped")
        assert name in s.error and "topic '" in s.error and "byte " in s.error and "log_time" in s.error, s.error


def test_log_time_beyond_int64_synthetic(tmp_path: Path) -> None:
    from mcap.writer import Writer

    f = tmp_path / "big_time.mcap"
    with open(f, "wb") as fh:
        w = Writer(fh)
        w.start()
        sid = w.register_schema("m", "jsonschema", b"{}")
        cid = w.register_channel("/imu", "json", sid)
        for i in range(10):
            lt = 2**63 + 5 if i == 4 else T0_S * 10**9 + i
            w.add_message(cid, log_time=lt, publish_time=T0_S * 10**9 + i, data=json.dumps({"x": i}).encode())
        w.finish()
    rep = decode_file(f, tmp_path / "out")
    s = rep.stream("mcap__imu")
    assert s.rows == 9 and s.status == "salvaged"
    assert "big_time.mcap" in s.error and "'/imu'" in s.error and str(2**63 + 5) in s.error, s.error


# ---------------------------------------------------------------- 3. MDF timestamps out of recorded order
def test_mdf_bit_flipped_timestamp_is_counted_and_fails_monotonic_rule(tmp_path: Path) -> None:
    from ad_core.quality.profile import profile_drive
    from ad_core.quality.rules import DECODED_RULES, profile_tables

    t = np.arange(30_000) / 1000.0  # 30 s at 1 kHz
    t[15_000] = 8e-308  # 15.0 s -> a bit flip in the exponent
    f = _signal_mdf(tmp_path / "flip.mf4", t)
    out = tmp_path / "out"
    rep = decode_file(f, out)
    s = rep.stream("mdf__powertrain_1khz")
    assert s.rows == 30_000
    assert s.out_of_order_samples == 1
    assert "out of recorded order" in (s.error or ""), s.error
    streams, signals = profile_drive(out)
    assert streams[0].out_of_order_samples == 1
    rule = next(r for r in DECODED_RULES if r.name == "sensor_clock_monotonic")
    table = profile_tables(streams, signals, rep)["streams"]
    # the rule's expectations, evaluated by hand on the profile table (GX is exercised in tests/assets)
    cols = {e.column for e in rule.expectations()}
    assert "out_of_order_samples" in cols
    assert int(table["out_of_order_samples"].max()) > 0


def test_mdf_in_order_reports_zero_out_of_order(tmp_path: Path) -> None:
    f = _signal_mdf(tmp_path / "ok.mf4", np.arange(5000) / 1000.0)
    rep = decode_file(f, tmp_path / "out")
    assert rep.streams[0].out_of_order_samples == 0 and rep.streams[0].status == "ok"


# ---------------------------------------------------------------- 4. library exceptions become file damage
def test_truncated_mdf_names_the_damage(tmp_path: Path) -> None:
    good = _signal_mdf(tmp_path / "good.mf4", np.arange(5000) / 1000.0)
    data = good.read_bytes()
    cut = tmp_path / "cut.mf4"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(DecodeError) as info:
        decode_file(cut, tmp_path / "out")
    msg = str(info.value)
    assert "cut.mf4: " in msg and ("truncated" in msg or "damaged" in msg), msg
    assert "Error: " in msg or "error: " in msg, msg  # the library's own exception is kept in brackets


def test_inspect_chains_the_library_exception(tmp_path: Path) -> None:
    good = _signal_mdf(tmp_path / "good.mf4", np.arange(5000) / 1000.0)
    cut = tmp_path / "cut.mf4"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(InvalidLogError) as info:
        inspect_mdf4(cut)
    assert "truncated or damaged" in info.value.reason, info.value.reason
    assert info.value.__cause__ is not None  # the original, re-raised from the child process


@pytest.mark.parametrize(
    "exc, words",
    [
        (UnboundLocalError("cannot access local variable 'blk' where it is not associated with a value"), "block"),
        (ValueError("seek out of range"), "outside the file"),
        (struct.error("unpack requires a buffer of 24 bytes"), "cut short"),
    ],
)
def test_describe_mdf_error(exc: Exception, words: str) -> None:
    from ad_core.decode.errors import describe_mdf_error

    text = describe_mdf_error(exc)
    assert "truncated or damaged block structure" in text and words in text and type(exc).__name__ in text


def test_mdf_with_zeroed_header_block_names_the_damage(tmp_path: Path) -> None:
    good = _signal_mdf(tmp_path / "good.mf4", np.arange(5000) / 1000.0)
    data = bytearray(good.read_bytes())
    (hd_link,) = struct.unpack_from("<Q", data, 64 + 24)  # HD block: first link (DG) after the 24-byte header
    struct.pack_into("<Q", data, 64 + 24, len(data) + 4096)  # points past the end of the file
    bad = tmp_path / "bad_link.mf4"
    bad.write_bytes(bytes(data))
    assert hd_link
    with pytest.raises(DecodeError) as info:
        decode_file(bad, tmp_path / "out")
    msg = str(info.value)
    assert "bad_link.mf4: " in msg and ("truncated" in msg or "damaged" in msg), msg


def test_a_dbc_without_messages_is_rejected_naming_the_file(shared_data: Path, tmp_path: Path) -> None:
    notes = tmp_path / "vehicle.dbc"
    notes.write_text("meeting notes: send the real DBC next week\n")  # canmatrix parses it as an empty DBC
    mf4 = shared_data / "mdf4/canedge_raw/cssapi__other_matlab-basics_00000014.MF4"
    with pytest.raises(DecodeError) as raised:
        decode_drive([mf4], tmp_path / "out", [notes])
    assert str(raised.value) == (
        "vehicle.dbc: not a usable DBC: it defines no messages (BO_ lines); is it the right file?"
    )


@pytest.mark.parametrize(
    ("offset", "cause", "words"),
    [
        (10, "EndOfFile", "truncated or corrupt record (a record is cut short"),
        (17, "UnicodeDecodeError", "corrupt record (a text field such as a topic or schema name is not valid UTF-8)"),
        (93, "MemoryError", "corrupt record (a length or offset field declares an impossible value)"),
        (10155, "error", "truncated or corrupt record"),  # struct.error
    ],
)
def test_mcap_library_exceptions_become_what_is_wrong_with_the_file(
    shared_data: Path, tmp_path: Path, offset: int, cause: str, words: str
) -> None:
    """One byte inverted at ``offset`` of a real MCAP makes the mcap library raise ``cause``."""
    data = bytearray((shared_data / "mcap/depthai__recording.mcap").read_bytes())
    data[offset] ^= 0xFF
    damaged = tmp_path / "damaged.mcap"
    damaged.write_bytes(bytes(data))
    with pytest.raises(InvalidLogError) as raised:
        inspect_mcap(damaged)
    assert raised.value.reason.startswith(f"MCAP damaged: {words}"), raised.value.reason
    assert type(raised.value.__cause__).__name__ == cause  # the raw exception stays the cause


def test_a_chunk_that_does_not_decompress_passes_the_structure_check_and_fails_the_decoder(
    shared_data: Path, tmp_path: Path
) -> None:
    """raw_drive walks the records without decompressing; the decoder, which decompresses every chunk anyway, names
    the damaged one (decoded_signals then quarantines the file)."""
    data = bytearray((shared_data / "mcap/depthai__recording.mcap").read_bytes())
    data[89] ^= 0xFF  # inside the first chunk's lz4 frame
    damaged = tmp_path / "damaged.mcap"
    damaged.write_bytes(bytes(data))
    assert "record structure valid" in "; ".join(inspect_mcap(damaged).notes)
    with pytest.raises(CorruptChunk) as raised:
        decode_drive([damaged], tmp_path / "out", fail_on_corrupt_chunk=True)
    assert raised.value.reason.startswith("MCAP damaged: chunk 1 (the record at byte "), raised.value.reason
    assert "lz4 decompression failed: RuntimeError" in raised.value.reason
    with pytest.raises(DecodeError, match=r"damaged\.mcap: not readable as MCAP: lz4 decompression failed"):
        decode_drive([damaged], tmp_path / "out2")  # without: nothing before it to salvage
