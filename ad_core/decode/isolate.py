"""Run untrusted-input parsing in a child process, so a crash in native code fails one file, not the process.

asammdf's compiled extensions segfault (SIGSEGV) or abort (glibc ``malloc(): invalid size``, SIGABRT) on some
damaged MDF files; no Python ``try`` can catch that. ``run_isolated("module:function", *args)`` calls
``function(send, *args)`` in a child process and returns its result; ``send(msg)`` streams progress messages to
the parent (``on_message``), e.g. "now reading file X", so the parent knows which input was being read when the
child died. A child killed by a signal raises :class:`NativeCrash` with the signal; an exception in the child is
re-raised in the parent (same type where it pickles, else ``RuntimeError``), chained to the child's traceback.

Children come from a ``forkserver`` (threads run in the parent: a plain ``fork`` could copy a held lock). The
server preloads the MDF decoder (numpy, pyarrow, asammdf: ~1 s of imports), so each child after the first starts
warm in a few milliseconds. run-once starts the server with the process (``start_forkserver``); elsewhere the first
child of a process overlaps the server's start with the MCAP decoding in the parent.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import threading
import traceback
from collections.abc import Callable
from typing import Any

PRELOAD = ["ad_core.decode.mdf_worker"]
_CTX_LOCK = threading.Lock()
_CTX: Any = None


class NativeCrash(Exception):
    """The child process died without an answer (killed by a signal, or exited)."""

    def __init__(self, exitcode: int | None, last_message: Any = None) -> None:
        self.exitcode = exitcode
        self.signum = -exitcode if exitcode is not None and exitcode < 0 else None
        self.last_message = last_message
        super().__init__(f"decoder crashed ({self.describe()})")

    def describe(self) -> str:
        if self.signum is not None:
            try:
                name = signal.Signals(self.signum).name
            except ValueError:
                name = "unknown signal"
            return f"signal {self.signum}, {name}"
        return f"exit code {self.exitcode}"


EXIT_GRACE_S = 10.0


def _context() -> Any:
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _CTX = ctx
        return _CTX


def start_forkserver() -> None:
    """Start the server now, without waiting for its preload: it imports the MDF decoder on another core while
    this process goes on, and the first child is then forked warm. For a process that isolates itself (run-once);
    never in one that forks processes which isolate (a step forkserver): they would inherit a server that is not
    their child, which multiprocessing's liveness check (``waitpid``) cannot supervise."""
    import multiprocessing.forkserver

    _context()
    multiprocessing.forkserver.ensure_running()


class _ChildError(Exception):
    pass


def _resolve(target: str) -> Callable[..., Any]:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _entry(conn: Any, target: str, args: tuple[Any, ...]) -> None:
    def send(msg: Any) -> None:
        conn.send(("msg", msg))

    try:
        result = _resolve(target)(send, *args)
    except BaseException as exc:  # everything goes back to the parent
        tb = traceback.format_exc()
        try:
            conn.send(("exc", exc, tb))
        except Exception:  # the exception does not pickle
            conn.send(("exc", None, tb))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


def run_isolated(target: str, *args: Any, on_message: Callable[[Any], None] | None = None) -> Any:
    """``target(send, *args)`` in a child process; ``target`` is ``"module:function"`` (imported in the child
    only, so the parent never pays for the parser's imports), args must pickle. See the module docstring."""
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_entry, args=(child_conn, target, args), daemon=True, name="isolated-decoder")
    proc.start()
    child_conn.close()
    last: Any = None
    outcome: tuple[Any, ...] | None = None
    try:
        while outcome is None:
            try:
                kind, *rest = parent_conn.recv()
            except EOFError:  # the child is gone without an answer
                break
            if kind == "msg":
                last = rest[0]
                if on_message is not None:
                    on_message(last)
            else:
                outcome = (kind, *rest)
    finally:
        parent_conn.close()
        # A child whose heap the file corrupted can hang in its own exit (a glibc lock) after answering:
        # the answer is in, so do not wait on it.
        proc.join(EXIT_GRACE_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if outcome is None:
        raise NativeCrash(proc.exitcode, last)
    if outcome[0] == "ok":
        return outcome[1]
    _kind, exc, tb = outcome
    cause = _ChildError(f"in the decoder process:\n{tb}")
    if exc is None:
        raise RuntimeError(tb.strip().splitlines()[-1]) from cause
    raise exc from cause
