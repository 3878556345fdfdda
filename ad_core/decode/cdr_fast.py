"""Batch decoding of fixed-layout ros2 (CDR) messages, checked against mcap-ros2-support.

Per-message Python decoding (``mcap_ros2``) costs ~150 us per sensor_msgs/Imu, which bounds high-rate topics.
Most sensor messages have a fixed byte layout for a given topic (fixed-size fields plus strings such as
``header.frame_id`` that do not change). The layout is computed from the type definition
(``ros2_types.computed_layout``: offset and type of every numeric leaf). Messages of the same length whose
structural bytes (strings, lengths, padding) equal the template's are then sliced column-wise with numpy;
sequences of messages become their JSON text from a template. The first message of every batch is also decoded
by the library and compared; any mismatch turns the fast path off for the topic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


class Layout:
    def __init__(self, length: int, template: np.ndarray, fields: dict[str, Any], structural: np.ndarray) -> None:
        self.length = length
        self.template = template
        self.fields = fields  # key -> (offset, dtype) or list[(offset, dtype)] for numeric lists
        self.structural = structural  # byte positions that must equal the template


def decode_batch(layout: Layout, data: np.ndarray, bounds: np.ndarray) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Columns for the payloads that fit the layout, and the boolean mask of those payloads. Payload i is
    ``data[bounds[i]:bounds[i + 1]]`` (payloads side by side in one uint8 array)."""
    fits = np.diff(bounds) == layout.length
    idx = np.flatnonzero(fits)
    if not len(idx):
        return {}, fits
    arr = data[bounds[idx][:, None] + np.arange(layout.length)]  # one row of bytes per fitting message
    same = np.all(arr[:, layout.structural] == layout.template[layout.structural], axis=1)
    json_floats = [leaf for _, leaves in layout.json.values() for leaf in leaves if leaf[1].kind == "f"]  # type: ignore[attr-defined]
    if json_floats:  # json writes NaN where the template's repr would write nan: such messages go generic
        same &= np.all([np.isfinite(_col(arr, off, dt)) for off, dt in json_floats], axis=0)
    if not same.all():
        fits[idx[~same]] = False
        arr = arr[same]
    m = arr.shape[0]
    cols: dict[str, pa.Array] = {}
    for k, spec in layout.fields.items():
        if isinstance(spec, list):
            vals = np.stack([_col(arr, off, dt) for off, dt in spec], axis=1).astype(np.float64)
            offsets = np.arange(0, (m + 1) * len(spec), len(spec), dtype=np.int32)
            cols[k] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(vals.reshape(-1)))
        else:
            cols[k] = pa.array(_col(arr, *spec))
    for k, (template, leaves) in layout.json.items():  # type: ignore[attr-defined]
        values = [_col(arr, off, dt).tolist() for off, dt in leaves]
        rows = zip(*values, strict=True) if values else [()] * m
        cols[k] = pa.array([template % row for row in rows], type=pa.string())
    for k, v in layout.const.items():  # type: ignore[attr-defined]
        # bytes columns of MCAP tables are binary_view, as the generic path builds them
        cols[k] = pa.array([v] * m, type=pa.binary_view() if isinstance(v, bytes) else None)
    return {k: cols[k] for k in layout.keys if k in cols}, fits  # type: ignore[attr-defined]


def _col(arr: np.ndarray, off: int, dt: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(arr[:, off : off + dt.itemsize]).view(dt).reshape(-1)
