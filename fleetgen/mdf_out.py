"""MDF4 output: raw CAN frames in the ASAM bus-logging layout plus groups of already-physical signals.

The CAN groups mirror python-can's ``can.io.mf4.MF4Writer`` exactly (same structured dtype, the same three
groups ``CAN_DataFrame``/``CAN_ErrorFrame``/``CAN_RemoteFrame``, bus source info, the DBC as attachment),
but are extended with whole 10 s chunks instead of one ``MDF.extend`` call per frame (MF4Writer's per-frame
extend costs ~100 us each and stamps the header with the wall clock, which breaks byte determinism).
asammdf writes every ``extend`` straight into its temporary file (LZ-compressed blocks), so the heap stays
flat however long the drive is; ``save`` then streams those blocks into the final file.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import cantools
import numpy as np
from asammdf import MDF, Signal
from asammdf.blocks import v4_constants as v4c
from asammdf.blocks.v4_blocks import FileHistory, SourceInformation

from .motion import Motion, sample
from .profiles import GENERATOR_VERSION, DriveSpec, drive_rng

# Identical to can.io.mf4.STD_DTYPE so readers written against python-can logs see the same layout.
CAN_STD_DTYPE = np.dtype(
    [
        ("CAN_DataFrame.BusChannel", "<u1"),
        ("CAN_DataFrame.ID", "<u4"),
        ("CAN_DataFrame.IDE", "<u1"),
        ("CAN_DataFrame.DLC", "<u1"),
        ("CAN_DataFrame.DataLength", "<u1"),
        ("CAN_DataFrame.DataBytes", "(64,)u1"),
        ("CAN_DataFrame.Dir", "<u1"),
        ("CAN_DataFrame.EDL", "<u1"),
        ("CAN_DataFrame.BRS", "<u1"),
        ("CAN_DataFrame.ESI", "<u1"),
    ]
)
CAN_ERR_DTYPE = np.dtype(
    [
        (n.replace("DataFrame", "ErrorFrame"), d)
        for n, d in [(name, CAN_STD_DTYPE.fields[name][0]) for name in CAN_STD_DTYPE.names]
    ]
)
CAN_RTR_DTYPE = np.dtype(
    [
        ("CAN_RemoteFrame.BusChannel", "<u1"),
        ("CAN_RemoteFrame.ID", "<u4"),
        ("CAN_RemoteFrame.IDE", "<u1"),
        ("CAN_RemoteFrame.DLC", "<u1"),
        ("CAN_RemoteFrame.DataLength", "<u1"),
        ("CAN_RemoteFrame.Dir", "<u1"),
    ]
)
CAN_BUS_CHANNEL = 1

GEAR_TEXT = {0: "P", 1: "R", 2: "N", 3: "D"}
WIPER_TEXT = {0: "Off", 1: "Interval", 2: "Low", 3: "High"}

# (group name, rate Hz, [(channel, unit, dtype, conversion, profile-derived value)])
PHYSICAL_GROUPS: tuple[tuple[str, float], ...] = (
    ("Environment_10Hz", 10.0),
    ("Chassis_100Hz", 100.0),
    ("Powertrain_1kHz", 1000.0),
)
BENCH_GROUP = "Bench_1kHz"


def _v2t(table: dict[int, str]) -> dict[str, Any]:
    conv: dict[str, Any] = {"default": b""}
    for i, (raw, text) in enumerate(table.items()):
        conv[f"val_{i}"] = raw
        conv[f"text_{i}"] = text.encode()
    return conv


def _channels(group: str) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(name, unit, stored dtype, conversion). Raw-integer channels carry a linear or value-to-text conversion."""
    if group == "Environment_10Hz":
        return [
            ("AmbientTemp", "degC", "<i2", {"a": 0.1, "b": 0.0}),
            ("Humidity", "%", "<f4", None),
            ("LightLevel", "lx", "<f4", None),
            ("RainIntensity", "mm/h", "<f4", None),
            ("WiperMode", "", "<u1", _v2t(WIPER_TEXT)),
        ]
    if group == "Chassis_100Hz":
        return [
            ("VehSpeed", "km/h", "<f8", None),
            ("SteerWheelAngle", "deg", "<f8", None),
            ("YawRateRef", "deg/s", "<f8", None),
            ("LatAccel", "m/s^2", "<f4", None),
            ("LongAccel", "m/s^2", "<f4", None),
            ("BrakePress", "bar", "<u2", {"a": 0.01, "b": 0.0}),
            ("GearLever", "", "<u1", _v2t(GEAR_TEXT)),
        ]
    if group == "Powertrain_1kHz":
        return [
            ("EngSpeed", "rpm", "<f4", None),  # not "EngineSpeed": the DBC has that name
            ("EngineTorque", "Nm", "<f4", None),
            ("ThrottlePos", "%", "<u2", {"a": 0.01, "b": 0.0}),
            ("BatteryVoltage", "V", "<f4", None),
        ]
    raise KeyError(group)


def bench_channel_names(n: int) -> list[str]:
    return [f"Bench_{i:04d}" for i in range(n)]


def load_dbc(dbc_text: str) -> cantools.database.can.Database:
    return cantools.database.load_string(dbc_text, database_format="dbc")


class MdfDriveWriter:
    """Appends one drive chunk by chunk; ``close`` writes the final .mf4."""

    def __init__(self, path: Path, spec: DriveSpec, dbc_text: str, extra_signals: int = 0) -> None:
        self.path = path
        self.spec = spec
        self.db = load_dbc(dbc_text)
        self.offset_s = spec.clock_offsets_ns["mdf_logger"] / 1e9
        self.extra = extra_signals
        mdf = MDF(version="4.10")
        # Header time = drive start (UTC, offset valid), never the wall clock: files must be reproducible.
        mdf.header.abs_time = spec.start_time_ns
        mdf.header.tz_offset = 0
        mdf.header.daylight_save_time = 0
        mdf.header.time_flags = v4c.FLAG_HD_TIME_OFFSET_VALID
        mdf.header.comment = (
            f"<HDcomment><TX>fleetgen drive {spec.drive_id}</TX><common_properties>"
            f'<e name="drive_id">{spec.drive_id}</e><e name="vehicle_id">{spec.vehicle_id}</e>'
            f'<e name="market">{spec.market}</e></common_properties></HDcomment>'
        )
        data = dbc_text.encode()
        attachment = (data, "vehicle.dbc", hashlib.md5(data).digest())
        src = SourceInformation(source_type=v4c.SOURCE_BUS, bus_type=v4c.BUS_TYPE_CAN)
        for name, dtype in (
            ("CAN_DataFrame", CAN_STD_DTYPE),
            ("CAN_ErrorFrame", CAN_ERR_DTYPE),
            ("CAN_RemoteFrame", CAN_RTR_DTYPE),
        ):
            mdf.append(
                Signal(
                    name=name,
                    samples=np.array([], dtype=dtype),
                    timestamps=np.array([], dtype="<f8"),
                    attachment=attachment,
                    source=src,
                )
            )
        self.group_index: dict[str, int] = {}
        groups = [*PHYSICAL_GROUPS, *([(BENCH_GROUP, 1000.0)] if extra_signals else [])]
        for gname, _rate in groups:
            chans = (
                _channels(gname)
                if gname != BENCH_GROUP
                else [(n, "V", "<f4", None) for n in bench_channel_names(extra_signals)]
            )
            sigs = [
                Signal(
                    samples=np.array([], dtype=dt),
                    timestamps=np.array([], dtype="<f8"),
                    name=n,
                    unit=u,
                    conversion=conv,
                )
                for n, u, dt, conv in chans
            ]
            mdf.append(sigs, acq_name=gname, comment=f"{gname} (fleetgen)")
            self.group_index[gname] = len(mdf.groups) - 1
        self.groups = groups
        self.mdf = mdf
        self._counters: dict[int, int] = {}
        rng = drive_rng(spec.seed, spec.market, spec.index, 2)
        # Each ECU starts its cycle at its own phase, like on a real bus.
        self._phase = {m.frame_id: float(rng.uniform(0, m.cycle_time / 1000.0)) for m in self.db.messages}
        self._bench_phase = rng.uniform(0, 2 * math.pi, size=max(extra_signals, 1)).astype(np.float32)
        self._bench_freq = rng.uniform(0.05, 5.0, size=max(extra_signals, 1)).astype(np.float32)
        self._stuck = next((f for f in spec.faults if f["type"] == "stuck_speed"), None)

    # -- CAN ------------------------------------------------------------------------------------------
    def _can_values(self, profile: Motion, t: np.ndarray, msg_name: str) -> dict[str, np.ndarray]:
        def s(name: str) -> np.ndarray:
            return sample(profile, t, name)

        if msg_name == "ESP_VehicleSpeed":
            speed = s("speed_kmh")
            if self._stuck is not None:
                frozen = (t >= self._stuck["start_s"]) & (t < self._stuck["end_s"])
                speed = np.where(
                    frozen, float(sample(profile, np.array([self._stuck["start_s"]]), "speed_kmh")[0]), speed
                )
            return {"VehicleSpeed": speed, "VehicleSpeedValid": np.ones_like(t)}
        if msg_name == "ESP_WheelSpeeds":
            return {f"WheelSpeed_{w.upper()}": s(f"wheel_{w}_kmh") for w in ("fl", "fr", "rl", "rr")}
        if msg_name == "EPS_SteeringAngle":
            return {"SteeringWheelAngle": s("steering_deg"), "SteeringWheelRate": s("steering_rate_dps")}
        if msg_name == "ESP_YawRate":
            return {
                "YawRate": s("yaw_rate_dps"),
                "LateralAccel": s("lat_accel_mps2"),
                "LongitudinalAccel": s("accel_mps2"),
            }
        if msg_name == "PCM_Pedals":
            brake = s("brake_pressure_bar")
            return {
                "AcceleratorPedal": s("accel_pedal_pct"),
                "BrakePressure": brake,
                "BrakePedalPressed": (brake > 2.0).astype(np.float64),
            }
        if msg_name == "PCM_Transmission":
            return {"GearPosition": s("gear"), "EngineSpeed": _engine_rpm(s("speed_kmh"), s("gear"))}
        if msg_name == "BCM_Lights":
            return {
                "TurnIndicator": s("turn_indicator"),
                "HeadlightState": s("headlight"),
                "WiperState": s("wiper"),
                "OutsideTemperature": s("outside_temp_c"),
            }
        raise KeyError(msg_name)

    def _can_chunk(self, profile: Motion, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        times: list[np.ndarray] = []
        frames: list[np.ndarray] = []
        for msg in self.db.messages:
            cycle = msg.cycle_time / 1000.0
            phase = self._phase[msg.frame_id]
            k0 = math.ceil((t0 - phase) / cycle - 1e-9)
            k1 = math.ceil((t1 - phase) / cycle - 1e-9)
            if k1 <= k0:
                continue
            k = np.arange(k0, k1)
            # ECU send jitter of a few tens of microseconds, deterministic per frame number.
            jitter = ((k * 2654435761 + msg.frame_id) % 97 - 48) * 1e-6
            t = np.clip(phase + k * cycle + jitter, t0, None)
            values = self._can_values(profile, t, msg.name)
            counter_sig = next((sig.name for sig in msg.signals if sig.name.endswith("Counter")), None)
            if counter_sig:
                values[counter_sig] = (k % 16).astype(np.float64)
            lims = {sig.name: (sig.minimum, sig.maximum) for sig in msg.signals}
            cols = {n: np.clip(v, *lims[n]) for n, v in values.items()}
            names = list(cols)
            payload = np.zeros((len(t), 8), dtype=np.uint8)
            for i in range(len(t)):
                data = msg.encode({n: float(cols[n][i]) for n in names}, strict=True)
                payload[i] = np.frombuffer(data, dtype=np.uint8)
            rec = np.zeros(len(t), dtype=CAN_STD_DTYPE)
            rec["CAN_DataFrame.BusChannel"] = CAN_BUS_CHANNEL
            rec["CAN_DataFrame.ID"] = msg.frame_id
            rec["CAN_DataFrame.DLC"] = 8
            rec["CAN_DataFrame.DataLength"] = 8
            rec["CAN_DataFrame.DataBytes"][:, :8] = payload
            times.append(t)
            frames.append(rec)
        if not times:
            return np.array([], dtype="<f8"), np.array([], dtype=CAN_STD_DTYPE)
        t_all = np.concatenate(times)
        order = np.argsort(t_all, kind="stable")
        return t_all[order] + self.offset_s, np.concatenate(frames)[order]

    # -- physical groups --------------------------------------------------------------------------------
    def _physical(self, group: str, profile: Motion, t: np.ndarray) -> list[np.ndarray]:
        def s(name: str) -> np.ndarray:
            return sample(profile, t, name)

        if group == "Environment_10Hz":
            tod = self.spec.odd["time_of_day"]
            weather = self.spec.odd["weather"]
            light = {"day": 20000.0, "dusk": 400.0, "night": 3.0}[tod] * (0.35 if weather != "clear" else 1.0)
            rain = {"rain": 4.0, "snow": 1.0}.get(weather, 0.0)
            wave = np.sin(t / 13.0)
            return [
                np.round(s("outside_temp_c") * 10).astype("<i2"),
                (np.full_like(t, 55.0 if weather == "clear" else 90.0) + 3 * wave).astype("<f4"),
                (light * (1 + 0.1 * wave)).astype("<f4"),
                (rain * (1 + 0.5 * wave)).clip(0).astype("<f4"),
                s("wiper").astype("<u1"),
            ]
        if group == "Chassis_100Hz":
            return [
                s("speed_kmh"),
                s("steering_deg"),
                s("yaw_rate_dps"),
                s("lat_accel_mps2").astype("<f4"),
                s("accel_mps2").astype("<f4"),
                np.round(s("brake_pressure_bar") * 100).astype("<u2"),
                s("gear").astype("<u1"),
            ]
        if group == "Powertrain_1kHz":
            speed = s("speed_kmh")
            rpm = _engine_rpm(speed, s("gear"))
            # Firing-order ripple makes the 1 kHz rate meaningful (a 4-stroke 4-cylinder fires at rpm/30 Hz).
            ripple = 6.0 * np.sin(2 * np.pi * np.cumsum(rpm / 30.0) / 1000.0)
            pedal = s("accel_pedal_pct")
            return [
                (rpm + ripple).astype("<f4"),
                (pedal * 2.8 + 15.0 * (speed > 0.1)).astype("<f4"),
                np.round(pedal * 100).astype("<u2"),
                (13.9 + 0.2 * np.sin(t * 0.7) - 0.002 * pedal).astype("<f4"),
            ]
        if group == BENCH_GROUP:
            tt = t.astype(np.float32)[None, :]
            block = np.sin(self._bench_freq[: self.extra, None] * tt + self._bench_phase[: self.extra, None])
            return list(block.astype("<f4"))
        raise KeyError(group)

    def write_chunk(self, profile: Motion, t0: float, t1: float) -> None:
        t_log, frames = self._can_chunk(profile, t0, t1)
        if len(t_log):
            self.mdf.extend(0, [(t_log, None), (frames, None)])
        for gname, rate in self.groups:
            # Samples on the logger's clock grid; values taken at the matching true time.
            i0, i1 = math.ceil(t0 * rate - 1e-9), math.ceil(t1 * rate - 1e-9)
            if i1 <= i0:
                continue
            t_log_g = np.arange(i0, i1) / rate
            cols = self._physical(gname, profile, t_log_g - self.offset_s)
            self.mdf.extend(self.group_index[gname], [(t_log_g, None), *[(c, None) for c in cols]])

    def close(self) -> None:
        # FileHistory() stamps the wall clock in its constructor: overwrite it, and drop the "created" entry
        # asammdf added at MDF() time, so the file only carries drive-derived times.
        fh = FileHistory()
        fh.abs_time = self.spec.start_time_ns
        fh.tz_offset = 0
        fh.daylight_save_time = 0
        fh.time_flags = v4c.FLAG_HD_TIME_OFFSET_VALID
        fh.comment = (
            f"<FHcomment><TX>created</TX><tool_id>fleetgen</tool_id>"
            f"<tool_vendor>ad-fleet-platform</tool_vendor><tool_version>{GENERATOR_VERSION}"
            f"</tool_version></FHcomment>"
        )
        self.mdf.file_history = [fh]
        self.mdf.save(self.path, overwrite=True, compression=0, add_history_block=False)
        self.mdf.close()


def _engine_rpm(speed_kmh: np.ndarray, gear: np.ndarray) -> np.ndarray:
    """Six-speed automatic: pick the gear by speed band, idle at 780 rpm."""
    ratios = np.array([4.1, 2.4, 1.6, 1.2, 0.95, 0.78])
    bands = np.array([0, 18, 35, 55, 80, 105])
    g = np.clip(np.searchsorted(bands, speed_kmh, side="right") - 1, 0, 5)
    wheel_rps = speed_kmh / 3.6 / (2 * np.pi * 0.33)
    rpm = wheel_rps * ratios[g] * 3.4 * 60
    return np.where(gear == 3, np.maximum(rpm, 780.0), 780.0)
