"""ROS 2 nested-message decode benchmark: odometry, tf and pose topics in one MCAP -> Parquet.

The MCAP is written once with the ``rosbags`` standard ROS 2 typestore (serializer and the ros2msg schema
texts a rosbag2 recorder writes: the type followed by its dependencies), messages interleaved by time:
``nav_msgs/msg/Odometry`` at 100 Hz, ``tf2_msgs/msg/TFMessage`` (3 transforms) at 100 Hz and
``geometry_msgs/msg/PoseStamped`` at 50 Hz, with changing values, in uncompressed chunks (rosbag2's default).
Cached under benchmarks/.data (git-ignored). ``decode_drive`` runs in-process after one untimed warm-up; the
median of ``--runs`` decodes is reported as MB/s of MCAP file. One JSON line on stdout.

    python benchmarks/bench_ros2_nested.py [--seconds 600] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / ".data"
sys.path.insert(0, str(ROOT))

TOPICS = {  # topic -> (type, Hz)
    "/odom": ("nav_msgs/msg/Odometry", 100),
    "/tf": ("tf2_msgs/msg/TFMessage", 100),
    "/pose": ("geometry_msgs/msg/PoseStamped", 50),
}


def write_mcap(path: Path, seconds: float) -> None:
    from mcap.writer import CompressionType, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    t0 = 1_760_000_000_000_000_000

    def header(ns: int, frame: str) -> object:
        return T["std_msgs/msg/Header"](T["builtin_interfaces/msg/Time"](ns // 10**9, ns % 10**9), frame)

    def pose(i: float) -> object:
        point = T["geometry_msgs/msg/Point"](np.cos(i), np.sin(i), 0.1 * i)
        return T["geometry_msgs/msg/Pose"](point, T["geometry_msgs/msg/Quaternion"](0.0, 0.0, np.sin(i / 2), 1.0))

    def message(typ: str, ns: int, i: float) -> object:
        if typ.endswith("Odometry"):
            cov = np.full(36, 0.01)
            twist = T["geometry_msgs/msg/Twist"](
                T["geometry_msgs/msg/Vector3"](i, 0.0, 0.0), T["geometry_msgs/msg/Vector3"](0.0, 0.0, 0.1)
            )
            return T[typ](
                header(ns, "odom"),
                "base_link",
                T["geometry_msgs/msg/PoseWithCovariance"](pose(i), cov),
                T["geometry_msgs/msg/TwistWithCovariance"](twist, cov),
            )
        if typ.endswith("TFMessage"):
            transforms = [
                T["geometry_msgs/msg/TransformStamped"](
                    header(ns, parent),
                    child,
                    T["geometry_msgs/msg/Transform"](
                        T["geometry_msgs/msg/Vector3"](i, k, 0.0), T["geometry_msgs/msg/Quaternion"](0, 0, 0, 1.0)
                    ),
                )
                for k, (parent, child) in enumerate([("map", "odom"), ("odom", "base_link"), ("base_link", "lidar")])
            ]
            return T[typ](transforms)
        return T[typ](header(ns, "map"), pose(i))

    events = sorted(
        (int(t0 + k * 1e9 / hz), topic) for topic, (_, hz) in TOPICS.items() for k in range(int(seconds * hz))
    )
    with open(path, "wb") as fh:
        writer = Writer(fh, compression=CompressionType.NONE)  # as rosbag2 records by default
        writer.start(profile="ros2", library="bench_ros2_nested")
        channels = {}
        for topic, (typ, _) in TOPICS.items():
            text, _ = store.generate_msgdef(typ, ros_version=2)
            schema = writer.register_schema(typ, "ros2msg", text.encode())
            channels[topic] = writer.register_channel(topic, "cdr", schema)
        for ns, topic in events:
            typ = TOPICS[topic][0]
            data = store.serialize_cdr(message(typ, ns, (ns - t0) / 1e9), typ)
            writer.add_message(channels[topic], log_time=ns, publish_time=ns, data=bytes(data))
        writer.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="recording length (default 600 s)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from ad_core.decode import decode_drive

    DATA.mkdir(parents=True, exist_ok=True)
    mcap = DATA / f"ros2_nested_{args.seconds:g}s.mcap"
    if not mcap.exists():
        write_mcap(mcap.with_suffix(".tmp"), args.seconds)
        mcap.with_suffix(".tmp").rename(mcap)
    times, messages = [], 0
    for run in range(args.runs + 1):
        out = Path(tempfile.mkdtemp(prefix="bench_ros2_"))
        try:
            t = time.perf_counter()
            report = decode_drive([mcap], out)
            dt = time.perf_counter() - t
        finally:
            shutil.rmtree(out)
        if run:  # the first decode warms imports and caches
            times.append(dt)
        messages = sum(s.rows for s in report.streams)
        bad = [(s.name, s.status, s.error) for s in report.streams if s.status != "ok"]
        assert not bad, bad
    median = statistics.median(times)
    size = mcap.stat().st_size
    print(
        json.dumps(
            {
                "bench": "ros2_nested",
                "topics": {t: typ for t, (typ, _) in TOPICS.items()},
                "mcap_mb": round(size / 1e6, 1),
                "messages": messages,
                "median_s": round(median, 3),
                "mb_per_s": round(size / 1e6 / median, 1),
                "messages_per_s": round(messages / median),
                "runs_s": [round(x, 3) for x in times],
            }
        )
    )


if __name__ == "__main__":
    main()
