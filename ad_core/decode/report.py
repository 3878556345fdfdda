"""Report objects returned by the decoder (plain dataclasses, JSON-serialisable)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


class DecodeError(Exception):
    """A file (or a whole drive) could not be decoded. The message names the file, the stream and the cause."""

    def __init__(self, message: str, *, file: str | None = None, stream: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.stream = stream


class CorruptChunk(DecodeError):
    """An MCAP chunk whose content is damaged (does not decompress, to its declared size, with its CRC), raised
    instead of salvaging when the caller asked (``decode_drive(fail_on_corrupt_chunk=True)``). ``reason`` names
    the chunk and the problem, without the file name."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file.rsplit('/', 1)[-1]}: {reason}", file=file)
        self.reason = reason


@dataclass
class StreamReport:
    name: str
    source_file: str
    kind: str  # signals | can | can_raw | image | pointcloud | log
    rows: int = 0
    start_ns: int | None = None
    end_ns: int | None = None
    rate_hz: float | None = None
    columns: dict[str, str] = field(default_factory=dict)  # column name -> unit ("" when none)
    parquet: str | None = None
    status: str = "ok"  # ok | skipped | salvaged
    error: str | None = None
    out_of_order_samples: int = 0  # samples whose time is earlier than their predecessor's, as recorded (MDF)
    preview: list[dict[str, Any]] = field(default_factory=list)
    # the quality profile of the table (StreamProfile, [SignalProfile]), gathered as it was written
    quality: tuple[Any, list[Any]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("quality")
        return data


@dataclass
class DriveDecodeReport:
    streams: list[StreamReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bytes_in: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.streams)

    def stream(self, name: str) -> StreamReport:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bytes_in": self.bytes_in,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.bytes_in / 1e6 / self.seconds, 1) if self.seconds > 0 else None,
            "rows": self.rows,
            "errors": self.errors,
            "streams": [s.to_dict() for s in self.streams],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), default=_json_default, **kwargs)


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return f"<{len(o)} bytes>"
    try:
        return o.item()  # numpy scalars
    except AttributeError:
        return str(o)
