"""CLI: python -m ad_core.decode <file-or-folder> [...] --out <dir> [--dbc x.dbc ...]

Decodes into a temporary sibling of --out and renames it into place only when complete (atomic_dir), prints a
JSON summary on stdout and exits non-zero when the whole input failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ad_common.atomic import atomic_dir
from ad_common.formats import DBC_SUFFIXES, LOG_SUFFIXES

from . import DecodeError, decode_drive


def _expand(paths: list[str]) -> tuple[list[Path], list[Path]]:
    files: list[Path] = []
    dbcs: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in LOG_SUFFIXES:
                    files.append(f)
                elif f.is_file() and f.suffix.lower() in DBC_SUFFIXES:
                    dbcs.append(f)
        else:
            files.append(p)
    return files, dbcs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ad_core.decode", description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="MF4/MDF/MCAP files or folders (folders: their .dbc files are used too)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    ap.add_argument("--dbc", action="append", default=[], type=Path, help="DBC file for raw CAN frames (repeatable)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--full", action="store_true", help="print the full report (columns, previews)")
    args = ap.parse_args(argv)

    files, found_dbcs = _expand(args.inputs)
    dbcs = list(args.dbc) + [d for d in found_dbcs if d not in args.dbc]
    missing = [str(f) for f in files if not f.exists()]
    if missing or not files:
        print(json.dumps({"ok": False, "errors": [f"input not found: {m}" for m in missing] or ["no inputs"]}))
        return 2

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        with atomic_dir(args.out) as tmp:
            report = decode_drive(files, tmp, dbcs, log=log)
            final_dir = args.out
            for s in report.streams:
                if s.parquet:
                    s.parquet = str(final_dir / Path(s.parquet).name)
    except DecodeError as exc:
        print(json.dumps({"ok": False, "errors": [str(exc)]}))
        return 1
    if args.full:
        out = {"ok": True, **report.to_dict()}
    else:
        d = report.to_dict()
        out = {
            "ok": True,
            "out": str(args.out),
            **{k: d[k] for k in ("files", "bytes_in", "seconds", "mb_per_s", "rows", "errors")},
            "streams": [
                {k: s[k] for k in ("name", "kind", "rows", "rate_hz", "status", "error")} for s in d["streams"]
            ],
        }
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
