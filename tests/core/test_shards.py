"""Training shards on a real synced fleet: byte-identical re-writes, the WebDataset format as its readers see it
(Python's tarfile per the spec; webdataset itself where installed), the loader's partition across ranks and
workers, local and S3 (moto on loopback) streaming alike."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from collections import defaultdict
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from ad_core.train.data import CameraFrames, ImageSpec, read_manifest, select_split
from ad_core.train.shards import PAX_PREFIX, ShardRef, ShardStream, load_split, write_shards
from tests.support.splits import lake_view, write_manifest

SHARD_BYTES = 4 << 20  # ~100 frames a shard: several shards from three 30 s drives


@pytest.fixture(scope="module")
def written(de_fleet: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    root = tmp_path_factory.mktemp("shards")
    lake = lake_view(de_fleet, root)
    drives = sorted(p.name for p in (lake / "synced" / "de").iterdir())
    rel, sha = write_manifest(lake, "de", splits=dict(zip(drives, ("train", "val", "test"), strict=True)))
    manifest = read_manifest(lake / rel)
    splits = {s: select_split(manifest, s, lambda r: lake / r) for s in ("train", "val", "test")}
    kw = {
        "market": "de",
        "split_version": "v1",
        "manifest_sha256": sha,
        "manifest_path": rel,
        "shard_bytes": SHARD_BYTES,
    }
    index = write_shards(splits, ImageSpec(), root / "a", workers=0, **kw)
    write_shards(splits, ImageSpec(), root / "b", workers=1, **kw)  # a worker process decoding: same bytes
    return root / "a", root / "b", index, splits


def test_rewriting_the_same_manifest_gives_the_same_bytes(written) -> None:  # type: ignore[no-untyped-def]
    a, b, index, _ = written
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".tar"]) >= 6
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert all(2 << 20 <= s["bytes"] <= SHARD_BYTES for s in index["splits"]["train"]["shards"][:-1])


def test_a_shard_opens_with_tarfile_per_the_webdataset_spec(written) -> None:  # type: ignore[no-untyped-def]
    a, _, index, splits = written
    shard = a / index["splits"]["train"]["shards"][0]["path"]
    with tarfile.open(shard) as tar:
        assert tar.pax_headers[PAX_PREFIX + "manifest_sha256"] == index["manifest_sha256"]
        assert json.loads(tar.pax_headers[PAX_PREFIX + "image"]) == {"crop_top": 0.4, "height": 66, "width": 200}
        samples: dict[str, dict[str, bytes]] = defaultdict(dict)
        for member in tar.getmembers():  # WebDataset: key = path up to the first dot of the file name
            key, ext = member.name.split(".", 1)
            samples[key][ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    split = splits["train"]
    plain = {int(r): (img, float(y)) for img, y, r in CameraFrames(split.drives, ImageSpec())}
    table = split.table.to_pylist()
    assert len(samples) == index["splits"]["train"]["shards"][0]["samples"]
    for key, fields in samples.items():
        assert set(fields) == {"json", "npy"}
        meta = json.loads(fields["json"])
        image = np.load(__import__("io").BytesIO(fields["npy"]))
        assert image.dtype == np.uint8 and image.shape == (3, 66, 200)
        row = next(
            i
            for i, r in enumerate(table)
            if r["drive_id"] == meta["drive_id"] and r["frame_index"] == meta["frame_index"]
        )
        assert key == f"de/{meta['drive_id']}/{meta['frame_index']:08d}"
        assert torch.equal(torch.from_numpy(image), plain[row][0])  # the model's input, as the manifest loader makes it
        assert meta["steering_deg"] == pytest.approx(plain[row][1])


def test_gnu_tar_lists_and_extracts_a_shard(written, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("tar") is None:
        pytest.skip("no tar binary on this machine")
    a, _, index, _ = written
    shard = a / index["splits"]["val"]["shards"][0]["path"]
    names = subprocess.run(["tar", "-tf", str(shard)], check=True, capture_output=True, text=True).stdout.split()
    assert len(names) == 2 * index["splits"]["val"]["shards"][0]["samples"]
    subprocess.run(["tar", "-xf", str(shard), "-C", str(tmp_path)], check=True)
    assert np.load(tmp_path / names[1]).shape == (3, 66, 200) and "steering_deg" in json.loads(
        (tmp_path / names[0]).read_text()
    )


def test_webdataset_reads_a_shard_where_installed(written) -> None:  # type: ignore[no-untyped-def]
    wds = pytest.importorskip("webdataset", reason="webdataset is not installed (the tarfile test covers the format)")
    a, _, index, _ = written
    sample = next(iter(wds.WebDataset(str(a / index["splits"]["train"]["shards"][0]["path"])).decode()))
    assert sample["npy"].shape == (3, 66, 200) and "steering_deg" in sample["json"]


def _indices(dataset: ShardStream, workers: int) -> list[int]:
    return [int(i) for _x, _y, idx in DataLoader(dataset, batch_size=8, num_workers=workers) for i in idx]


def test_ranks_and_workers_partition_each_epoch_and_the_order_is_seeded(written) -> None:  # type: ignore[no-untyped-def]
    a, _, _, _ = written
    split = load_split([str(a / "index.json")], "train")
    parts = [_indices(ShardStream(split.shards, shuffle=True, seed=3, rank=r, world=2), 2) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(split.size))  # evaluation: exact partition
    padded = [ShardStream(split.shards, shuffle=True, seed=3, rank=r, world=3, pad=True) for r in range(3)]
    assert {len(d) for d in padded} == {-(-split.size // 3)}  # training: equal steps on every rank
    seen = [i for d in padded for i in _indices(d, 1)]
    assert set(seen) == set(range(split.size)) and len(seen) == 3 * len(padded[0])
    epoch0 = _indices(padded[0], 1)
    assert _indices(padded[0], 1) == epoch0
    padded[0].set_epoch(1)
    assert _indices(padded[0], 1) != epoch0


def test_s3_and_local_shards_stream_the_same_samples(written, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from moto.server import ThreadedMotoServer

    a, _, _, _ = written
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "x",
                     "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="lake")
        for p in a.rglob("*"):
            if p.is_file():
                s3.upload_file(str(p), "lake", f"shards/de/v1/{p.relative_to(a).as_posix()}")
        local = load_split([str(a / "index.json")], "val")
        remote = load_split(["s3://lake/shards/de/v1/index.json"], "val")
        assert remote.frames.equals(local.frames) and remote.shards[0].uri.startswith("s3://lake/")
        got = [(int(i), float(y)) for _x, y, i in ShardStream(remote.shards, shuffle=True, seed=5, rank=1, world=2)]
        want = [(int(i), float(y)) for _x, y, i in ShardStream(local.shards, shuffle=True, seed=5, rank=1, world=2)]
        assert got == want and got
    finally:
        server.stop()


def test_concatenated_shard_sets_index_one_frame_table(written) -> None:  # type: ignore[no-untyped-def]
    a, b, _, _ = written
    both = load_split([str(a / "index.json"), str(b / "index.json")], "test")
    one = load_split([str(a / "index.json")], "test")
    assert both.size == 2 * one.size and both.frames.column("index").to_pylist() == list(range(both.size))
    assert sorted(i for _x, _y, i in ((x, y, int(i)) for x, y, i in ShardStream(both.shards))) == list(range(both.size))
    assert isinstance(both.shards[0], ShardRef) and both.frames.schema.field("target").type == pa.float32()
