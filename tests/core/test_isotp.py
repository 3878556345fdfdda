"""ISO-TP (ISO 15765-2) reassembly: single, first, consecutive and flow-control frames, and what goes wrong."""

from __future__ import annotations

import numpy as np

from ad_core.decode.isotp import IsoTpReassembler

# A real UDS response (Hyundai Kona BMS, 0x7EC, service 0x62 DID 0x0101): first frame + 8 consecutive frames.
KONA = [
    "103e620101fff7e7",
    "21ff640000000083",
    "2200030df40a0909",
    "2309090a00000ab6",
    "2423b63200009200",
    "250001c500000470",
    "260000009b000001",
    "278f00029d1f0901",
    "2865000000000bb8",
]


def frames(*hexes: str) -> np.ndarray:
    return np.array([list(bytes.fromhex(h)) for h in hexes], dtype=np.uint8)


def test_first_and_consecutive_frames_give_one_message_of_the_announced_length() -> None:
    r = IsoTpReassembler()
    t, messages = r.feed(np.arange(9, dtype=np.int64) * 1000, frames(*KONA))
    assert t.tolist() == [8000]  # the time of the last frame
    (m,) = messages
    assert len(m) == 0x3E and m[:3] == bytes.fromhex("620101") and m[7] == 0x64  # SoC byte: 100 * 0.5 %
    assert m.endswith(bytes.fromhex("65000000000bb8"))  # 6 + 8 * 7 bytes: the last frame fills it exactly
    assert r.stats.messages == 1 and r.stats.describe() == "1 messages reassembled"


def test_single_frames_flow_control_and_fragmented_feeding() -> None:
    r = IsoTpReassembler()
    _, m1 = r.feed(np.array([1, 2]), frames("0462010155aaaaaa", "3000000000000000"))
    assert m1 == [bytes.fromhex("62010155")] and r.stats.flow_control_frames == 1
    _, m2 = r.feed(np.array([3, 4, 5]), frames(*KONA[:3]))  # a message split across two feeds
    t3, m3 = r.feed(np.arange(6, 12), frames(*KONA[3:]))
    assert (m2, t3.tolist(), len(m3[0])) == ([], [11], 62)


def test_a_lost_consecutive_frame_abandons_the_message_and_is_counted() -> None:
    r = IsoTpReassembler()
    lost = [*KONA[:4], *KONA[5:]]  # frame 0x24 missing: 0x25 arrives out of sequence
    _, messages = r.feed(np.arange(len(lost)), frames(*lost))
    assert messages == [] and (r.stats.sequence_errors, r.stats.abandoned, r.stats.stray_frames) == (1, 1, 3)
    _, messages = r.feed(np.arange(9), frames(*KONA))
    assert len(messages) == 1  # the next complete message is fine
    r.feed(np.arange(2), frames(*KONA[:2]))
    r.finish()
    assert r.stats.abandoned == 2
    assert r.stats.describe() == (
        "1 messages reassembled, 1 sequence errors, 2 incomplete messages abandoned, 3 stray frames"
    )


def test_sequence_numbers_wrap_after_15() -> None:
    body = bytes(range(6 + 16 * 7))
    pieces = [bytes([0x10 | (len(body) >> 8), len(body) & 0xFF]) + body[:6]]
    for k in range(16):
        pieces.append(bytes([0x20 | ((k + 1) & 0x0F)]) + body[6 + 7 * k : 13 + 7 * k])
    r = IsoTpReassembler()
    _, messages = r.feed(np.arange(17), frames(*(p.hex() for p in pieces)))
    assert messages == [body] and r.stats.sequence_errors == 0
