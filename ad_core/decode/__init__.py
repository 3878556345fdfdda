"""Pure decode core: one drive's MDF4 (incl. raw CAN + DBC) and MCAP files -> one Parquet file per stream.

    report = decode_drive(inputs, out_dir, dbc_files=(), log=print)

See docs/data-contracts.md for the output contract.
"""

from .drive import decode_drive, decode_file, sniff_format
from .parquet_out import FRAMES_PER_ROW_GROUP, read_frame
from .report import CorruptChunk, DecodeError, DriveDecodeReport, StreamReport
from .version import DECODER_VERSION

__all__ = [
    "DECODER_VERSION",
    "FRAMES_PER_ROW_GROUP",
    "CorruptChunk",
    "DecodeError",
    "DriveDecodeReport",
    "StreamReport",
    "decode_drive",
    "decode_file",
    "read_frame",
    "sniff_format",
]
