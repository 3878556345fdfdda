"""Training shards (split stage): the latest curated split version of a market as WebDataset tar shards of
model-ready frames (``ad_core/train/shards.py``, docs/training-at-scale.md)."""

import hashlib
import json
from typing import Any

from dagster import (
    AssetExecutionContext,
    Config,
    DataVersion,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from ad_assets.models import latest_splits, manifest_files
from ad_assets.stage_asset import stage_asset_args
from ad_common.lake_layout import SPLITS, shards_dir
from ad_common.stages import TRAINING_SHARDS
from ad_core.train.data import ImageSpec, select_split
from ad_core.train.shards import DEFAULT_SHARD_BYTES, INDEX_FILE, SHARD_FORMAT, write_shards
from ad_resources.lake import Lake


class ShardSettings(Config):
    image_height: int = 66
    image_width: int = 200
    crop_top: float = 0.40
    shard_bytes: int = Field(
        default=DEFAULT_SHARD_BYTES, description="Largest shard; shards are balanced, so they hold half to all of it."
    )
    workers: int = Field(default=1, description="DataLoader processes decoding the camera JPEGs.")


def _current(
    lake: Lake, folder: str, splits: dict[str, str], spec: ImageSpec, shard_bytes: int
) -> dict[str, Any] | None:
    index = lake.read_json(f"{folder}/{INDEX_FILE}")
    wanted = (SHARD_FORMAT, splits["manifest_sha256"], json.loads(spec.to_json()), shard_bytes)
    if (
        index
        and (index.get("format"), index.get("manifest_sha256"), index.get("image"), index.get("shard_bytes")) == wanted
    ):
        return index
    return None


def definitions(market: str) -> Definitions:
    @asset(
        **stage_asset_args(TRAINING_SHARDS, market),
        kinds={"webdataset"},
        description=f"The latest {market.upper()} split version as training-ready WebDataset tar shards: every frame "
        "cropped and resized to the model input (uint8 .npy), its steering target, frame id and ODD tags (.json), "
        "64-128 MiB a shard, the split manifest sha256 in each shard's PAX header. Same manifest, same bytes; "
        "re-written only when the manifest or the image spec changes (docs/training-at-scale.md).",
    )
    def training_shards(context: AssetExecutionContext, config: ShardSettings, lake: Lake) -> MaterializeResult:
        splits = latest_splits(context, market)
        spec = ImageSpec(config.image_height, config.image_width, config.crop_top)
        folder = shards_dir(market, splits["split_version"])
        index = _current(lake, folder, splits, spec, config.shard_bytes)
        rewritten = index is None
        if index is None:
            with manifest_files(lake, splits) as (manifest, resolve), lake.write_dir(folder) as out:
                chosen = {s: select_split(manifest, s, resolve, markets=[market]) for s in SPLITS}
                for name, split in chosen.items():
                    context.log.info(f"writing {split.frames} {name} frames of {market}/{splits['split_version']}")
                index = write_shards(
                    chosen,
                    spec,
                    out,
                    market=market,
                    split_version=splits["split_version"],
                    manifest_sha256=splits["manifest_sha256"],
                    manifest_path=splits["manifest_path"],
                    shard_bytes=config.shard_bytes,
                    workers=config.workers,
                )
        else:
            context.log.info(f"{folder} already holds the shards of manifest {splits['manifest_sha256'][:12]}")
        index_bytes = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
        per_split = {
            s: {
                "frames": e["frames"],
                "shards": len(e["shards"]),
                "mib": round(sum(x["bytes"] for x in e["shards"]) / 2**20, 1),
            }
            for s, e in index["splits"].items()
        }
        return MaterializeResult(
            data_version=DataVersion(hashlib.sha256(index_bytes).hexdigest()),
            metadata={
                "index_path": f"{folder}/{INDEX_FILE}",
                "index_uri": MetadataValue.path(lake.uri(f"{folder}/{INDEX_FILE}")),
                "manifest_sha256": splits["manifest_sha256"],
                "manifest_path": splits["manifest_path"],
                "split_version": splits["split_version"],
                "image_spec": spec.to_json(),
                "rewritten": rewritten,
                "dagster/row_count": sum(e["frames"] for e in index["splits"].values()),
                "splits": MetadataValue.json(per_split),
                "format": "WebDataset tar (<key>.npy uint8 3xHxW, <key>.json)",
            },
        )

    return Definitions(assets=[training_shards])
