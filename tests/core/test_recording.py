"""ad_core.recording: the per-frame signal JSON built column by column equals json.dumps of each row's values."""

from __future__ import annotations

import json
import math

import pyarrow as pa

from ad_core.recording import _clean, _json_objects


def test_signal_json_built_by_column_is_json_dumps_of_each_row() -> None:
    batch = pa.record_batch(
        {
            "imu.x": pa.array([0.1, math.nan, None, -math.inf, 1e16, 3.0], type=pa.float64()),
            "imu.y": pa.array([0.1, 2.5, None, 1e-05, -0.0, 7.25], type=pa.float32()),
            "imu.n": pa.array([1, None, -3, 2**62, 0, 5], type=pa.int64()),
            "imu.u": pa.array([2**64 - 1, 0, None, 1, 2, 3], type=pa.uint64()),
            "imu.ok": pa.array([True, False, None, True, False, True]),
            "imu.s%d": pa.array(['a"b', "é€", None, "\n", "%s", ""]),
            "imu.cov": pa.array([[1.0, math.nan], None, [], [2.0], [0.5, 0.25], [1e300]]),
        }
    )
    columns = batch.schema.names
    expected = [
        json.dumps({c.removeprefix("imu."): _clean(row[c]) for c in columns}).encode() for row in batch.to_pylist()
    ]
    assert _json_objects(batch, columns, "imu.") == expected
    assert _json_objects(batch, [], "imu.") == [b"{}"] * batch.num_rows
