"""Batch decoding of fixed-layout ros2 (CDR) messages, derived from and checked against mcap-ros2-support.

Per-message Python decoding (``mcap_ros2``) costs ~150 us per sensor_msgs/Imu, which bounds high-rate topics.
Most sensor messages have a fixed byte layout for a given topic (fixed-size fields plus strings such as
``header.frame_id`` that do not change). The layout is *learned from the library decoder*: every byte of a
template message is perturbed and decoded with mcap-ros2-support to find which flattened field it feeds
(offset, size, signedness). Messages of the same length whose structural bytes (strings, lengths,
padding) equal the template's are then sliced column-wise with numpy. The first message of every batch is
also decoded by the library and compared; any mismatch turns the fast path off for the topic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

_NUM = (int, float, bool)


class Layout:
    def __init__(self, length: int, template: np.ndarray, fields: dict[str, Any], structural: np.ndarray) -> None:
        self.length = length
        self.template = template
        self.fields = fields  # key -> (offset, dtype) or list[(offset, dtype)] for numeric lists
        self.structural = structural  # byte positions that must equal the template


def learn_layout(payload: bytes, decode: Callable[[bytes], Any], flatten: Callable[[Any], dict]) -> Layout | None:
    if len(payload) < 4 or payload[1] != 1 or len(payload) > 4096:  # little-endian CDR only
        return None
    base = flatten(decode(payload))
    owners: dict[int, tuple[str, int | None]] = {}
    buf = bytearray(payload)
    for j in range(4, len(payload)):
        buf[j] ^= 0x5A
        try:
            row = flatten(decode(bytes(buf)))
        except Exception:
            row = None
        buf[j] ^= 0x5A
        if row is None or row.keys() != base.keys():
            continue
        changed = []
        for k, v in base.items():
            w = row[k]
            if isinstance(v, list):
                if not isinstance(w, list) or len(w) != len(v):
                    changed.append((k, -1))
                    continue
                for i, (a, b) in enumerate(zip(v, w, strict=True)):
                    if a != b and not (a != a and b != b):
                        changed.append((k, i))
            elif v != w and not (v != v and w != w):
                changed.append((k, None))
        if len(changed) == 1 and changed[0][1] != -1 and isinstance(_value(base, changed[0]), _NUM):
            owners[j] = changed[0]
    # group byte positions per leaf
    spans: dict[tuple[str, int | None], list[int]] = {}
    for j, leaf in owners.items():
        spans.setdefault(leaf, []).append(j)
    fields: dict[str, Any] = {}
    for leaf, pos in spans.items():
        pos.sort()
        off, size = pos[0], pos[-1] - pos[0] + 1
        if size not in (1, 2, 4, 8) or len(pos) != size:
            continue  # e.g. bools whose other bits do not matter: leave to structural check
        v = _value(base, leaf)
        if isinstance(v, bool):
            dt = np.dtype("?") if size == 1 else None
        elif isinstance(v, float):
            dt = np.dtype(f"<f{size}")
        else:
            probe = bytearray(payload)
            probe[off : off + size] = b"\xff" * size
            try:
                pv = _value(flatten(decode(bytes(probe))), leaf)
            except Exception:
                continue
            dt = np.dtype(f"<i{size}") if pv == -1 else np.dtype(f"<u{size}")
        if dt is None:
            continue
        if np.frombuffer(payload, dtype=dt, count=1, offset=off)[0] != v and v == v:
            continue
        k, i = leaf
        if i is None:
            fields[k] = (off, dt)
        else:
            fields.setdefault(k, {})[i] = (off, dt)
    out: dict[str, Any] = {}
    covered = np.zeros(len(payload), dtype=bool)
    for k, spec in fields.items():
        if isinstance(spec, dict):
            n = len(base[k])
            if sorted(spec) != list(range(n)):
                continue  # incomplete list: leave to fallback (field dropped from fast path)
            out[k] = [spec[i] for i in range(n)]
            for off, dt in out[k]:
                covered[off : off + dt.itemsize] = True
        else:
            out[k] = spec
            covered[spec[0] : spec[0] + spec[1].itemsize] = True
    # every key of the row must be produced: numeric ones from the layout, the rest constant
    const = {k: v for k, v in base.items() if k not in out}
    for v in const.values():
        if isinstance(v, list) and v and isinstance(v[0], _NUM):
            return None  # a numeric list we could not map
    template = np.frombuffer(payload, dtype=np.uint8)
    lay = Layout(len(payload), template, out, np.flatnonzero(~covered))
    lay.const = const  # type: ignore[attr-defined]
    lay.keys = list(base.keys())  # type: ignore[attr-defined]
    return lay


def _value(row: dict, leaf: tuple[str, int | None]) -> Any:
    k, i = leaf
    return row[k] if i is None else row[k][i]


def decode_batch(layout: Layout, payloads: list[bytes]) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Columns for the payloads that fit the layout, and the boolean mask of those payloads."""
    n = len(payloads)
    fits = np.array([len(p) == layout.length for p in payloads], dtype=bool)
    idx = np.flatnonzero(fits)
    if not len(idx):
        return {}, fits
    arr = np.frombuffer(b"".join(payloads[i] for i in idx), dtype=np.uint8).reshape(len(idx), layout.length)
    same = np.all(arr[:, layout.structural] == layout.template[layout.structural], axis=1)
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
    for k, v in layout.const.items():  # type: ignore[attr-defined]
        # bytes columns of MCAP tables are binary_view, as the generic path builds them
        cols[k] = pa.array([v] * m, type=pa.binary_view() if isinstance(v, bytes) else None)
    del n
    return {k: cols[k] for k in layout.keys if k in cols}, fits  # type: ignore[attr-defined]


def _col(arr: np.ndarray, off: int, dt: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(arr[:, off : off + dt.itemsize]).view(dt).reshape(-1)
