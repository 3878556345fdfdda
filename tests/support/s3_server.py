"""A real S3-compatible server (moto) on loopback for the duration of a ``with`` block."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def running_s3() -> Iterator[str]:
    """Start moto's server on a free loopback port and yield its endpoint URL (for ``AWS_ENDPOINT_URL``)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
