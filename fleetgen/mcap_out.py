"""MCAP output: camera, lidar, GNSS (protobuf), IMU (ros2 cdr) and a JSON logger status topic.

Timing model (see docs/fleetgen.md): every message is captured at true time T.
``header.stamp``/``timestamp`` = T + the sensor's clock offset (drive.json ``clock_offset_ns``);
``log_time`` = T + transport latency + jitter (the logger's receive time, reference clock);
``publish_time`` = ``log_time``. Messages are written in log-time order across topics.
"""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import simplejpeg
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.LocationFix_pb2 import LocationFix
from foxglove_schemas_protobuf.PackedElementField_pb2 import PackedElementField
from foxglove_schemas_protobuf.PointCloud_pb2 import PointCloud
from google.protobuf.timestamp_pb2 import Timestamp
from mcap.writer import CompressionType, IndexType, Writer
from mcap_protobuf.schema import build_file_descriptor_set
from mcap_ros2._dynamic import serialize_dynamic

from .motion import Motion, sample
from .profiles import GENERATOR_VERSION, LATENCY_NS, MCAP_STREAMS, DriveSpec, camera_exposure, drive_rng
from .render import CameraRenderer, LidarRenderer

# rosbag2 stores the full message definition with every dependency, separated by "=" lines.
_SEP = "=" * 80 + "\n"
IMU_SCHEMA = (
    "# This is a message to hold data from an IMU (Inertial Measurement Unit)\n"
    "std_msgs/Header header\n\n"
    "geometry_msgs/Quaternion orientation\n"
    "float64[9] orientation_covariance # Row major about x, y, z axes\n\n"
    "geometry_msgs/Vector3 angular_velocity\n"
    "float64[9] angular_velocity_covariance # Row major about x, y, z axes\n\n"
    "geometry_msgs/Vector3 linear_acceleration\n"
    "float64[9] linear_acceleration_covariance # Row major x, y z\n" + _SEP + "MSG: std_msgs/Header\n"
    "# Standard metadata for higher-level stamped data types.\n"
    "builtin_interfaces/Time stamp\n"
    "string frame_id\n" + _SEP + "MSG: builtin_interfaces/Time\n"
    "int32 sec\n"
    "uint32 nanosec\n" + _SEP + "MSG: geometry_msgs/Quaternion\n"
    "float64 x 0\n"
    "float64 y 0\n"
    "float64 z 0\n"
    "float64 w 1\n" + _SEP + "MSG: geometry_msgs/Vector3\n"
    "float64 x\n"
    "float64 y\n"
    "float64 z\n"
)
IMU_SCHEMA_NAME = "sensor_msgs/msg/Imu"
# sensor_msgs/Imu with frame_id "imu" has a fixed CDR layout, so 200 Hz IMU is packed as one numpy record array
# per window (~100x faster than the generic per-message serializer). The layout is checked against
# mcap_ros2's serializer when a writer starts (``_check_imu_layout``), so it cannot silently drift.
IMU_CDR_HEADER = np.frombuffer(b"\x00\x01\x00\x00", dtype=np.uint8)  # CDR_LE encapsulation
IMU_CDR_DTYPE = np.dtype(
    [
        ("encapsulation", "u1", (4,)),
        ("sec", "<i4"),
        ("nanosec", "<u4"),
        ("frame_id_len", "<u4"),
        ("frame_id", "S4"),
        ("orientation", "<f8", (4,)),
        ("orientation_cov", "<f8", (9,)),
        ("angular_velocity", "<f8", (3,)),
        ("angular_velocity_cov", "<f8", (9,)),
        ("linear_acceleration", "<f8", (3,)),
        ("linear_acceleration_cov", "<f8", (9,)),
    ]
)
IMU_COV = (
    [1e-4, 0.0, 0.0, 0.0, 1e-4, 0.0, 0.0, 0.0, 1e-3],
    [4e-6, 0.0, 0.0, 0.0, 4e-6, 0.0, 0.0, 0.0, 4e-6],
    [2.5e-3, 0.0, 0.0, 0.0, 2.5e-3, 0.0, 0.0, 0.0, 2.5e-3],
)
LOGGER_SCHEMA = {
    "type": "object",
    "title": "fleetgen.LoggerStatus",
    "properties": {
        "drive_id": {"type": "string"},
        "stamp_ns": {"type": "integer"},
        "disk_free_gb": {"type": "number"},
        "cpu_temp_c": {"type": "number"},
        "messages_dropped": {"type": "integer"},
        "recording": {"type": "boolean"},
    },
}
DROP_P = {"camera_front": 0.003, "lidar_top": 0.003, "imu": 0.001, "gnss": 0.002, "logger": 0.0}
MCAP_CHUNK_BYTES = 4 * 1024 * 1024
WINDOW_S = 1.0  # messages are produced per second of drive so big sensors never pile up in memory


def _ts(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class McapDriveWriter:
    def __init__(
        self,
        path: Path,
        spec: DriveSpec,
        camera_hz: float,
        camera_size: tuple[int, int],
        lidar_points: int,
        jpeg_quality: int = 85,
    ) -> None:
        self.spec = spec
        self.fh: BinaryIO = open(path, "wb")  # noqa: SIM115 -- closed in close(), spans many chunks
        w = Writer(
            self.fh,
            chunk_size=MCAP_CHUNK_BYTES,
            compression=CompressionType.ZSTD,
            index_types=IndexType.ALL,
            use_chunking=True,
            use_statistics=True,
            use_summary_offsets=True,
        )
        w.start(profile="", library=f"fleetgen {GENERATOR_VERSION}")
        self.writer = w
        self.channels: dict[str, int] = {}
        for cls, key in ((CompressedImage, "camera_front"), (PointCloud, "lidar_top"), (LocationFix, "gnss")):
            sid = w.register_schema(
                cls.DESCRIPTOR.full_name, "protobuf", build_file_descriptor_set(cls).SerializeToString()
            )
            self.channels[key] = w.register_channel(MCAP_STREAMS[key][0], "protobuf", sid)
        sid = w.register_schema(IMU_SCHEMA_NAME, "ros2msg", IMU_SCHEMA.encode())
        self.channels["imu"] = w.register_channel(MCAP_STREAMS["imu"][0], "cdr", sid, {"offered_qos_profiles": ""})
        sid = w.register_schema(
            "fleetgen.LoggerStatus", "jsonschema", json.dumps(LOGGER_SCHEMA, sort_keys=True).encode()
        )
        self.channels["logger"] = w.register_channel(MCAP_STREAMS["logger"][0], "json", sid)
        w.add_metadata(
            "drive",
            {
                "drive_id": spec.drive_id,
                "vehicle_id": spec.vehicle_id,
                "market": spec.market,
                "start_time_ns": str(spec.start_time_ns),
            },
        )
        _check_imu_layout()
        self.rates = {"camera_front": float(camera_hz), "lidar_top": 10.0, "imu": 200.0, "gnss": 10.0, "logger": 1.0}
        odd = spec.odd
        prof = spec.profile
        self.camera = CameraRenderer(
            camera_size[0],
            camera_size[1],
            odd["time_of_day"],
            odd["weather"],
            prof.driving_side,
            prof.center_line_yellow,
            drive_rng(spec.seed, spec.market, spec.index, 3),
            exposure=camera_exposure(spec),
        )
        self.lidar = LidarRenderer(lidar_points, odd["road_type"], drive_rng(spec.seed, spec.market, spec.index, 4))
        self.quality = jpeg_quality
        self.seq = dict.fromkeys(self.channels.values(), 0)
        self.dropped = 0
        self.pending: list[tuple[int, int, int, bytes]] = []  # (log_time, channel, stamp, payload) heap
        self.gnss_gap = next(((f["start_s"], f["end_s"]) for f in spec.faults if f["type"] == "gnss_dropout"), None)
        self.jump = next(((f["at_s"], f["jump_ns"]) for f in spec.faults if f["type"] == "clock_jump"), None)
        self.window_i = 0

    def _stamp(self, key: str, t_s: np.ndarray) -> np.ndarray:
        ns = self.spec.start_time_ns + np.round(t_s * 1e9).astype(np.int64) + self.spec.clock_offsets_ns.get(key, 0)
        if self.jump is not None and key == "imu":
            ns = np.where(t_s >= self.jump[0], ns + self.jump[1], ns)
        return ns

    def _payloads(
        self, key: str, profile: Motion, t: np.ndarray, stamps: np.ndarray, rng: np.random.Generator
    ) -> list[bytes]:
        n = len(t)
        if key == "camera_front":
            k = sample(profile, t, "curvature_1pm")
            dist = sample(profile, t, "distance_m")
            lateral = 0.15 * np.sin(dist / 60.0)  # drivers wander a little inside the lane
            out = []
            for i in range(n):
                img = self.camera.render(float(k[i]), float(dist[i]), float(lateral[i]), rng)
                jpeg = simplejpeg.encode_jpeg(img, quality=self.quality, colorspace="RGB")
                out.append(
                    CompressedImage(
                        timestamp=_ts(int(stamps[i])), frame_id="camera_front", data=jpeg, format="jpeg"
                    ).SerializeToString()
                )
            return out
        if key == "lidar_top":
            fields = [
                PackedElementField(name=nm, offset=4 * j, type=PackedElementField.FLOAT32)
                for j, nm in enumerate(("x", "y", "z", "intensity"))
            ]
            return [
                PointCloud(
                    timestamp=_ts(int(stamps[i])),
                    frame_id="lidar_top",
                    point_stride=16,
                    fields=fields,
                    data=self.lidar.sweep(float(t[i])),
                ).SerializeToString()
                for i in range(n)
            ]
        if key == "gnss":
            lat = sample(profile, t, "lat") + rng.normal(0, 0.4, n) / 111_320.0
            lon = sample(profile, t, "lon") + rng.normal(0, 0.4, n) / (111_320.0 * math.cos(math.radians(lat[0])))
            alt = sample(profile, t, "alt_m") + rng.normal(0, 0.8, n)
            cov = [0.16, 0.0, 0.0, 0.0, 0.16, 0.0, 0.0, 0.0, 0.64]
            return [
                LocationFix(
                    timestamp=_ts(int(stamps[i])),
                    frame_id="gnss",
                    latitude=float(lat[i]),
                    longitude=float(lon[i]),
                    altitude=float(alt[i]),
                    position_covariance=cov,
                    position_covariance_type=LocationFix.DIAGONAL_KNOWN,
                ).SerializeToString()
                for i in range(n)
            ]
        if key == "imu":
            rec = np.zeros(n, dtype=IMU_CDR_DTYPE)
            rec["encapsulation"] = IMU_CDR_HEADER
            rec["sec"] = stamps // 1_000_000_000
            rec["nanosec"] = stamps % 1_000_000_000
            rec["frame_id_len"] = 4
            rec["frame_id"] = b"imu"
            half_yaw = np.radians(sample(profile, t, "heading_deg")) / 2
            rec["orientation"][:, 2] = np.sin(half_yaw)
            rec["orientation"][:, 3] = np.cos(half_yaw)
            rec["orientation_cov"] = IMU_COV[0]
            rec["angular_velocity"][:, :2] = rng.normal(0, 0.002, (n, 2))
            rec["angular_velocity"][:, 2] = np.radians(sample(profile, t, "yaw_rate_dps")) + rng.normal(0, 0.002, n)
            rec["angular_velocity_cov"] = IMU_COV[1]
            rec["linear_acceleration"][:, 0] = sample(profile, t, "accel_mps2") + rng.normal(0, 0.05, n)
            rec["linear_acceleration"][:, 1] = sample(profile, t, "lat_accel_mps2") + rng.normal(0, 0.05, n)
            rec["linear_acceleration"][:, 2] = 9.80665 + rng.normal(0, 0.05, n)
            rec["linear_acceleration_cov"] = IMU_COV[2]
            raw = rec.tobytes()
            size = IMU_CDR_DTYPE.itemsize
            return [raw[i * size : (i + 1) * size] for i in range(n)]
        if key == "logger":
            return [
                json.dumps(
                    {
                        "drive_id": self.spec.drive_id,
                        "stamp_ns": int(stamps[i]),
                        "disk_free_gb": round(1800.0 - 0.05 * float(t[i]), 3),
                        "cpu_temp_c": round(55.0 + 5 * math.sin(float(t[i]) / 60), 2),
                        "messages_dropped": self.dropped,
                        "recording": True,
                    },
                    sort_keys=True,
                ).encode()
                for i in range(n)
            ]
        raise KeyError(key)

    def write_window(self, profile: Motion, t0: float, t1: float) -> None:
        """Produce every message captured in [t0, t1) and flush those whose log_time can no longer be undercut."""
        rng = drive_rng(self.spec.seed, self.spec.market, self.spec.index, 1000 + self.window_i)
        self.window_i += 1
        for key in self.channels:
            rate = self.rates[key]
            i0, i1 = math.ceil(t0 * rate - 1e-9), math.ceil(t1 * rate - 1e-9)
            if i1 <= i0:
                continue
            idx = np.arange(i0, i1)
            t = idx / rate
            keep = rng.random(len(t)) >= DROP_P[key]
            if key == "gnss" and self.gnss_gap is not None:
                keep &= (t < self.gnss_gap[0]) | (t >= self.gnss_gap[1])
            self.dropped += int((~keep).sum())
            t = t[keep]
            if not len(t):
                continue
            stamps = self._stamp(key, t)
            # Latency is a fixed transport delay plus exponential queueing jitter (never negative).
            jitter = rng.exponential(0.3e6 if key == "imu" else 2e6, len(t))
            log = self.spec.start_time_ns + np.round(t * 1e9 + LATENCY_NS[key] + jitter).astype(np.int64)
            ch = self.channels[key]
            for lt, st, payload in zip(
                log.tolist(), stamps.tolist(), self._payloads(key, profile, t, stamps, rng), strict=True
            ):
                heapq.heappush(self.pending, (lt, ch, st, payload))
        # Anything captured later has log_time >= start + t1, so everything earlier is final.
        self._flush(self.spec.start_time_ns + round(t1 * 1e9))

    def _flush(self, before_ns: int | None) -> None:
        while self.pending and (before_ns is None or self.pending[0][0] < before_ns):
            lt, ch, _st, payload = heapq.heappop(self.pending)
            self.seq[ch] += 1
            self.writer.add_message(ch, log_time=lt, data=payload, publish_time=lt, sequence=self.seq[ch])

    def close(self) -> None:
        self._flush(None)
        self.writer.finish()
        self.fh.close()


def _check_imu_layout() -> None:
    """The packed IMU layout must equal what mcap_ros2's serializer produces for the same values."""
    encode = serialize_dynamic(IMU_SCHEMA_NAME, IMU_SCHEMA)[IMU_SCHEMA_NAME]
    vals = np.arange(1.5, 11.5)
    ref = encode(
        {
            "header": {"stamp": {"sec": 1_700_000_000, "nanosec": 123}, "frame_id": "imu"},
            "orientation": {"x": vals[0], "y": vals[1], "z": vals[2], "w": vals[3]},
            "orientation_covariance": IMU_COV[0],
            "angular_velocity": {"x": vals[4], "y": vals[5], "z": vals[6]},
            "angular_velocity_covariance": IMU_COV[1],
            "linear_acceleration": {"x": vals[7], "y": vals[8], "z": vals[9]},
            "linear_acceleration_covariance": IMU_COV[2],
        }
    )
    rec = np.zeros(1, dtype=IMU_CDR_DTYPE)
    rec["encapsulation"] = IMU_CDR_HEADER
    rec["sec"], rec["nanosec"], rec["frame_id_len"], rec["frame_id"] = 1_700_000_000, 123, 4, b"imu"
    rec["orientation"] = vals[0:4]
    rec["angular_velocity"] = vals[4:7]
    rec["linear_acceleration"] = vals[7:10]
    rec["orientation_cov"], rec["angular_velocity_cov"], rec["linear_acceleration_cov"] = IMU_COV
    if rec.tobytes() != bytes(ref):
        raise RuntimeError("packed sensor_msgs/Imu CDR layout differs from mcap_ros2's serializer")
