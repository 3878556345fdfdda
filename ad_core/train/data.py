"""Frames of a split manifest as a streaming, deterministic torch ``IterableDataset``.

The manifest (``ad_common.lake_layout.SPLIT_MANIFEST_SCHEMA``) lists one row per frame: its split, the drive's
synced ``frames.parquet`` (where the steering target is a synced signal column) and the decoded reference
camera table (``camera_path``, whose row ``frame_index`` holds the frame's JPEG in column ``data``, 16 frames
per row group). Nothing is loaded per split:

* targets are read once per drive from the synced table (two columns, by row group) into the drive's
  :class:`DriveFrames` (16 bytes per selected frame);
* JPEGs are read one camera row group at a time and decoded in the DataLoader workers (simplejpeg), cropped
  below the horizon and resized to the model's input; a seeded shuffle buffer of ``shuffle_buffer`` frames
  mixes row groups, so memory is one row group + the buffer + the loader's prefetch, whatever the split size.

Ordering is deterministic: row groups are permuted by ``(seed, epoch)``, dealt to workers round-robin, and each
worker shuffles with ``(seed, epoch, worker)``; the DataLoader returns workers' batches in a fixed rotation.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import simplejpeg
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ad_common.lake_layout import ODD_TAGS, SPLIT_MANIFEST_SCHEMA, SPLITS

T = TypeVar("T")

# Steering wheel angle (deg, positive = left) as synced signal columns, preferred first: the EPS CAN signal
# (decoded with the market DBC), then the logger's own chassis channel.
STEERING_COLUMNS = ("eps_steering_angle.SteeringWheelAngle", "chassis_100hz.SteerWheelAngle")
CAMERA_COLUMN = "data"


@dataclass(frozen=True)
class ImageSpec:
    """Model input: rows from ``crop_top`` (a fraction of the height: the sky carries no steering) resized."""

    height: int = 66
    width: int = 200
    crop_top: float = 0.40

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ImageSpec:
        return cls(**json.loads(text))


@dataclass
class DriveFrames:
    """The selected frames of one drive: local files, sorted frame indices, targets and row ids."""

    market: str
    drive_id: str
    synced: Path
    camera: Path
    frame_index: np.ndarray  # int64, ascending
    rows: np.ndarray  # int64: row of each frame in the split's frame table (evaluation groups by it)
    target: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass
class SplitFrames:
    """One split: its frame table (manifest columns, one row per frame with a target) and its drives."""

    split: str
    table: pa.Table
    drives: list[DriveFrames]
    target_column: str
    dropped_no_target: int = 0

    @property
    def frames(self) -> int:
        return self.table.num_rows

    def targets(self) -> np.ndarray:
        out = np.zeros(self.frames, np.float32)
        for d in self.drives:
            out[d.rows] = d.target
        return out


def read_manifest(path: Path) -> pa.Table:
    """The manifest, checked against the contract (a column missing or of another type fails here, named)."""
    table = pq.read_table(path)
    missing = [f for f in SPLIT_MANIFEST_SCHEMA if f.name not in table.schema.names]
    if missing:
        raise ValueError(f"{path}: not a split manifest, missing {', '.join(f.name for f in missing)}")
    table = table.select(SPLIT_MANIFEST_SCHEMA.names).cast(SPLIT_MANIFEST_SCHEMA)
    bad = set(pc.unique(table.column("split")).to_pylist()) - set(SPLITS)
    if bad:
        raise ValueError(f"{path}: unknown split value(s) {sorted(map(str, bad))}; expected {SPLITS}")
    return table


def _pick_target_column(synced: Path, candidates: Sequence[str]) -> str:
    names = pq.ParquetFile(synced).schema_arrow.names
    for c in candidates:
        if c in names:
            return c
    raise ValueError(f"{synced}: none of the steering columns {list(candidates)} is synced")


def _drive_targets(synced: Path, column: str, frame_index: np.ndarray) -> np.ndarray:
    """Target of each wanted frame (NaN where missing or out of sync tolerance), read row group by row group."""
    pf = pq.ParquetFile(synced)
    stream = column.rsplit(".", 1)[0]
    tol = f"{stream}.in_tolerance"
    cols = ["frame_index", column] + ([tol] if tol in pf.schema_arrow.names else [])
    out = np.full(len(frame_index), np.nan, np.float32)
    for rg in range(pf.num_row_groups):
        t = pf.read_row_group(rg, columns=cols)
        fi = t.column("frame_index").to_numpy()
        value = t.column(column).to_numpy(zero_copy_only=False).astype(np.float32)
        if tol in cols:
            ok = t.column(tol).fill_null(False).to_numpy(zero_copy_only=False)
            value = np.where(ok, value, np.nan)
        pos = np.searchsorted(fi, frame_index)
        pos_c = np.minimum(pos, len(fi) - 1)
        hit = (pos < len(fi)) & (fi[pos_c] == frame_index)
        out[hit] = value[pos_c[hit]]
    return out


def select_split(
    manifest: pa.Table,
    split: str,
    resolve: Callable[[str], Path],
    markets: Sequence[str] | None = None,
    target_columns: Sequence[str] = STEERING_COLUMNS,
    max_frames_per_drive: int | None = None,
) -> SplitFrames:
    """The frames of ``split`` that can be trained on: not excluded, with a camera and a synced steering value.

    ``resolve`` maps a lake-relative path to a local file. ``max_frames_per_drive`` keeps an evenly spaced
    subset (tests, quick searches). The frame table is sorted by market, drive, frame (a fixed order).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    mask = pc.and_(pc.equal(manifest.column("split"), split), pc.invert(manifest.column("excluded").fill_null(False)))
    mask = pc.and_(mask, pc.is_valid(manifest.column("camera_path")))
    if markets is not None:
        mask = pc.and_(mask, pc.is_in(manifest.column("market"), pa.array(list(markets))))
    table = manifest.filter(mask).sort_by(
        [("market", "ascending"), ("drive_id", "ascending"), ("frame_index", "ascending")]
    )
    keep: list[np.ndarray] = []
    drives: list[DriveFrames] = []
    target_column = ""
    dropped = 0
    # One group per (market, drive): a drive id is unique within its market only.
    key = np.char.add(
        np.asarray(table.column("market").to_pylist(), dtype=str),
        np.char.add("/", np.asarray(table.column("drive_id").to_pylist(), dtype=str)),
    )
    bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True]) if len(key) else np.array([0])
    kept_rows = 0
    for lo, hi in itertools.pairwise(bounds):
        rows = np.arange(lo, hi)
        if max_frames_per_drive is not None and len(rows) > max_frames_per_drive:
            rows = rows[np.linspace(0, len(rows) - 1, max_frames_per_drive).round().astype(np.int64)]
        first = table.slice(int(lo), 1).to_pylist()[0]
        synced, camera = resolve(first["synced_path"]), resolve(first["camera_path"])
        if not target_column:
            target_column = _pick_target_column(synced, target_columns)
        fi = table.column("frame_index").take(pa.array(rows)).to_numpy()
        target = _drive_targets(synced, target_column, fi)
        ok = np.isfinite(target)
        dropped += int((~ok).sum())
        rows, fi, target = rows[ok], fi[ok], target[ok]
        keep.append(rows)
        drives.append(
            DriveFrames(
                market=first["market"],
                drive_id=first["drive_id"],
                synced=synced,
                camera=camera,
                frame_index=fi,
                rows=np.arange(kept_rows, kept_rows + len(rows), dtype=np.int64),
                target=target,
            )
        )
        kept_rows += len(rows)
    taken = table.take(pa.array(np.concatenate(keep) if keep else np.zeros(0, np.int64)))
    return SplitFrames(split, taken, drives, target_column or target_columns[0], dropped)


def decode_frames(jpegs: Sequence[bytes], spec: ImageSpec) -> torch.Tensor:
    """JPEGs -> uint8 tensor (N, 3, height, width): cropped below ``crop_top``, area-resized."""
    imgs = [simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs]
    h = imgs[0].shape[0]
    top = round(spec.crop_top * h)
    batch = torch.from_numpy(np.stack([im[top:] for im in imgs])).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(batch, size=(spec.height, spec.width), mode="area")
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def buffer_shuffle(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """``items`` in a seeded random order, holding at most ``size`` of them (0: in order, nothing held).

    Each item is handed out as soon as it is drawn, so a caller that draws from ``rng`` per item (augmentation)
    interleaves with the draws here in a fixed order.
    """
    if size <= 0:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    while buffer:
        j = int(rng.integers(len(buffer)))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        yield buffer.pop()


class CameraFrames(IterableDataset):
    """Yields ``(image uint8 (3,H,W), steering float32, row id int64)`` for every frame of ``drives``."""

    def __init__(
        self,
        drives: Sequence[DriveFrames],
        spec: ImageSpec,
        *,
        shuffle: bool = False,
        flip: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 512,
    ) -> None:
        super().__init__()
        self.drives = list(drives)
        self.spec = spec
        self.shuffle, self.flip, self.seed, self.shuffle_buffer = shuffle, flip, seed, shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(d.frame_index) for d in self.drives)

    def _chunks(self) -> list[tuple[int, int, np.ndarray]]:
        """(drive, camera row group, positions of the drive's frames in it), in a fixed or seeded order."""
        chunks: list[tuple[int, int, np.ndarray]] = []
        for i, d in enumerate(self.drives):
            if not len(d.frame_index):
                continue
            kv = pq.ParquetFile(d.camera).metadata.metadata or {}
            n = int(kv.get(b"frames_per_row_group", b"0"))
            if n <= 0:
                raise ValueError(f"{d.camera} is not a frame table (no frames_per_row_group metadata)")
            groups = d.frame_index // n
            cuts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1], True])
            chunks += [(i, int(groups[a]), np.arange(a, b)) for a, b in itertools.pairwise(cuts)]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(chunks))
            chunks = [chunks[j] for j in order]
        return chunks

    def _read(self, chunk: tuple[int, int, np.ndarray], files: dict[int, pq.ParquetFile]) -> Iterator[tuple]:
        i, rg, pos = chunk
        d = self.drives[i]
        if i not in files:
            if len(files) >= 8:  # a few open camera files per worker, not one per drive of the split
                files.pop(next(iter(files)))
            files[i] = pq.ParquetFile(d.camera, pre_buffer=False)
        t = files[i].read_row_group(rg, columns=["frame_index", CAMERA_COLUMN])
        fi = t.column("frame_index").to_numpy()
        where = np.searchsorted(fi, d.frame_index[pos])
        if not np.array_equal(fi[np.minimum(where, len(fi) - 1)], d.frame_index[pos]):
            raise ValueError(f"{d.camera}: row group {rg} lacks frames the manifest lists")
        data = t.column(CAMERA_COLUMN)
        images = decode_frames([data[int(w)].as_py() for w in where], self.spec)
        for k, p in enumerate(pos):
            # clone: a view would keep its whole 16-frame row-group tensor alive in the shuffle buffer, so the
            # buffer's memory would grow to 16x its frames (measured: +200 MB per 1,200 frames before this)
            yield images[k].clone(), float(d.target[p]), int(d.rows[p])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        chunks = self._chunks()[wid::nw]
        rng = np.random.default_rng([self.seed, self.epoch, wid, 1])
        files: dict[int, pq.ParquetFile] = {}

        def emit(item: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            img, y, row = item
            if self.flip and rng.random() < 0.5:  # a mirrored road bends the other way: steering negates
                img, y = img.flip(-1), -y
            return img, torch.tensor(y, dtype=torch.float32), torch.tensor(row, dtype=torch.int64)

        items = (item for chunk in chunks for item in self._read(chunk, files))
        for item in buffer_shuffle(items, self.shuffle_buffer if self.shuffle else 0, rng):
            yield emit(item)


def worker_init(_worker_id: int) -> None:
    """One intra-op thread per loader worker: decoding workers must not compete with training threads."""
    torch.set_num_threads(1)


def batches_per_epoch(frames: int, batch_size: int) -> int:
    return math.ceil(frames / batch_size)


__all__ = [
    "CAMERA_COLUMN",
    "ODD_TAGS",
    "STEERING_COLUMNS",
    "CameraFrames",
    "DriveFrames",
    "ImageSpec",
    "SplitFrames",
    "batches_per_epoch",
    "decode_frames",
    "read_manifest",
    "select_split",
    "worker_init",
]
