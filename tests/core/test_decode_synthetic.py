"""Decode core on small files written by the tests themselves (and by fleetgen when present)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.LocationFix_pb2 import LocationFix
from mcap.reader import make_reader
from mcap.writer import CompressionType, IndexType
from mcap.writer import Writer as RawWriter
from mcap_protobuf.schema import build_file_descriptor_set
from mcap_protobuf.writer import Writer as PbWriter

from ad_core.decode import (
    CorruptChunk,
    DecodeError,
    decode_drive,
    decode_file,
    mcap_chunks,
    mcap_reader,
    parquet_out,
    read_frame,
)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000_000_000


def _write_pb_mcap(path: Path, n_frames: int, order: list[int] | None = None, chunk_size: int = 64 * 1024) -> None:
    order = order if order is not None else list(range(n_frames))
    with open(path, "wb") as fh:
        w = PbWriter(fh, chunk_size=chunk_size, compression=CompressionType.ZSTD)
        for i in order:
            ts = T0 + i * 100_000_000
            img = CompressedImage(format="jpeg", frame_id="cam", data=b"\xff\xd8" + i.to_bytes(4, "big") * 500)
            img.timestamp.FromNanoseconds(ts)
            w.write_message("/camera/front/compressed", img, log_time=ts, publish_time=ts)
            fix = LocationFix(latitude=48.0 + i * 1e-5, longitude=11.0, altitude=500.0 + i)
            fix.timestamp.FromNanoseconds(ts)
            w.write_message("/gnss/fix", fix, log_time=ts, publish_time=ts)
        w.finish()


def _write_json_mcap(
    path: Path, times: list[int], *, indexed: bool = True, compression=CompressionType.LZ4, chunked: bool = True
) -> None:
    with open(path, "wb") as fh:
        w = RawWriter(
            fh,
            compression=compression,
            chunk_size=32 * 1024,
            use_chunking=chunked,
            index_types=IndexType.ALL if indexed else IndexType.NONE,
            use_summary_offsets=indexed,
            repeat_channels=indexed,
            repeat_schemas=indexed,
        )
        w.start(profile="", library="test")
        sid = w.register_schema("status", "jsonschema", b"{}")
        cid = w.register_channel("/logger/status", "json", sid)
        for k, t in enumerate(times):
            w.add_message(cid, log_time=t, publish_time=t, data=json.dumps({"seq": k, "temp": 20.5 + k}).encode())
        w.finish()


def test_protobuf_images_and_signals(tmp_path: Path) -> None:
    f = tmp_path / "d.mcap"
    _write_pb_mcap(f, 40)
    rep = decode_file(f, tmp_path / "out")
    img = rep.stream("mcap__camera_front_compressed")
    assert img.kind == "image" and img.rows == 40 and abs(img.rate_hz - 10.0) < 1e-6
    pf = pq.ParquetFile(img.parquet)
    assert pf.metadata.num_row_groups == 3  # 16 + 16 + 8 frames
    for i in (0, 15, 16, 39):
        assert read_frame(img.parquet, i) == b"\xff\xd8" + i.to_bytes(4, "big") * 500
    gnss = pq.read_table(rep.stream("mcap__gnss_fix").parquet)
    np.testing.assert_allclose(gnss.column("altitude").to_numpy(), 500.0 + np.arange(40))
    assert gnss.column("header_stamp_ns").to_pylist() == gnss.column("timestamp_ns").to_pylist()


def test_out_of_order_across_row_groups_is_resorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parquet_out, "ROW_GROUP_ROWS", 1000)
    n = 5000
    rng = np.random.default_rng(1)
    times = (T0 + rng.permutation(n) * 1_000_000).tolist()
    f = tmp_path / "shuffled.mcap"
    _write_json_mcap(f, times)
    rep = decode_file(f, tmp_path / "out")
    s = rep.stream("mcap__logger_status")
    t = pq.read_table(s.parquet)
    ts = t.column("timestamp_ns").to_numpy()
    assert s.rows == n and np.array_equal(ts, np.sort(np.array(times)))
    assert np.array_equal(t.column("seq").to_numpy(), np.argsort(times))
    assert not list((tmp_path / "out").glob(".*"))  # spill files cleaned up
    # shuffled frames: frame_index follows the sorted order
    order = rng.permutation(40).tolist()
    _write_pb_mcap(tmp_path / "img.mcap", 40, order=order, chunk_size=1024)
    monkeypatch.setattr(parquet_out, "FRAMES_PER_ROW_GROUP", 4)
    rep = decode_file(tmp_path / "img.mcap", tmp_path / "out2")
    p = rep.stream("mcap__camera_front_compressed").parquet
    assert all(read_frame(p, i)[2:6] == i.to_bytes(4, "big") for i in range(40))


@pytest.mark.parametrize("compression", [CompressionType.NONE, CompressionType.ZSTD, CompressionType.LZ4])
def test_unindexed_and_compressions(tmp_path: Path, compression) -> None:
    f = tmp_path / "u.mcap"
    _write_json_mcap(f, [T0 + i for i in range(3000)], indexed=False, compression=compression)
    rep = decode_file(f, tmp_path / "out")
    assert rep.stream("mcap__logger_status").rows == 3000


def test_truncated_multichunk_mcap_is_salvaged(tmp_path: Path) -> None:
    f = tmp_path / "full.mcap"
    _write_json_mcap(f, [T0 + i * 1000 for i in range(20000)])
    data = f.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])
    rep = decode_file(cut, tmp_path / "out")
    s = rep.stream("mcap__logger_status")
    assert s.status == "salvaged" and 0 < s.rows < 20000
    assert "cut.mcap: read stopped at byte" in s.error and f"salvaged {s.rows} messages" in s.error
    # a flipped byte inside a chunk: CRC validation stops the read there
    bad = bytearray(data)
    bad[len(data) // 3] ^= 0xFF
    (tmp_path / "crc.mcap").write_bytes(bytes(bad))
    try:
        rep = decode_file(tmp_path / "crc.mcap", tmp_path / "out2")
    except DecodeError as exc:
        assert "crc.mcap" in str(exc)
    else:
        assert rep.stream("mcap__logger_status").rows < 20000 and rep.errors


def test_mdf_signals_and_can_frames(tmp_path: Path) -> None:
    can = pytest.importorskip("can")
    cantools = pytest.importorskip("cantools")
    from asammdf import MDF, Signal

    dbc_text = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 160 VehicleSpeed: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" ECU
 SG_ Counter : 56|4@1+ (1,0) [0|15] "" ECU
"""
    dbc = tmp_path / "v.dbc"
    dbc.write_text(dbc_text)
    db = cantools.database.load_file(dbc)
    msg = db.get_message_by_name("VehicleSpeed")
    mf4 = tmp_path / "can.mf4"
    speeds = np.round(np.linspace(0, 120, 1000), 2)
    with can.io.MF4Writer(mf4) as w:
        for i, v in enumerate(speeds):
            data = msg.encode({"Speed": float(v), "Counter": i % 16})
            w.on_message_received(
                can.Message(
                    timestamp=1_700_000_000 + i * 0.01, arbitration_id=160, is_extended_id=False, data=data, channel=1
                )
            )
    rep = decode_drive([mf4], tmp_path / "out", [dbc])
    s = rep.stream("can__vehicle_speed")
    t = pq.read_table(s.parquet)
    np.testing.assert_allclose(t.column("Speed").to_numpy(), speeds, atol=1e-9)
    assert s.columns["Speed"] == "km/h" and s.rows == 1000
    # plain signal MDF, DZ-compressed, array channel
    sig_mf4 = tmp_path / "sig.mf4"
    tt = np.arange(5000) / 100.0
    m = MDF(version="4.10")
    m.append(
        [Signal(np.sin(tt), tt, name="a", unit="V"), Signal((tt * 10).astype(np.int32), tt, name="b")],
        acq_name="Chassis 100Hz",
    )
    m.save(sig_mf4, compression=2)
    rep = decode_file(sig_mf4, tmp_path / "out2")
    [s] = rep.streams
    assert s.name == "mdf__chassis_100hz" and s.rows == 5000 and s.columns["a"] == "V"
    t = pq.read_table(s.parquet)
    np.testing.assert_array_equal(t.column("a").to_numpy(), np.sin(tt))
    start = pq.ParquetFile(s.parquet).metadata.metadata
    assert start[b"stream"] == b"mdf__chassis_100hz"


def test_kill_during_write_leaves_no_partial_output(tmp_path: Path) -> None:
    f = tmp_path / "big.mcap"
    _write_json_mcap(f, [T0 + i * 1000 for i in range(300_000)], compression=CompressionType.NONE)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ad_core.decode", str(f), "--out", str(out), "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline and not list(tmp_path.glob(".out.tmp-*/*.parquet")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # readers never see a partial folder
    # the next run publishes a complete folder
    rc = subprocess.run(
        [sys.executable, "-m", "ad_core.decode", str(f), "--out", str(out), "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rc.returncode == 0, rc.stderr
    assert pq.ParquetFile(out / "mcap__logger_status.parquet").metadata.num_rows == 300_000
    # the killed run's hidden .out.tmp-* leftover is only swept once stale (atomic.STALE_AFTER_S); it is never
    # visible under the final name
    assert sorted(p.name for p in out.iterdir()) == ["mcap__logger_status.parquet"]


def _fleetgen():
    try:
        from fleetgen import generate_drive, ground_truth
    except ImportError:
        return None
    return generate_drive, ground_truth


@pytest.mark.skipif(_fleetgen() is None, reason="fleetgen not available yet")
def test_fleetgen_round_trip(tmp_path: Path) -> None:
    generate_drive, ground_truth = _fleetgen()  # type: ignore[misc]
    drive = Path(generate_drive(tmp_path / "landing", "de", 0, 0.4, seed=3, camera_size=(160, 90), lidar_points=256))
    files = sorted(p for p in drive.iterdir() if p.suffix in (".mf4", ".mcap"))
    dbc = sorted((tmp_path / "landing" / "de" / "_dbc").glob("*.dbc"))
    rep = decode_drive(files, tmp_path / "out", dbc)
    names = {s.name for s in rep.streams}
    for topic in ("camera_front_compressed", "lidar_top_points", "imu_data", "gnss_fix", "logger_status"):
        assert f"mcap__{topic}" in names, names
    # asammdf decodes the CAN group with the DBC attached to the MF4 into virtual "from CAN1 message ID=0x..."
    # groups when it opens the file; they duplicate can__<message> and must not become streams
    from asammdf import MDF

    mf4 = next(p for p in files if p.suffix == ".mf4")
    with MDF(mf4) as mdf:
        assert any(str(g.channel_group.acq_name).startswith("from CAN") for g in mdf.groups)
    assert not [n for n in names if n.startswith("mdf__from_can")], names
    assert "can__esp_vehicle_speed" in names
    assert {"mdf__powertrain_1khz", "mdf__chassis_100hz"} <= names, names
    gt = ground_truth(drive)
    speed_streams = [s for s in rep.streams if s.kind == "can" and any("speed" in c.lower() for c in s.columns)]
    assert speed_streams
    t = pq.read_table(rep.stream("can__esp_vehicle_speed").parquet)
    got_t, got_v = t.column("timestamp_ns").to_numpy(), t.column("VehicleSpeed").to_numpy()
    ref = np.interp(got_t.astype(np.float64), gt["t_ns"].astype(np.float64), gt["speed_kmh"])
    assert np.nanmax(np.abs(got_v - ref)) < 1.0  # 0.01 km/h quantisation + sensor noise
    img = rep.stream("mcap__camera_front_compressed")
    assert read_frame(img.parquet, img.rows - 1)[:2] == b"\xff\xd8"
    imu = pq.read_table(rep.stream("mcap__imu_data").parquet)
    assert "linear_acceleration.x" in imu.column_names and "header_stamp_ns" in imu.column_names
    # float columns are BYTE_STREAM_SPLIT-encoded; DuckDB reads them and the frame payloads as pyarrow does
    imu_path = rep.stream("mcap__imu_data").parquet
    col = pq.ParquetFile(imu_path).metadata.row_group(0).column(imu.schema.get_field_index("linear_acceleration.x"))
    assert "BYTE_STREAM_SPLIT" in col.encodings and col.compression == "ZSTD"
    con = duckdb.connect()
    ax = con.sql(f"select \"linear_acceleration.x\" from read_parquet('{imu_path}')").fetchnumpy()
    np.testing.assert_array_equal(ax["linear_acceleration.x"], imu.column("linear_acceleration.x").to_numpy())
    lidar = rep.stream("mcap__lidar_top_points").parquet
    ((blob,),) = con.sql(f"select data from read_parquet('{lidar}') where frame_index = 7").fetchall()
    assert blob == read_frame(lidar, 7) and len(blob) == 256 * 16


def test_binary_view_payloads_are_referenced_in_place_unless_they_would_pin_whole_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chunk = bytes(range(256)) * 64  # 16 KiB "decompressed chunk"
    view = memoryview(chunk)
    vals = [view[100:9000], None, view[5:11], view[9000:9100], b"standalone value"]
    expected = [chunk[100:9000], None, chunk[5:11], chunk[9000:9100], b"standalone value"]
    arr = mcap_reader._binary_array(vals)
    arr.validate(full=True)
    assert arr.type == pa.binary_view() and arr.null_count == 1 and arr.to_pylist() == expected
    # no copy of the chunk's payloads: the first data buffer is the chunk itself; the standalone value is copied
    assert arr.buffers()[2].address == mcap_reader._address(chunk)
    assert len(arr.buffers()) == 4 and arr.buffers()[3].size == 16
    # where the chunks would outweigh the payloads by more than the slack, the payloads are copied compactly
    monkeypatch.setattr(mcap_reader, "VIEW_PIN_SLACK", 1024)
    arr = mcap_reader._binary_array(vals)
    arr.validate(full=True)
    assert arr.to_pylist() == expected
    assert len(arr.buffers()) == 3 and arr.buffers()[2].size == 8900 + 100 + 16  # one compact buffer


# ------------------------------------------------------------------ chunk reader (ad_core.decode.mcap_chunks)
def _write_raw_pb_mcap(path: Path, n: int, *, compression, indexed: bool, chunked: bool = True) -> None:
    """Protobuf images + GNSS written with the low-level mcap Writer (any compression / index / chunking)."""
    with open(path, "wb") as fh:
        w = RawWriter(
            fh,
            compression=compression,
            chunk_size=16 * 1024,
            use_chunking=chunked,
            index_types=IndexType.ALL if indexed else IndexType.NONE,
            use_summary_offsets=indexed,
            repeat_channels=indexed,
            repeat_schemas=indexed,
            use_statistics=indexed,
        )
        w.start(profile="", library="test")
        chans = {}
        for cls, topic in ((CompressedImage, "/camera/front/compressed"), (LocationFix, "/gnss/fix")):
            sid = w.register_schema(
                cls.DESCRIPTOR.full_name, "protobuf", build_file_descriptor_set(cls).SerializeToString()
            )
            chans[topic] = w.register_channel(topic, "protobuf", sid)
        for i in range(n):
            ts = T0 + i * 100_000_000
            img = CompressedImage(format="jpeg", frame_id=f"cam{i // 7}", data=b"\xff\xd8" + i.to_bytes(4, "big") * 300)
            img.timestamp.FromNanoseconds(ts + 5)
            w.add_message(
                chans["/camera/front/compressed"], log_time=ts, publish_time=ts + 1, data=img.SerializeToString()
            )
            fix = LocationFix(latitude=48.0 + i * 1e-5, longitude=11.0, altitude=500.0 + i)
            fix.timestamp.FromNanoseconds(ts)
            w.add_message(chans["/gnss/fix"], log_time=ts, publish_time=ts, data=fix.SerializeToString())
        w.finish()


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("indexed", [True, False])
@pytest.mark.parametrize("compression", [CompressionType.NONE, CompressionType.LZ4, CompressionType.ZSTD])
def test_chunk_reader_matches_mcap_library(tmp_path: Path, compression, indexed: bool, chunked: bool) -> None:
    f = tmp_path / "p.mcap"
    _write_raw_pb_mcap(f, 60, compression=compression, indexed=indexed, chunked=chunked)
    # every message the mcap library yields, in file order, with the same payload bytes
    with open(f, "rb") as fh:
        ref = [
            (c.topic, m.log_time, m.publish_time, m.data)
            for _s, c, m in make_reader(fh).iter_messages(log_time_order=False)
        ]
    got, topics = [], {}
    for block in mcap_chunks.scan(f):
        for op, a, b in mcap_chunks.parse_block(block.data, block.offset):
            assert block.chunk == chunked or op != mcap_chunks.OP_MESSAGE
            if op == mcap_chunks.OP_CHANNEL:
                cid, _sid, topic, _enc, _meta = mcap_chunks.parse_channel(block.data, a, b)
                topics[cid] = topic
            elif op == mcap_chunks.OP_MESSAGE:
                cid, _seq, lt, pt = mcap_chunks.MSG_HEAD.unpack_from(block.data, a)
                got.append((topics[cid], lt, pt, bytes(block.data[a + 22 : b])))
    assert got == ref and len(got) == 120
    # and the decoded tables (protobuf frame fast path) hold the same values as a plain protobuf parse
    rep = decode_file(f, tmp_path / "out")
    img = rep.stream("mcap__camera_front_compressed")
    assert img.status == "ok" and img.rows == 60
    t = pq.read_table(img.parquet)
    assert t.column("frame_id").to_pylist() == [f"cam{i // 7}" for i in range(60)]
    assert t.column("header_stamp_ns").to_pylist() == [T0 + i * 100_000_000 + 5 for i in range(60)]
    assert t.column("publish_time_ns").to_pylist() == [T0 + i * 100_000_000 + 1 for i in range(60)]
    # payloads are Parquet BYTE_ARRAY written from zero-copy views (pyarrow reads them back as binary_view)
    assert t.schema.field("data").type == "binary_view"
    column = pq.ParquetFile(img.parquet).metadata.row_group(0).column(t.schema.get_field_index("data"))
    assert (column.physical_type, column.compression) == ("BYTE_ARRAY", "UNCOMPRESSED")
    for i in (0, 17, 59):
        assert read_frame(img.parquet, i) == b"\xff\xd8" + i.to_bytes(4, "big") * 300
    gnss = pq.read_table(rep.stream("mcap__gnss_fix").parquet)
    np.testing.assert_allclose(gnss.column("altitude").to_numpy(), 500.0 + np.arange(60))
    # the reader hashes the file while reading it
    kv = pq.ParquetFile(img.parquet).metadata.metadata
    assert kv[b"source_sha256"].decode() == hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.mark.parametrize("compression", [CompressionType.NONE, CompressionType.ZSTD])
def test_chunk_reader_corrupt_chunk(tmp_path: Path, compression) -> None:
    f = tmp_path / "ok.mcap"
    times = [T0 + i * 1000 for i in range(6000)]
    _write_json_mcap(f, times, compression=compression)
    with open(f, "rb") as fh:
        chunks = make_reader(fh).get_summary().chunk_indexes
    assert len(chunks) >= 4
    data = f.read_bytes()
    # a flipped byte in the records of the third chunk: CRC mismatch (or zstd error) -> salvage the first two
    third = chunks[2]
    bad = bytearray(data)
    bad[third.chunk_start_offset + third.chunk_length - 40] ^= 0x55
    (tmp_path / "crc.mcap").write_bytes(bytes(bad))
    rep = decode_file(tmp_path / "crc.mcap", tmp_path / "out")
    s = rep.stream("mcap__logger_status")
    kept = sum(t < third.message_start_time for t in times)
    assert s.status == "salvaged" and s.rows == kept
    assert f"crc.mcap: read stopped at byte {third.chunk_start_offset} of {len(data)}" in s.error
    assert f"salvaged {kept} messages" in s.error and rep.errors == [s.error]
    if compression == CompressionType.NONE:
        assert "CRC mismatch" in s.error
    kv = pq.ParquetFile(s.parquet).metadata.metadata  # not read to the end: hashed separately
    assert kv[b"source_sha256"].decode() == hashlib.sha256(bytes(bad)).hexdigest()
    # raw_drive's structural walk does not decompress: the damage is the decoder's to find, and asked to, it fails
    # naming the chunk instead of salvaging
    assert [b.chunk for b in mcap_chunks.scan(tmp_path / "crc.mcap", decompress=False)].count(True) == len(chunks)
    with pytest.raises(CorruptChunk) as raised:
        decode_drive([tmp_path / "crc.mcap"], tmp_path / "out3", fail_on_corrupt_chunk=True)
    assert str(raised.value).startswith(
        f"crc.mcap: MCAP damaged: chunk 3 (the record at byte {third.chunk_start_offset} of {len(data)}): "
    )
    assert raised.value.reason.startswith("MCAP damaged: chunk 3 ")
    # the first chunk corrupt: nothing readable -> a clear error naming the file and the byte offset
    first = chunks[0]
    bad = bytearray(data)
    bad[first.chunk_start_offset + first.chunk_length - 40] ^= 0x55
    (tmp_path / "first.mcap").write_bytes(bytes(bad))
    with pytest.raises(DecodeError, match=rf"first\.mcap: not readable as MCAP: .*at byte {first.chunk_start_offset}"):
        decode_file(tmp_path / "first.mcap", tmp_path / "out2")


def test_chunk_reader_rejects_bad_records(tmp_path: Path) -> None:
    f = tmp_path / "u.mcap"
    _write_json_mcap(f, [T0 + i for i in range(50)], compression=CompressionType.NONE, chunked=False, indexed=False)
    rep = decode_file(f, tmp_path / "o1")
    assert rep.stream("mcap__logger_status").rows == 50 and rep.stream("mcap__logger_status").status == "ok"
    data = f.read_bytes()
    # a record length pointing past the end of the file: stops there, earlier messages are kept
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    rep = decode_file(cut, tmp_path / "o2")
    s = rep.stream("mcap__logger_status")
    assert s.status == "salvaged" and 0 < s.rows < 50 and "truncated" in s.error and "cut.mcap: read stopped" in s.error
    with pytest.raises(mcap_chunks.McapReadError, match="bad magic"):
        list(mcap_chunks.scan(_bytes_file(tmp_path / "m.mcap", b"\x89MCAP1\r\n" + data[8:])))


def _bytes_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Powertrain_1kHz", "powertrain_1khz"),
        ("Chassis_100Hz", "chassis_100hz"),
        ("Environment_10Hz", "environment_10hz"),
        ("Sensor1kHzFilter", "sensor1khz_filter"),
        ("CAN_DataFrame", "can_data_frame"),
        ("ESP_VehicleSpeed", "esp_vehicle_speed"),
        ("/camera/front/compressed", "camera_front_compressed"),
        ("vehicleSpeed2kMode", "vehicle_speed2k_mode"),
        ("  ", "unnamed"),
    ],
)
def test_snake_case_stream_names(name: str, expected: str) -> None:
    assert parquet_out.snake(name) == expected
