"""Log formats: which file is which, by suffix (what a drive folder holds) and by magic bytes (what it is).

One table for the landing zone, the validation of raw drives and the decoder, so a file one of them accepts
is never one another ignores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

LogKind = Literal["mdf4", "mcap", "manifest", "dbc", "other"]

MANIFEST_NAME = "drive.json"
MDF_SUFFIXES = frozenset({".mf4", ".mdf"})
# CANedge compressed/encrypted wrappers around an MF4: classified as MDF so that validation names them.
CANEDGE_CONTAINER_SUFFIXES = frozenset({".mfc", ".mfe", ".mfm"})
MCAP_SUFFIXES = frozenset({".mcap"})
DBC_SUFFIXES = frozenset({".dbc"})
LOG_SUFFIXES = MDF_SUFFIXES | CANEDGE_CONTAINER_SUFFIXES | MCAP_SUFFIXES

MCAP_MAGIC = b"\x89MCAP"
MDF_MAGICS = (b"MDF     ", b"UnFinMF ")  # finalised / unfinalised MDF4 (and MDF3) identification block
GIT_LFS_POINTER = b"version https://git-lfs"
CANEDGE_CONTAINER = b"Generic "


def classify(path: Path) -> LogKind:
    """What a file in a drive folder is meant to be, from its name."""
    suffix = path.suffix.lower()
    if suffix in MDF_SUFFIXES | CANEDGE_CONTAINER_SUFFIXES:
        return "mdf4"
    if suffix in MCAP_SUFFIXES:
        return "mcap"
    if suffix in DBC_SUFFIXES:
        return "dbc"
    if path.name == MANIFEST_NAME:
        return "manifest"
    return "other"


def sniff(head: bytes) -> tuple[Literal["mdf", "mcap"] | None, str]:
    """What the first bytes of a file say it is: ``("mdf" | "mcap", "")``, or ``(None, what it is instead)``."""
    if head.startswith(MCAP_MAGIC):
        return "mcap", ""
    if head[:8] in MDF_MAGICS:
        return "mdf", ""
    if head.startswith(GIT_LFS_POINTER):
        return None, "a Git LFS pointer text file, not the data (fetch it with `git lfs pull`)"
    if head.startswith(CANEDGE_CONTAINER):
        return None, "a CANedge compressed/encrypted container (.MFC/.MFE/.MFM); unpack it with mdf2finalized first"
    if not head:
        return None, "an empty file"
    if head[1:5] == b"MCAP":
        return None, "an MCAP with a damaged magic (line-ending conversion?)"
    return None, f"of unknown format (magic {head[:8]!r})"


def printable(name: str) -> str:
    """A landed name safe to put in a log line or message: as is when printable, else its escaped repr.

    Folder and file names come from uploaders: a newline in one would forge a log line, an escape sequence
    would rewrite the terminal."""
    return name if name.isprintable() else repr(name)
