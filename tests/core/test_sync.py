"""Multi-sensor sync core: exact expected values on constructed streams, plus windowed == whole-drive."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ad_core.sync import (
    NO_SAMPLE_NS,
    GridReference,
    ReferenceSpec,
    StreamSpec,
    SyncConfig,
    match_samples,
    sync_arrays,
    sync_drive,
)
from ad_core.sync.report import AbsErrorHistogram

MS = 1_000_000
T0 = 1_700_000_000_000_000_000  # a realistic UTC epoch in ns: values must not lose precision up here


def ms(*values: float) -> np.ndarray:
    return T0 + np.round(np.asarray(values, dtype=np.float64) * MS).astype(np.int64)


def write(path: Path, ts: np.ndarray, row_group_size: int = 4, **cols: np.ndarray | pa.Array) -> Path:
    table = pa.table({"timestamp_ns": pa.array(np.asarray(ts, dtype=np.int64)), **cols})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


# --- sync_arrays: exact values per method ---------------------------------------------------------------


def test_linear_interpolation_exact_values_and_errors() -> None:
    st = ms(0, 10, 20, 30)
    ref = ms(-2, 5, 10, 12.5, 25, 30, 33)
    cols, err, ok = sync_arrays(ref, st, {"v": np.array([0.0, 1.0, 2.0, 4.0])}, "linear", 5 * MS)
    assert cols["v"].tolist() == [0.0, 0.5, 1.0, 1.25, 3.0, 4.0, 4.0]  # edges held, never extrapolated
    # interpolated: offset to the farther neighbour (tie -> the earlier, positive); edges: to the held one
    assert (err / MS).tolist() == [-2, 5, 0, -7.5, 5, 0, 3]
    assert ok.tolist() == [True, True, True, False, True, True, True]


def test_linear_on_jittered_stream_with_known_offset_reproduces_the_signal() -> None:
    rng = np.random.default_rng(1)
    true_ts = T0 + np.cumsum(rng.integers(4 * MS, 6 * MS, 2000))  # 200 Hz +- jitter
    offset = 123_456_789  # sensor clock runs ahead of the logger clock by this much
    ref = np.sort(rng.integers(true_ts[0], true_ts[-1], 500))

    def signal(t: np.ndarray) -> np.ndarray:
        return 3.0 + 2e-9 * (t - T0).astype(np.float64)

    cols, err, ok = sync_arrays(ref, true_ts + offset, {"v": signal(true_ts)}, "linear", 6 * MS, clock_offset_ns=offset)
    np.testing.assert_allclose(cols["v"], signal(ref), rtol=0, atol=1e-12)
    assert ok.all() and (np.abs(err) < 6 * MS).all()
    # Without the correction every value is shifted by the offset's worth of signal.
    shifted, _, _ = sync_arrays(ref, true_ts + offset, {"v": signal(true_ts)}, "linear", 6 * MS)
    inside = ref >= true_ts[0] + offset  # earlier frames hold the first sample
    assert 0 < np.count_nonzero(~inside) < 20
    np.testing.assert_allclose(shifted["v"][inside], signal(ref - offset)[inside], rtol=0, atol=1e-12)


def test_previous_for_discrete_state_with_duplicates() -> None:
    st = ms(0, 100, 100, 250)
    gear = np.array([1, 2, 3, 4], dtype=np.int8)  # the duplicate at 100 ms: the last row (3) wins
    ref = ms(-10, 0, 50, 100, 249, 250, 1000)
    cols, err, ok = sync_arrays(ref, st, {"gear": gear}, "previous", 200 * MS)
    assert cols["gear"].dtype == np.int8
    assert cols["gear"].tolist() == [0, 1, 1, 3, 3, 4, 4]  # 0 = filler where there is no sample
    assert err[0] == NO_SAMPLE_NS
    assert (err[1:] / MS).tolist() == [0, 50, 0, 149, 0, 750]
    assert ok.tolist() == [False, True, True, True, True, True, False]


def test_nearest_for_lidar_with_tolerance() -> None:
    st = ms(0, 100, 201)
    sweep = np.array([10, 11, 12], dtype=np.int64)
    ref = ms(-40, 49, 50, 51, 150, 151, 260, 300)
    cols, err, ok = sync_arrays(ref, st, {"sweep": sweep}, "nearest", 50 * MS)
    assert cols["sweep"].tolist() == [10, 10, 10, 11, 11, 12, 12, 12]  # tie at 50 ms -> the earlier sweep
    assert (err / MS).tolist() == [-40, 49, 50, -49, 50, -50, 59, 99]
    assert ok.tolist() == [True, True, True, True, True, True, False, False]


def test_duplicates_resolve_to_last_row_for_every_method() -> None:
    st = ms(0, 10, 10, 20, 20)
    v = np.array([0.0, 5.0, 1.0, 7.0, 2.0])
    ref = ms(5, 10, 15, 20, 26)
    lin, _, _ = sync_arrays(ref, st, {"v": v}, "linear", MS)
    prev, _, _ = sync_arrays(ref, st, {"v": v}, "previous", MS)
    near, _, _ = sync_arrays(ref, st, {"v": v}, "nearest", MS)
    assert lin["v"].tolist() == [0.5, 1.0, 1.5, 2.0, 2.0]
    assert prev["v"].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert near["v"].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
    m = match_samples(ref, st, "linear")
    assert m.lo.tolist() == [0, 2, 2, 4, 4] and m.hi.tolist() == [2, 2, 4, 4, 4]


def test_empty_stream_has_no_sample_anywhere() -> None:
    ref = ms(0, 33, 66)
    for method in ("linear", "previous", "nearest"):
        cols, err, ok = sync_arrays(ref, np.empty(0, np.int64), {"v": np.empty(0)}, method, MS)
        assert np.isnan(cols["v"]).all() and (err == NO_SAMPLE_NS).all() and not ok.any()


def test_stream_starting_after_first_frame() -> None:
    st = ms(100, 110, 120)
    v = np.array([1.0, 2.0, 3.0])
    ref = ms(0, 95, 100, 105)
    prev, perr, pok = sync_arrays(ref, st, {"v": v}, "previous", 10 * MS)
    assert np.isnan(prev["v"][:2]).all() and prev["v"][2:].tolist() == [1.0, 1.0]
    assert (perr[:2] == NO_SAMPLE_NS).all() and pok.tolist() == [False, False, True, True]
    lin, lerr, lok = sync_arrays(ref, st, {"v": v}, "linear", 10 * MS)
    assert lin["v"].tolist() == [1.0, 1.0, 1.0, 1.5]  # first sample held backwards, flagged by its error
    assert (lerr / MS).tolist() == [-100, -5, 0, 5] and lok.tolist() == [False, True, True, True]


@pytest.mark.parametrize("method", ["linear", "previous", "nearest"])
def test_causal_never_uses_a_later_sample(method: str) -> None:
    rng = np.random.default_rng(7)
    st = np.sort(rng.integers(T0, T0 + 10_000 * MS, 3000))
    st[100:110] = st[100]  # a duplicate run
    ref = np.sort(rng.integers(T0 - 100 * MS, T0 + 10_100 * MS, 5000))
    ref[::50] = st[rng.integers(0, st.size, ref[::50].size)]  # some frames exactly on a sample
    ref.sort()
    rel = (st - T0).astype(np.float64)  # exact in float64, so the used timestamp can be read back
    cols, err, _ = sync_arrays(ref, st, {"t": rel}, method, 5 * MS, causal=True)
    m = match_samples(ref, st, method, causal=True)
    has = m.has_sample
    assert (st[m.lo[has]] <= ref[has]).all() and (st[m.hi[has]] <= ref[has]).all()
    assert (cols["t"][has] <= (ref[has] - T0)).all() and (err[has] >= 0).all()
    assert (~has == (ref < st[0])).all()
    # causal degrades to sample-and-hold: identical to `previous`
    prev, perr, _ = sync_arrays(ref, st, {"t": rel}, "previous", 5 * MS)
    np.testing.assert_array_equal(cols["t"], prev["t"])
    np.testing.assert_array_equal(err, perr)


def test_unsorted_stream_is_rejected() -> None:
    with pytest.raises(ValueError, match="not sorted"):
        sync_arrays(ms(0), ms(10, 5), {}, "previous", MS)


def test_p99_histogram_is_a_tight_upper_bound() -> None:
    rng = np.random.default_rng(3)
    h = AbsErrorHistogram()
    data = rng.integers(0, 40 * MS, 10_001)
    for part in np.array_split(data, 7):
        h.add(part)
    exact = int(np.sort(data)[math.ceil(0.99 * data.size) - 1])
    p99 = h.percentile(99.0)
    assert p99 is not None and exact <= p99 <= exact * (1 + 1 / 64) + 1 and h.max == data.max()


# --- sync_drive: files, offsets, tolerance flag/drop, windowing ----------------------------------------


def test_sync_drive_offsets_row_index_flags_and_drop(tmp_path: Path) -> None:
    cam = write(tmp_path / "cam.parquet", ms(0, 10, 20, 30, 40))
    off = 7 * MS
    lidar = write(tmp_path / "lidar.parquet", ms(0, 10, 20, 40) + off, sweep=np.array([5, 6, 7, 8]), row_group_size=2)
    imu = write(tmp_path / "imu.parquet", ms(5, 15, 25), ax=np.array([0.0, 1.0, 2.0]))
    empty = write(tmp_path / "empty.parquet", np.empty(0, np.int64), gear=pa.array([], pa.int8()))
    streams = [
        StreamSpec("lidar", lidar, ["sweep", "timestamp_ns"], "nearest", 5 * MS, clock_offset_ns=off, row_index=True),
        StreamSpec("imu", imu, ["ax"], "linear", 5 * MS),
        StreamSpec("can", empty, ["gear"], "previous", MS),
    ]
    out = tmp_path / "out" / "synced.parquet"
    rep = sync_drive(SyncConfig(ReferenceSpec(cam), streams), out)
    t = pq.read_table(out)
    assert t.column_names == [
        "timestamp_ns", "frame_index",
        "lidar.sweep", "lidar.timestamp_ns", "lidar.row_index", "lidar.sync_error_ns", "lidar.in_tolerance",
        "imu.ax", "imu.sync_error_ns", "imu.in_tolerance",
        "can.gear", "can.sync_error_ns", "can.in_tolerance",
    ]  # fmt: skip
    assert t["frame_index"].to_pylist() == [0, 1, 2, 3, 4]
    assert t["lidar.sweep"].to_pylist() == [5, 6, 7, 7, 8]  # offset removed: 30 ms ties 20/40 -> earlier
    assert t["lidar.timestamp_ns"].to_pylist() == (ms(0, 10, 20, 20, 40) + off).tolist()  # raw sensor time
    assert t["lidar.row_index"].to_pylist() == [0, 1, 2, 2, 3]
    assert t["lidar.sync_error_ns"].to_pylist() == [0, 0, 0, 10 * MS, 0]
    assert t["lidar.in_tolerance"].to_pylist() == [True, True, True, False, True]
    assert t["imu.ax"].to_pylist() == [0.0, 0.5, 1.5, 2.0, 2.0]
    assert t["imu.sync_error_ns"].to_pylist() == [-5 * MS, 5 * MS, 5 * MS, 5 * MS, 15 * MS]
    assert t["imu.in_tolerance"].to_pylist() == [True, True, True, True, False]
    assert t["can.gear"].to_pylist() == [None] * 5 and t["can.sync_error_ns"].to_pylist() == [None] * 5
    assert t["can.in_tolerance"].to_pylist() == [False] * 5
    assert t.schema.field("can.gear").type == pa.int8()
    assert (rep.frames, rep.frames_written, rep.dropped) == (5, 5, 0)
    s = rep.streams
    assert (s["lidar"].within_tolerance, s["lidar"].out_of_tolerance, s["lidar"].no_sample) == (4, 1, 0)
    assert s["lidar"].within_tolerance_ratio == 0.8 and s["lidar"].max_abs_sync_error_ns == 10 * MS
    assert (s["imu"].within_tolerance, s["imu"].max_abs_sync_error_ns) == (4, 15 * MS)
    assert (s["can"].within_tolerance, s["can"].no_sample, s["can"].max_abs_sync_error_ns) == (0, 5, None)
    assert [p.name for p in out.parent.iterdir()] == ["synced.parquet"]  # no temporaries left

    # Drop mode: only frames every stream covers within tolerance survive (lidar/imu only here).
    rep2 = sync_drive(SyncConfig(cam, streams[:2], drop_out_of_tolerance=True), out)
    t2 = pq.read_table(out)
    assert t2["frame_index"].to_pylist() == [0, 1, 2]
    assert (rep2.frames, rep2.frames_written, rep2.dropped) == (5, 3, 2)
    assert rep2.streams["imu"].out_of_tolerance == 1 and rep2.streams["lidar"].out_of_tolerance == 1
    assert rep2.to_dict()["streams"]["lidar"]["within_tolerance_ratio"] == 0.8


def test_sync_drive_empty_reference_writes_empty_table(tmp_path: Path) -> None:
    cam = write(tmp_path / "cam.parquet", np.empty(0, np.int64))
    imu = write(tmp_path / "imu.parquet", ms(5, 15), ax=np.array([0.0, 1.0]))
    out = tmp_path / "synced.parquet"
    rep = sync_drive(SyncConfig(cam, [StreamSpec("imu", imu, ["ax"], "linear", MS)]), out)
    assert rep.frames == 0 and pq.read_table(out).num_rows == 0
    assert pq.read_schema(out).names == [
        "timestamp_ns",
        "frame_index",
        "imu.ax",
        "imu.sync_error_ns",
        "imu.in_tolerance",
    ]


def test_grid_reference_syncs_a_signal_only_drive_windowed_like_a_table(tmp_path: Path) -> None:
    """No camera: a 10 Hz grid on the vehicle clock is the reference; windows and batches change nothing."""
    speed = write(tmp_path / "speed.parquet", ms(3, 53, 103, 153, 203, 253), v=np.arange(6, dtype=np.float64))
    grid = GridReference(int(ms(3)[0]), int(ms(253)[0]), 100 * MS)
    assert (grid.first_ns, grid.frames) == (int(ms(100)[0]), 2)  # grid points are multiples of the period
    grid = GridReference(int(ms(0)[0]), int(ms(250)[0]), 50 * MS, name="grid_20hz")
    spec = StreamSpec("speed", speed, ["v"], "linear", 60 * MS)
    whole = sync_drive(SyncConfig(grid, [spec]), tmp_path / "whole.parquet")
    windowed = sync_drive(
        SyncConfig(grid, [spec], window_ns=70 * MS, read_batch_rows=2, output_row_group_rows=3),
        tmp_path / "windowed.parquet",
    )
    table = pq.read_table(tmp_path / "whole.parquet")
    assert table.equals(pq.read_table(tmp_path / "windowed.parquet"))
    assert (whole.frames, windowed.windows > whole.windows) == (6, True)
    assert table["timestamp_ns"].to_pylist() == list(ms(0, 50, 100, 150, 200, 250))
    assert table["frame_index"].to_pylist() == list(range(6))
    np.testing.assert_allclose(table["speed.v"].to_numpy(), [0, 0.94, 1.94, 2.94, 3.94, 4.94])
    assert table["speed.in_tolerance"].to_pylist() == [True] * 6


def test_sync_drive_unsorted_stream_fails_without_output(tmp_path: Path) -> None:
    cam = write(tmp_path / "cam.parquet", ms(0, 10))
    bad = write(tmp_path / "bad.parquet", ms(0, 20, 10), v=np.zeros(3))
    out = tmp_path / "synced.parquet"
    with pytest.raises(ValueError, match="not sorted"):
        sync_drive(SyncConfig(cam, [StreamSpec("bad", bad, ["v"], "previous", MS)]), out)
    assert list(tmp_path.glob("*synced*")) == []


def _random_stream(rng: np.random.Generator, t_start: int, t_end: int, period_ms: float) -> np.ndarray:
    n = int((t_end - t_start) / (period_ms * MS))
    ts = np.sort(rng.integers(t_start, t_end, n))
    dup = rng.random(n) < 0.05  # ~5 % duplicate timestamps, some in runs
    ts[1:][dup[1:]] = ts[:-1][dup[1:]]
    ts = np.maximum.accumulate(ts)
    return ts


def test_windowed_equals_whole_drive_on_random_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(42)
    dur = 20_000  # ms
    cam_ts = T0 + np.cumsum(rng.integers(30 * MS, 37 * MS, 560))
    cam_ts[300:] += 3_000 * MS  # a 3 s recording gap: longer than a window
    cam = write(tmp_path / "cam.parquet", cam_ts, row_group_size=64)
    specs = []
    for name, period, method, causal, start, end, offset in [
        ("imu", 5.0, "linear", False, -3_000, dur + 500, 0),  # row groups before the drive: skipped
        ("imu_causal", 5.0, "linear", True, 100, dur, 0),  # starts after the first frame
        ("gnss", 100.0, "linear", False, 2_000, dur - 4_000, 3 * MS),  # starts late, ends early
        ("gear", 400.0, "previous", False, -20_000, dur, -2 * MS),
        ("lidar", 100.0, "nearest", False, -3_000, dur + 2_000, 11 * MS),
        ("lidar_causal", 100.0, "nearest", True, 0, dur, 0),
    ]:
        ts = _random_stream(rng, T0 + start * MS, T0 + end * MS, period)
        cols = {"a": rng.normal(size=ts.size), "k": rng.integers(0, 5, ts.size).astype(np.int16)}
        if method == "linear":
            cols = {"a": cols["a"], "b": rng.normal(size=ts.size).astype(np.float32)}
        path = write(tmp_path / f"{name}.parquet", ts, row_group_size=int(rng.integers(5, 60)), **cols)
        specs.append(
            StreamSpec(
                name,
                path,
                list(cols),
                method,
                int(rng.integers(1, 60)) * MS,
                causal,
                offset,
                method != "linear",
            )
        )

    whole = SyncConfig(cam, specs, window_ns=10**18, read_batch_rows=10**7, output_row_group_rows=10**7)
    r_whole = sync_drive(whole, tmp_path / "whole.parquet")
    tables = [pq.read_table(tmp_path / "whole.parquet")]
    for window_ms, batch in [(700, 7), (33, 3), (1_000, 50)]:
        cfg = SyncConfig(cam, specs, window_ns=window_ms * MS, read_batch_rows=batch, output_row_group_rows=40)
        r = sync_drive(cfg, tmp_path / f"w{window_ms}.parquet")
        assert r.windows > 10
        assert {k: v.to_dict() | {"rows_read": 0} for k, v in r.streams.items()} == {
            k: v.to_dict() | {"rows_read": 0} for k, v in r_whole.streams.items()
        }
        tables.append(pq.read_table(tmp_path / f"w{window_ms}.parquet"))
    for t in tables[1:]:
        assert t.equals(tables[0])

    # ... and both equal the in-memory whole-array sync, including global row indices.
    t = tables[0]
    assert t["frame_index"].to_pylist() == list(range(cam_ts.size))
    for s in specs:
        raw = pq.read_table(s.path)
        vals = {c: raw[c].to_numpy() for c in s.columns}
        cols, err, ok = sync_arrays(
            cam_ts, raw["timestamp_ns"].to_numpy(), vals, s.method, s.tolerance_ns, s.causal,
            clock_offset_ns=s.clock_offset_ns,
        )  # fmt: skip
        has = err != NO_SAMPLE_NS
        np.testing.assert_array_equal(t[f"{s.name}.in_tolerance"].to_numpy(), ok)
        np.testing.assert_array_equal(t[f"{s.name}.sync_error_ns"].to_numpy(zero_copy_only=False)[has], err[has])
        for c in s.columns:
            got = t[f"{s.name}.{c}"].to_numpy(zero_copy_only=False)[has]
            np.testing.assert_array_equal(got.astype(cols[c].dtype), cols[c][has])
        if s.row_index:
            ri = t[f"{s.name}.row_index"].to_numpy(zero_copy_only=False)[has].astype(np.int64)
            m = match_samples(cam_ts, raw["timestamp_ns"].to_numpy() - s.clock_offset_ns, s.method, s.causal)
            np.testing.assert_array_equal(ri, m.lo[has])
    assert r_whole.streams["gnss"].no_sample == 0 and r_whole.streams["gear"].no_sample == 0
    assert r_whole.streams["imu_causal"].no_sample > 0  # frames before its first sample


def test_stream_buffer_stays_bounded_when_it_starts_long_before_the_drive(tmp_path: Path) -> None:
    from ad_core.sync.drive import _StreamCursor

    # 20 000 rows before the first frame in one row group: statistics cannot skip them, trimming must.
    ts = T0 + np.arange(-20_000, 100, dtype=np.int64) * MS
    path = write(tmp_path / "s.parquet", ts, row_group_size=10**6, v=np.arange(ts.size, dtype=np.float64))
    cur = _StreamCursor(StreamSpec("s", path, ["v"], "previous", MS), batch_rows=500, first_ref_ts=int(ms(0)[0]))
    sl_ts, cols, row0 = cur.window(int(ms(0)[0]), int(ms(10)[0]))
    assert cur._ts.size <= 500 + 11 and row0 == 20_000 and sl_ts[0] == ms(0)[0]
    assert cols[0].to_pylist()[:2] == [20_000.0, 20_001.0]
