"""torchrun with a machine-readable failure: ``python -m ad_core.train.launch --failure-file F <torchrun args>``.

Runs ``torch.distributed.run`` (torchrun itself, same arguments). When a rank fails, torchrun tears the others
down and raises ``ChildFailedError``; this writes the *first* failure to ``F`` as JSON (rank, exit code, signal,
the rank's error message and traceback from its ``@record`` error file) so the caller can fail the run with that
rank's error. Ranks that torchrun itself terminated (SIGTERM) after the first failure, or that only saw a peer
vanish, are never the root cause when another rank failed in the same second (failure times are whole seconds).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def first_failure(failures: dict[int, Any]) -> dict[str, Any]:
    """The root cause among torchrun's ``ProcessFailure``s, as a JSON-able dict."""

    def consequence(f: Any) -> bool:
        return f.exitcode == -signal.SIGTERM or any(s in str(f.message) for s in _PEER_LOST)

    rank = min(failures, key=lambda r: (failures[r].timestamp, consequence(failures[r]), r))
    f = failures[rank]
    message = f.message if isinstance(f.message, str) else f.message.get("message", "")
    trace = "" if isinstance(f.message, str) else f.message.get("extraInfo", {}).get("py_callstack", "")
    return {
        "rank": rank,
        "local_rank": f.local_rank,
        "exitcode": f.exitcode,
        "signal": f.signal_name() if f.exitcode < 0 else None,
        "message": message,
        "traceback": trace[-4000:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--failure-file", type=Path, required=True)
    ours, rest = parser.parse_known_args(argv)
    try:
        run(parse_args(rest))
    except ChildFailedError as exc:
        ours.failure_file.write_text(json.dumps(first_failure(exc.failures), indent=2))
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
