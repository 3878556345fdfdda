"""Training-ready shards: model-ready frames in WebDataset tar files, and a streaming loader over them.

Format (the WebDataset conventions: plain POSIX tar, one sample = consecutive members sharing a key, the
extension names the field): every sample is

* ``<market>/<drive_id>/<frame_index:08d>.json``: ``steering_deg`` (the target), ``index`` (position in the
  split's frame table), market, drive, frame index, timestamp and the frame's ODD tags;
* ``<market>/<drive_id>/<frame_index:08d>.npy``: the frame as uint8 (3, H, W), already cropped and resized to
  the model input (``ImageSpec``): a reader needs no JPEG decoder and no resize, only ``numpy.load``.

Each shard starts with a PAX global header (``AD_PLATFORM.*`` keys: split manifest sha256, market, split,
split version, image spec); tar readers skip it, ``tarfile`` exposes it as ``TarFile.pax_headers``. Members
have mtime 0, uid/gid 0 and no owner names, samples are ordered by a permutation seeded by the manifest
sha256, so the same manifest gives the same bytes. Samples are written in a seeded order of camera row groups
(16-frame runs of all drives), so every shard mixes drives; the loader's buffer mixes further.

The loader (:class:`ShardStream`) streams shards (local files or ``s3://`` objects, the same code), deals a
contiguous range of the epoch's shard order to each rank and, inside a rank, to each DataLoader worker, and
shuffles within a bounded buffer seeded by ``(seed, epoch, rank, worker)``. Memory is the buffer plus one
sample per open shard, whatever the dataset size.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import json
import math
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ad_common.atomic import write_bytes_atomic
from ad_common.lake_layout import ODD_TAGS
from ad_core.train.data import CameraFrames, ImageSpec, SplitFrames, buffer_shuffle, worker_init

SHARD_FORMAT = "ad-platform/steering-shards/1"
INDEX_FILE = "index.json"
FRAMES_TABLE = "frames.parquet"
PAX_PREFIX = "AD_PLATFORM."
DEFAULT_SHARD_BYTES = 128 << 20  # shards land between half this and this (64-128 MiB) once a split is that big
_TAR_OVERHEAD = 4 * 512 + 2 * 512  # two members: headers + padding (upper bound)
_JSON_BYTES = 400  # upper bound of one sample's metadata


def sample_key(market: str, drive_id: str, frame_index: int) -> str:
    return f"{market}/{drive_id}/{frame_index:08d}"


def sample_bytes(spec: ImageSpec) -> int:
    """Upper bound of one sample's bytes in a shard."""
    return 3 * spec.height * spec.width + 128 + _JSON_BYTES + _TAR_OVERHEAD


def _npy(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, image, allow_pickle=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _split_seed(manifest_sha256: str, split: str) -> int:
    return int(hashlib.sha256(f"{manifest_sha256}/{split}".encode()).hexdigest()[:15], 16)


@dataclass(frozen=True)
class ShardFile:
    path: str  # relative to the shards folder
    samples: int
    bytes: int
    sha256: str


def write_split(
    split: SplitFrames,
    spec: ImageSpec,
    out_dir: Path,
    *,
    market: str,
    split_version: str,
    manifest_sha256: str,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    workers: int = 1,
) -> tuple[list[ShardFile], pa.Table]:
    """Write ``split``'s frames as shards under ``out_dir/<split>/``; returns the shards and the frame table
    (one row per sample, in sample order: what evaluation groups by)."""
    name = split.split
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    n = split.frames
    n_shards = max(1, math.ceil(n * sample_bytes(spec) / shard_bytes))
    per_shard = max(1, math.ceil(n / n_shards)) if n else 1
    # One seeded permutation of camera row groups; a buffer of 1 keeps that order (no in-memory mixing).
    dataset = CameraFrames(split.drives, spec, shuffle=True, seed=_split_seed(manifest_sha256, name), shuffle_buffer=1)
    loader = DataLoader(dataset, batch_size=16, num_workers=workers, worker_init_fn=worker_init if workers else None)
    table = split.table
    targets = split.targets()
    columns = {c: table.column(c).to_pylist() for c in ("market", "drive_id", "frame_index", "timestamp_ns", *ODD_TAGS)}
    order: list[int] = []  # sample position -> row of the split's frame table
    shards: list[ShardFile] = []
    samples = (
        (image, row) for images, _y, rows in loader for image, row in zip(images.numpy(), rows.tolist(), strict=True)
    )
    headers = {
        "format": SHARD_FORMAT,
        "market": market,
        "split": name,
        "split_version": split_version,
        "manifest_sha256": manifest_sha256,
        "image": spec.to_json(),
        "target_column": split.target_column,
        "shards": str(n_shards),
    }
    for k in range(n_shards):
        path = folder / f"shard-{k:06d}.tar"
        pax = {PAX_PREFIX + key: value for key, value in sorted({**headers, "shard": str(k)}.items())}
        count = 0
        with (
            open(path, "wb") as fh,
            tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT, pax_headers=pax) as tar,
        ):
            for image, row in itertools.islice(samples, per_shard):
                meta = {c: columns[c][row] for c in columns} | {
                    "steering_deg": float(targets[row]),
                    "index": len(order),
                }
                order.append(row)
                key = sample_key(meta["market"], meta["drive_id"], meta["frame_index"])
                _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
                _add(tar, f"{key}.npy", _npy(image))
                count += 1
        if count == 0:
            path.unlink()
            break
        data = path.read_bytes()
        shards.append(ShardFile(f"{name}/{path.name}", count, len(data), hashlib.sha256(data).hexdigest()))
    take = pa.array(order, pa.int64())
    frames = pa.table(
        {
            "index": pa.array(range(len(order)), pa.int64()),
            **{c: table.column(c).take(take) for c in ("market", "drive_id", "frame_index", "timestamp_ns", *ODD_TAGS)},
            "target": pa.array(targets[np.asarray(order, np.int64)] if order else [], pa.float32()),
            "shard": pa.array([i // per_shard for i in range(len(order))], pa.int32()),
        }
    )
    pq.write_table(frames, folder / FRAMES_TABLE, compression="zstd")
    return shards, frames


# ---- reading: local files and s3:// objects through the same code --------------------------------------------

_S3: dict[int, Any] = {}


def _s3_client() -> Any:
    """One boto3 client per process (loader workers are processes); endpoint from AWS_ENDPOINT_URL."""
    pid = os.getpid()
    if pid not in _S3:
        import boto3

        _S3[pid] = boto3.client("s3")
    return _S3[pid]


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def open_uri(uri: str) -> IO[bytes]:
    """A readable binary stream of a local path or an ``s3://bucket/key`` object (streamed, not downloaded)."""
    if uri.startswith("s3://"):
        bucket, key = _bucket_key(uri)
        return _s3_client().get_object(Bucket=bucket, Key=key)["Body"]  # type: ignore[no-any-return]
    return open(uri, "rb")


def read_uri(uri: str) -> bytes:
    with open_uri(uri) as fh:
        return fh.read()


def write_uri(uri: str, data: bytes) -> None:
    if uri.startswith("s3://"):
        bucket, key = _bucket_key(uri)
        _s3_client().put_object(Bucket=bucket, Key=key, Body=data)
    else:
        write_bytes_atomic(Path(uri), data)


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


@dataclass(frozen=True)
class ShardRef:
    uri: str
    samples: int


@dataclass(frozen=True)
class ShardSplit:
    """One split of one or more shard sets: its shards and frame table (both in sample order)."""

    shards: list[ShardRef]
    frames: pa.Table

    @property
    def size(self) -> int:
        return self.frames.num_rows

    def targets(self) -> np.ndarray:
        return self.frames.column("target").to_numpy().astype(np.float32)


def read_index(index_uri: str) -> dict[str, Any]:
    index = json.loads(read_uri(index_uri))
    if index.get("format") != SHARD_FORMAT:
        raise ValueError(f"{index_uri}: not a shard index of format {SHARD_FORMAT} (got {index.get('format')!r})")
    return index


def load_split(index_uris: Sequence[str], split: str) -> ShardSplit:
    """The ``split`` of the shard sets at ``index_uris`` (several markets train one model: concatenated, each
    set's sample indices shifted so they index the concatenated frame table)."""
    shards: list[ShardRef] = []
    tables: list[pa.Table] = []
    offset = 0
    for uri in index_uris:
        base = uri.rsplit("/", 1)[0]
        entry = read_index(uri)["splits"][split]
        if not entry["shards"]:
            continue
        table = pq.read_table(io.BytesIO(read_uri(join_uri(base, split, FRAMES_TABLE))))
        table = table.set_column(0, "index", pa.array(np.arange(offset, offset + table.num_rows), pa.int64()))
        tables.append(table)
        shards += [ShardRef(join_uri(base, s["path"]) + f"#{offset}", s["samples"]) for s in entry["shards"]]
        offset += table.num_rows
    frames = pa.concat_tables(tables) if tables else pa.table({"index": pa.array([], pa.int64())})
    return ShardSplit(shards, frames)


def iter_samples(uri: str, skip: int = 0, stop: int | None = None) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Samples ``skip`` .. ``stop`` of one shard (``uri#offset`` shifts ``index`` by ``offset``)."""
    path, _, shift = uri.partition("#")
    offset = int(shift or 0)
    with open_uri(path) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        key, fields, position = None, {}, 0
        for member in tar:
            tar.members = []  # keep memory flat: tarfile remembers every member otherwise
            if not member.isfile():
                continue
            name = member.name
            base, _, ext = name.rpartition("/")[2].partition(".")
            member_key = name.rpartition("/")[0] + "/" + base
            if key is not None and member_key != key:
                if position >= skip:
                    yield _sample(fields, offset)
                position += 1
                fields = {}
                if stop is not None and position >= stop:
                    return
            key = member_key
            extracted = tar.extractfile(member)
            data = extracted.read() if extracted is not None else b""
            if position >= skip:
                fields[ext] = data
        if key is not None and position >= skip and (stop is None or position < stop):
            yield _sample(fields, offset)


_NPY_HEADERS: dict[bytes, tuple[int, tuple[int, ...]]] = {}


def _image(data: bytes) -> np.ndarray:
    """``numpy.load`` of a uint8 .npy, with its header parsed once per distinct header (all frames share it)."""
    header_len = 10 + int.from_bytes(data[8:10], "little")
    header = data[:header_len]
    if header not in _NPY_HEADERS:
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.dtype != np.uint8 or not array.flags.c_contiguous:
            return array
        _NPY_HEADERS[header] = (header_len, array.shape)
    offset, shape = _NPY_HEADERS[header]
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape).copy()  # writable, owns its memory


def _sample(fields: dict[str, bytes], offset: int) -> tuple[np.ndarray, dict[str, Any]]:
    meta = json.loads(fields["json"])
    meta["index"] += offset
    return _image(fields["npy"]), meta


class ShardStream(IterableDataset):
    """Yields ``(image uint8 (3,H,W), steering float32, sample index int64)`` of this rank's share of ``shards``.

    Per epoch the shard order is permuted by ``(seed, epoch)`` (``shuffle``) and read as one sequence; rank r of
    ``world`` takes the r-th contiguous part of it, each DataLoader worker a contiguous part of that. With
    ``pad`` (training) every rank gets ``ceil(total / world)`` samples (the sequence wraps around), so all ranks
    run the same number of steps; without it (evaluation) the parts partition the samples exactly.
    """

    def __init__(
        self,
        shards: Sequence[ShardRef],
        *,
        shuffle: bool = False,
        flip: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 1024,
        rank: int = 0,
        world: int = 1,
        pad: bool = False,
    ) -> None:
        super().__init__()
        self.shards = list(shards)
        self.shuffle, self.flip, self.seed, self.shuffle_buffer = shuffle, flip, seed, shuffle_buffer
        self.rank, self.world, self.pad = rank, world, pad
        self.total = sum(s.samples for s in self.shards)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_range(self) -> tuple[int, int]:
        if self.pad:
            per = math.ceil(self.total / self.world)
            return self.rank * per, (self.rank + 1) * per
        return self.rank * self.total // self.world, (self.rank + 1) * self.total // self.world

    def __len__(self) -> int:
        lo, hi = self._rank_range()
        return hi - lo

    def _segments(self, lo: int, hi: int) -> Iterator[tuple[ShardRef, int, int]]:
        """(shard, first, stop) runs covering virtual positions lo..hi of this epoch's sequence (wrapping)."""
        order = list(range(len(self.shards)))
        if self.shuffle:
            order = [int(i) for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        sizes = [self.shards[i].samples for i in order]
        starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        position = lo
        while position < hi and self.total:
            q = position % self.total
            k = bisect.bisect_right(starts, q) - 1
            first = q - starts[k]
            take = min(sizes[k] - first, hi - position)
            yield self.shards[order[k]], first, first + take
            position += take

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        lo, hi = self._rank_range()
        lo, hi = lo + (hi - lo) * wid // nw, lo + (hi - lo) * (wid + 1) // nw
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, wid, 1])

        def emit(item: tuple[np.ndarray, dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            image, meta = item
            img, y = torch.from_numpy(image), float(meta["steering_deg"])
            if self.flip and rng.random() < 0.5:  # a mirrored road bends the other way: steering negates
                img, y = img.flip(-1), -y
            return img, torch.tensor(y, dtype=torch.float32), torch.tensor(meta["index"], dtype=torch.int64)

        items = (item for shard, first, stop in self._segments(lo, hi) for item in iter_samples(shard.uri, first, stop))
        for item in buffer_shuffle(items, self.shuffle_buffer if self.shuffle else 0, rng):
            yield emit(item)


def write_shards(
    splits: dict[str, SplitFrames],
    spec: ImageSpec,
    out_dir: Path,
    *,
    market: str,
    split_version: str,
    manifest_sha256: str,
    manifest_path: str,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    workers: int = 1,
) -> dict[str, Any]:
    """Every split's shards and frame table under ``out_dir``, and ``index.json`` (returned) naming them."""
    index: dict[str, Any] = {
        "format": SHARD_FORMAT,
        "market": market,
        "split_version": split_version,
        "manifest_sha256": manifest_sha256,
        "manifest_path": manifest_path,
        "image": json.loads(spec.to_json()),
        "shard_bytes": shard_bytes,
        "splits": {},
    }
    for name, split in splits.items():
        shards, _ = write_split(
            split,
            spec,
            out_dir,
            market=market,
            split_version=split_version,
            manifest_sha256=manifest_sha256,
            shard_bytes=shard_bytes,
            workers=workers,
        )
        index["target_column"] = split.target_column
        index["splits"][name] = {
            "frames": split.frames,
            "frames_without_target": split.dropped_no_target,
            "shards": [vars(s) for s in shards],
        }
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return index
