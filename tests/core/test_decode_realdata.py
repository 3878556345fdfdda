"""Decode core against the real MDF4 / MCAP / DBC files in ../shared/data."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from asammdf import MDF

from ad_core.decode import DECODER_VERSION, DecodeError, decode_drive, decode_file, read_frame
from ad_core.decode.__main__ import main as cli_main

pytestmark = pytest.mark.realdata

REAL_OK = [
    *(
        f"mcap/{p}"
        for p in [
            "depthai__recording.mcap",
            "lichtblick__custom-camera-model.mcap",
            "lichtblick__example_logs.mcap",
            "rosbag2__rosbag2_cpp_test_rosbag2_cpp_bags_only_topics.mcap",
            "rosbag2__rosbag2_py_test_resources_mcap_convert_a_rewriter_a_0.mcap",
            "rosbag2__rosbag2_py_test_resources_mcap_convert_b_rewriter_b_0.mcap",
            "rosbag2__rosbag2_py_test_resources_mcap_talker_talker.mcap",
            "rosbag2__rosbag2_py_test_resources_mcap_wbag_wbag_0.mcap",
            "rosbag2__rosbag2_tests_resources_mcap_cdr_test_cdr_test_0.mcap",
            "rosbag2__rosbag2_transport_test_resources_mcap_test_bag_for_seek_test_bag_for_seek_0.mcap",
            "rplidar-zenoh__out.mcap",
        ]
    ),
]

BAD = {
    "cssapi__data-processing_LOG_25674460_00000001_single_can_bus_1.MFC": "CANedge compressed/encrypted",
    "cssapi__data-processing_LOG_25674460_00000001_single_can_bus_1.MFE": "CANedge compressed/encrypted",
    "cssapi__data-processing_LOG_25674460_00000001_single_message_can_bus_1_256_window.MFM": "CANedge",
    "cssapi__other_concatenate-mf4-by-period_LOG_5BC57FEC_00000001_00000005-643E503A.MFC": "CANedge",
    "foxglove-mcap__demo__git-lfs-pointer.mcap": "Git LFS pointer",
    "mdf4-converters__invalid__git-lfs-pointer.MF4": "Git LFS pointer",
}
SKIPPED_ENCODINGS = {
    "mcap_arrow__test__schema-encoding-cdr.mcap": ("mcap__example", "no decoder for message encoding 'cdr'"),
    "rosbag2__wrong_rmw_test_0__bad-message-encoding.mcap": (
        "mcap__test_topic",
        "no decoder for message encoding 'wrong_format'",
    ),
}
SPLIT = [
    f"mcap/rosbag2__rosbag2_py_test_resources_mcap_reindex_test_bags_multiple_files_multiple_files_{i}.mcap"
    for i in range(3)
]


def _check_table(path: Path, source_name: str) -> None:
    pf = pq.ParquetFile(path)
    kv = {k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items()}
    assert kv["decoder_version"] == DECODER_VERSION
    assert source_name in kv["source_file"]
    assert len(kv["source_sha256"].split(",")[0]) == 64
    t = pf.read(columns=["timestamp_ns"])
    assert str(t.schema.field("timestamp_ns").type) == "int64"
    ts = t.column("timestamp_ns").to_numpy()
    assert np.all(np.diff(ts) >= 0), f"{path.name} not sorted"


def test_every_mdf_file_decodes(shared_data: Path, tmp_path: Path) -> None:
    files = sorted((shared_data / "mdf4").rglob("*.*"))
    assert len(files) > 80
    for i, f in enumerate(files):
        out = tmp_path / str(i)
        rep = decode_file(f, out)
        assert rep.streams, f.name
        ok = [s for s in rep.streams if s.status == "ok"]
        assert ok and sum(s.rows for s in ok) > 0, f.name
        for s in ok:
            _check_table(Path(s.parquet), f.name)


@pytest.mark.parametrize("rel", REAL_OK)
def test_real_mcap_decodes(shared_data: Path, tmp_path: Path, rel: str) -> None:
    f = shared_data / rel
    rep = decode_file(f, tmp_path)
    assert rep.streams and all(s.status == "ok" for s in rep.streams)
    for s in rep.streams:
        _check_table(Path(s.parquet), f.name)


def test_real_mcap_values(shared_data: Path, tmp_path: Path) -> None:
    rep = decode_file(shared_data / "mcap/rplidar-zenoh__out.mcap", tmp_path / "a")
    s = rep.stream("mcap__laser_scan")
    assert (s.kind, s.rows) == ("pointcloud", 256)
    assert s.start_ns == 1689269563619269372
    assert abs(s.rate_hz - 7.97) < 0.05
    t = pq.read_table(s.parquet)
    assert "ranges" in t.column_names and "header_stamp_ns" in t.column_names
    cdr = shared_data / "mcap/rosbag2__rosbag2_tests_resources_mcap_cdr_test_cdr_test_0.mcap"
    rep = decode_file(cdr, tmp_path / "b")
    basic = pq.read_table(rep.stream("mcap__test_topic").parquet)
    assert basic.num_rows == 3 and "float64_value" in basic.column_names
    # depthai json at 30 Hz, lz4 chunks
    rep = decode_file(shared_data / "mcap/depthai__recording.mcap", tmp_path / "c")
    assert rep.stream("mcap__video").rows == 124 and abs(rep.stream("mcap__video").rate_hz - 30.0) < 0.1


def test_out_of_order_mcap_gets_sorted(shared_data: Path, tmp_path: Path) -> None:
    rep = decode_file(shared_data / "mcap/lichtblick__example_logs.mcap", tmp_path)
    s = rep.stream("mcap__rosout")
    assert s.rows == 1000 and s.kind == "log"
    ts = pq.read_table(s.parquet).column("timestamp_ns").to_numpy()
    assert ts[0] == 1740566235448000000 and np.all(np.diff(ts) >= 0)


def test_split_mcap_parts_become_one_table(shared_data: Path, tmp_path: Path) -> None:
    parts = [shared_data / p for p in SPLIT]
    rep = decode_drive(list(reversed(parts)), tmp_path)
    [s] = rep.streams
    assert s.name == "mcap__chatter" and s.rows == 1324 + 1324 + 529
    t = pq.read_table(s.parquet)
    ts = t.column("timestamp_ns").to_numpy()
    assert ts[0] == 1616653333034080451 and np.all(np.diff(ts) >= 0)
    kv = pq.ParquetFile(s.parquet).metadata.metadata
    assert kv[b"source_file"].decode().count(".mcap") == 3


def test_images_are_fetchable_by_index(shared_data: Path, tmp_path: Path) -> None:
    rep = decode_file(shared_data / "mcap/lichtblick__custom-camera-model.mcap", tmp_path)
    s = rep.stream("mcap__image_compressed")
    assert s.kind == "image" and s.rows == 10
    for i in range(10):
        frame = read_frame(s.parquet, i)
        assert frame[:2] == b"\xff\xd8"  # JPEG decoded from the JSON base64 payload
    t = pq.read_table(s.parquet)
    assert t.column("frame_index").to_pylist() == list(range(10))
    # log_time here is milliseconds written as ns: the header stamp is kept separately
    assert t.column("header_stamp_ns")[0].as_py() == 1747930377 * 10**9
    with pytest.raises(IndexError):
        read_frame(s.parquet, 10)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_fail_cleanly(shared_data: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(DecodeError) as ei:
        decode_file(shared_data / "bad" / name, tmp_path)
    msg = str(ei.value)
    assert name in msg and BAD[name] in msg


@pytest.mark.parametrize("name", sorted(SKIPPED_ENCODINGS))
def test_undecodable_encodings_are_skipped(shared_data: Path, tmp_path: Path, name: str) -> None:
    stream, reason = SKIPPED_ENCODINGS[name]
    rep = decode_file(shared_data / "bad" / name, tmp_path)
    s = rep.stream(stream)
    assert s.status == "skipped" and reason in s.error and s.parquet is None
    assert not list(tmp_path.glob("*.parquet"))


def test_bad_file_does_not_sink_the_drive(shared_data: Path, tmp_path: Path) -> None:
    rep = decode_drive(
        [shared_data / "bad/foxglove-mcap__demo__git-lfs-pointer.mcap", shared_data / "mcap/depthai__recording.mcap"],
        tmp_path,
    )
    assert rep.stream("mcap__video").rows == 124
    assert any("git-lfs-pointer" in e and "Git LFS" in e for e in rep.errors)


def test_canedge_dbc_decoding_matches_vendor_reference(shared_data: Path, tmp_path: Path) -> None:
    raw = sorted((shared_data / "mdf4/canedge_raw").glob("*3BA199E2*"))
    ref_files = sorted((shared_data / "mdf4/canedge_decoded").glob("*3BA199E2*"))
    assert len(raw) == len(ref_files) >= 3
    dbc = shared_data / "dbc/canmod-gps.dbc"
    for k, (rf, ref_path) in enumerate(zip(raw, ref_files, strict=True)):
        assert rf.name.split("_")[-1].lower() == ref_path.name.split("_")[-1].lower()
        out = tmp_path / str(k)
        rep = decode_drive([rf], out, [dbc])
        ref = MDF(ref_path)
        start = ref.header.abs_time
        compared = 0
        for g in ref.groups:
            names = [c.name for c in g.channels if c.name != "time"]
            tables = {s.name: pq.read_table(s.parquet) for s in rep.streams if s.kind == "can"}
            owner = next(t for t in tables.values() if names[0] in t.column_names)
            for name in names:
                sig = ref.get(name)
                got = owner.column(name).to_numpy(zero_copy_only=False)
                ts = owner.column("timestamp_ns").to_numpy()
                assert len(got) == len(sig.samples), name
                np.testing.assert_allclose(got, sig.samples.astype(np.float64), rtol=0, atol=1e-9, err_msg=name)
                np.testing.assert_array_equal(ts, start + np.round(sig.timestamps * 1e9).astype(np.int64))
                compared += 1
        ref.close()
        assert compared == 39
        kv = pq.ParquetFile(out / "can__gnss_imu.parquet").metadata.metadata
        assert kv[b"dbc_sha256"] == hashlib.sha256(dbc.read_bytes()).hexdigest().encode()
        schema = pq.read_schema(out / "can__gnss_imu.parquet")
        assert schema.field("AccelerationX").metadata[b"unit"] == b"m/s^2"


def test_j1939_dbc(shared_data: Path, tmp_path: Path) -> None:
    f = shared_data / "mdf4/canedge_raw/cssapi__data-processing_LOG_TP_FCBF0606_00002058_00000001-5FAB8E54.mf4"
    rep = decode_drive([f], tmp_path, [shared_data / "dbc/CSS-Electronics-SAE-J1939-DEMO.dbc"])
    rows = {s.name: (s.rows, s.status) for s in rep.streams}
    # frames of ids the DBC does not know are kept raw, not dropped (was: only listed in report.errors)
    assert rows == {
        "can__eec1": (6176, "ok"),
        "can__ccvs1": (617, "all_null"),
        "can__unknown_frames": (10881, "undecoded"),
    }
    unknown = pq.read_table(tmp_path / "can__unknown_frames.parquet")
    assert unknown.column("can_id").to_numpy().tolist().count(0x1CECFF00) > 0  # J1939 TP.CM, as logged
    assert {len(d) for d in unknown.column("data").to_pylist()} == {8}
    with MDF(f) as mdf:  # every frame of the file is in one of the three tables
        frames = len(mdf.get("CAN_DataFrame.ID").samples)
    assert frames == 6176 + 617 + 10881
    eec1 = pq.read_table(tmp_path / "can__eec1.parquet")
    # same values as asammdf's whole-file extract_bus_logging
    with MDF(f) as mdf:
        ref = mdf.extract_bus_logging({"CAN": [(shared_data / "dbc/CSS-Electronics-SAE-J1939-DEMO.dbc", 0)]})
        sig = ref.get("EngineSpeed")
    np.testing.assert_array_equal(eec1.column("EngineSpeed").to_numpy(), sig.samples.astype(np.float64))
    # CCVS1 frames are present but WheelBasedVehicleSpeed is J1939 "not available" (0xFFFF) -> null: flagged
    ccvs1 = pq.read_table(tmp_path / "can__ccvs1.parquet")
    assert ccvs1.column("WheelBasedVehicleSpeed").null_count == 617
    assert rep.stream("can__ccvs1").error == "every signal is null in all 617 rows (wrong DBC for these frames?)"


def test_redecode_is_byte_identical(shared_data: Path, tmp_path: Path) -> None:
    raw = "mdf4/canedge_raw/cssapi__other_matlab-basics_LOG_datastore_3BA199E2_00000164_00000002-60FE415D.MF4"
    inputs = [
        shared_data / raw,
        shared_data / "mcap/lichtblick__example_logs.mcap",
        shared_data / "mcap/rplidar-zenoh__out.mcap",
    ]
    dbc = [shared_data / "dbc/canmod-gps.dbc"]
    decode_drive(inputs, tmp_path / "a", dbc)
    decode_drive(inputs, tmp_path / "b", dbc)
    a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert a == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(a) >= 11
    for name in a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def _cut(src: Path, dst: Path, n: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n])
    return dst


def test_truncated_mcap(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "mcap/rplidar-zenoh__out.mcap"
    size = src.stat().st_size
    # before the footer / summary: every message chunk is complete -> all rows, reported as salvaged
    rep = decode_file(_cut(src, tmp_path / "a.mcap", size - 200), tmp_path / "oa")
    s = rep.stream("mcap__laser_scan")
    assert s.rows == 256 and s.status == "salvaged" and "read stopped at byte" in s.error
    # mid-chunk (single chunk file): nothing readable -> clean error naming the file
    with pytest.raises(DecodeError, match=r"b\.mcap: not readable as MCAP"):
        decode_file(_cut(src, tmp_path / "b.mcap", size // 2), tmp_path / "ob")
    # cut inside the magic / header
    with pytest.raises(DecodeError, match=r"c\.mcap: not readable as MCAP"):
        decode_file(_cut(src, tmp_path / "c.mcap", 12), tmp_path / "oc")


def test_truncated_mdf(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "mdf4/vendor_examples/openatfx__Vector_SingleDZ_Deflate.mf4"
    for frac in (0.5, 0.9):
        f = _cut(src, tmp_path / f"cut{frac}.mf4", int(src.stat().st_size * frac))
        try:
            rep = decode_file(f, tmp_path / f"o{frac}")
        except DecodeError as exc:
            assert f.name in str(exc)
        else:
            assert rep.errors or any(s.status != "ok" for s in rep.streams) or rep.rows > 0
    # cut inside the header blocks
    f = _cut(src, tmp_path / "head.mf4", 100)
    with pytest.raises(DecodeError, match=r"head\.mf4"):
        decode_file(f, tmp_path / "oh")


def test_cli(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_data / "mcap/depthai__recording.mcap", src)
    shutil.copy(shared_data / "dbc/canmod-gps.dbc", src)
    rc = cli_main([str(src), "--out", str(tmp_path / "out"), "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["ok"] and summary["streams"][0]["rows"] == 124
    assert (tmp_path / "out" / "mcap__video.parquet").exists()
    rc = cli_main(
        [
            str(shared_data / "bad/mdf4-converters__invalid__git-lfs-pointer.MF4"),
            "--out",
            str(tmp_path / "out2"),
            "--quiet",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1 and not summary["ok"] and "Git LFS" in summary["errors"][0]
    assert not (tmp_path / "out2").exists()
