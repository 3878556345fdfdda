"""ISO-TP (ISO 15765-2) reassembly of multi-frame CAN messages, e.g. UDS responses longer than one frame.

Frames of one CAN id (and bus) are fed in time order; the protocol control information (PCI) in the first
byte (after the first ``address_bytes`` bytes, for extended/mixed addressing) says what each is:

* single frame (SF, ``0x0L``; CAN FD: ``0x00 LL``): one whole message,
* first frame (FF, ``0x1L LL``; messages > 4095 bytes: ``0x10 0x00`` + 32-bit length): starts a message,
* consecutive frame (CF, ``0x2N``): the next piece, sequence number N counting 1..15, 0, 1, ...,
* flow control (FC, ``0x3S``): the receiver's pacing; carries no data and is counted only.

A message is complete when the first frame's length is reached; its time is the last frame's (as CANoe does).
A CF out of sequence, or a new FF/SF while one is open, abandons the open message; both are counted, never
silently dropped. State is kept across ``feed`` calls, so frames may arrive in fragments of any size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class IsoTpStats:
    messages: int = 0
    flow_control_frames: int = 0
    sequence_errors: int = 0  # a consecutive frame with an unexpected sequence number
    abandoned: int = 0  # messages never completed (cut off by a new first/single frame or by the log's end)
    stray_frames: int = 0  # consecutive frames without a first frame, or frames with a reserved PCI type

    def describe(self) -> str:
        parts = [f"{self.messages} messages reassembled"]
        for name, value in (
            ("flow-control frames", self.flow_control_frames),
            ("sequence errors", self.sequence_errors),
            ("incomplete messages abandoned", self.abandoned),
            ("stray frames", self.stray_frames),
        ):
            if value:
                parts.append(f"{value} {name}")
        return ", ".join(parts)


@dataclass
class IsoTpReassembler:
    address_bytes: int = 0  # 1 for extended or mixed addressing (the target address precedes the PCI)
    stats: IsoTpStats = field(default_factory=IsoTpStats)
    _data: bytearray | None = None
    _length: int = 0
    _next_seq: int = 0

    def _start(self, length: int, first: bytes) -> None:
        if self._data is not None:
            self.stats.abandoned += 1
        self._data, self._length, self._next_seq = bytearray(first[:length]), length, 1

    def push(self, frame: bytes) -> bytes | None:
        """One frame's bytes; returns the message it completes (its data, PCI removed) or None."""
        f = frame[self.address_bytes :]
        if not f:
            self.stats.stray_frames += 1
            return None
        kind, low = f[0] >> 4, f[0] & 0x0F
        if kind == 0:  # single frame
            if self._data is not None:
                self.stats.abandoned += 1
                self._data = None
            length, start = (f[1], 2) if low == 0 and len(f) > 8 else (low, 1)
            if length == 0 or start + length > len(f):
                self.stats.stray_frames += 1
                return None
            self.stats.messages += 1
            return bytes(f[start : start + length])
        if kind == 1:  # first frame
            length = (low << 8) | f[1] if len(f) > 1 else 0
            if length == 0 and len(f) >= 6:  # > 4095 bytes: 32-bit length
                length = int.from_bytes(f[2:6], "big")
                self._start(length, bytes(f[6:]))
            else:
                self._start(length, bytes(f[2:]))
            return None
        if kind == 2:  # consecutive frame
            if self._data is None:
                self.stats.stray_frames += 1
                return None
            if low != self._next_seq:
                self.stats.sequence_errors += 1
                self.stats.abandoned += 1
                self._data = None
                return None
            self._next_seq = (self._next_seq + 1) & 0x0F
            self._data += f[1:]
            if len(self._data) >= self._length:
                done, self._data = bytes(self._data[: self._length]), None
                self.stats.messages += 1
                return done
            return None
        if kind == 3:
            self.stats.flow_control_frames += 1
            return None
        self.stats.stray_frames += 1
        return None

    def feed(
        self, t_ns: np.ndarray, payload: np.ndarray, dlc: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[bytes]]:
        """Frames (time-ordered ``(n, width)`` uint8, optional data lengths) -> (times, messages) completed."""
        times, messages = [], []
        for i in range(len(t_ns)):
            row = payload[i] if dlc is None else payload[i, : int(dlc[i])]
            message = self.push(row.tobytes())
            if message is not None:
                times.append(int(t_ns[i]))
                messages.append(message)
        return np.asarray(times, dtype=np.int64), messages

    def finish(self) -> None:
        """The log ended: an open message is incomplete."""
        if self._data is not None:
            self.stats.abandoned += 1
            self._data = None
