"""What a raw exception from the MDF library says about the file.

asammdf reports damaged files with whatever its parser tripped over: ``UnboundLocalError: cannot access local
variable 'blk'`` (an unknown block id at a link), ``ValueError: seek out of range`` / ``OSError`` (a link beyond
the end of the file), ``struct.error: unpack requires a buffer of N bytes`` (a block cut short), ``zlib.error``
(a damaged DZ block), ``MemoryError`` (a block declaring an absurd size). ``describe_mdf_error`` turns these into
what is wrong with the file, keeping the raw cause in brackets; callers chain the original (``raise ... from``).
"""

from __future__ import annotations

import re
import struct
import zlib

_ADDRESS = re.compile(r"(?:address|offset|at)\s*(?:=|:)?\s*(0x[0-9a-fA-F]+|\d{3,})")


def describe_mdf_error(exc: BaseException) -> str:
    """``"<what is wrong with the file> (<ExcType>: <message>)"``."""
    raw = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = str(exc)
    where = _ADDRESS.search(text)
    at = f" at {where.group(1)}" if where else ""
    if isinstance(exc, UnboundLocalError | NameError):
        what = f"truncated or damaged block structure{at} (a link points to something that is not an MDF block)"
    elif isinstance(exc, struct.error | EOFError):
        what = f"truncated or damaged block structure{at} (a block is cut short: the file ends inside it)"
    elif "seek" in text.lower() or isinstance(exc, OSError | OverflowError):
        what = f"truncated or damaged block structure{at} (a link points outside the file)"
    elif isinstance(exc, zlib.error):
        what = f"damaged compressed data block{at} (DZ block does not inflate)"
    elif isinstance(exc, MemoryError):
        what = f"damaged block structure{at} (a block declares an impossible size)"
    elif isinstance(exc, KeyError | IndexError | AttributeError | TypeError):
        what = f"damaged block structure{at} (inconsistent links or counts between blocks)"
    elif isinstance(exc, UnicodeDecodeError):
        what = f"damaged text block{at} (not valid text)"
    else:
        return raw
    return f"{what} ({raw})"


def describe_mcap_error(exc: BaseException) -> str:
    """``"<what is wrong with the file> (<ExcType>: <message>)"`` for what the mcap library raises on a damaged
    file: ``EndOfFile`` / ``struct.error`` (a record cut short), ``OSError``/seek errors (an offset outside the
    file), ``UnicodeDecodeError`` (a damaged string field), LZ4/zstd ``RuntimeError`` (a chunk that does not
    decompress), ``MemoryError`` / ``RecordLengthLimitExceeded`` (a length field gone absurd), CRC mismatches."""
    raw = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    name, text = type(exc).__name__, str(exc).lower()
    if "crc" in name.lower() or "crc" in text:
        what = "corrupt data: a checksum does not match (bytes changed after writing)"
    elif name == "EndOfFile" or isinstance(exc, struct.error | EOFError):
        what = "truncated or corrupt record (a record is cut short: a length field is damaged or the file ends)"
    elif isinstance(exc, MemoryError) or name == "RecordLengthLimitExceeded" or "cannot fit" in text:
        what = "corrupt record (a length or offset field declares an impossible value)"
    elif isinstance(exc, OSError) or "seek" in text:
        what = "corrupt index or summary (an offset points outside the file)"
    elif isinstance(exc, UnicodeDecodeError):
        what = "corrupt record (a text field such as a topic or schema name is not valid UTF-8)"
    elif "lz4" in text or "zstd" in text or "decompress" in text:
        what = "corrupt compressed chunk (it does not decompress)"
    else:
        return raw
    return f"{what} ({raw})"
