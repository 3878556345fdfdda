"""Train every market's steering model on a demo fleet through the real ``<m>/trained_model`` asset and print
test MAE vs the train-mean baseline per market (the issue's target: MAE <= 50 % of the baseline's).

It trains from the training shards the demo materialized (``<m>/training_shards`` of the latest curated splits).

    make demo                                  # or: python -m ad_platform demo --drives 8 --minutes 2
    python benchmarks/train_demo.py            # AD_STATE_DIR as for the demo; --epochs, --ranks, --fleet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster import AssetKey, materialize

from ad_assets import models
from ad_common import settings
from ad_platform.instance import local_instance
from ad_resources.lake import LocalLake
from ad_resources.tracking import local_tracking
from ad_resources.training import LocalTrainingLauncher


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", default="de,us,cn,jp")
    parser.add_argument("--train", default=None, help="markets whose model to train (default: --markets)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument(
        "--fleet", action="store_true", help="each market's model also trains on the other markets' splits"
    )
    args = parser.parse_args()
    lake_root = settings.lake_dir()
    instance = local_instance()
    tracking = local_tracking(settings.state_dir())
    out = {}
    markets = args.markets.split(",")
    for market in args.train.split(",") if args.train else markets:
        started = time.monotonic()
        config = {
            "epochs": args.epochs,
            "ranks": args.ranks,
            "also_train_on": [m for m in markets if m != market] if args.fleet else [],
        }
        result = materialize(
            models.definitions(market).assets,
            selection=[AssetKey([market, "trained_model"])],
            instance=instance,
            raise_on_error=False,
            run_config={"ops": {f"{market}__trained_model": {"config": config}}},
            resources={
                "lake": LocalLake(root=str(lake_root)),
                "mlflow_tracking": tracking,
                "training": LocalTrainingLauncher(),
            },
        )
        events = result.get_asset_materialization_events()
        if not events:
            print(f"{market}: no materialization", file=sys.stderr)
            continue
        meta = events[0].materialization.metadata
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        client = tracking.client()
        run = client.get_run(meta["mlflow_run_id"].value).data.metrics
        mae, base = run[f"test_mae_{market}"], run[f"test_baseline_mae_{market}"]
        out[market] = {
            "test_mae_deg": round(mae, 3),
            "baseline_mae_deg": round(base, 3),
            "ratio": round(mae / base, 3),
            "other_markets_ratio": {
                m: round(run[f"test_mae_ratio_{m}"], 3) for m in markets if m != market and f"test_mae_ratio_{m}" in run
            },
            "train_frames": meta["train_frames"].value,
            "test_frames": meta["test_frames"].value,
            "version": meta["version"].value,
            "checks": checks,
            "seconds": round(time.monotonic() - started, 1),
        }
        print(json.dumps({market: out[market]}), flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
