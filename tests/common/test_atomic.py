"""Atomic writes' helpers that the tests of the writers cannot see fail."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ad_common.atomic import start_writeback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is a Linux call")
def test_writeback_of_a_growing_file_is_accepted_through_a_read_only_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    with open(path, "wb") as writer:
        fd = os.open(path, os.O_RDONLY)  # as the Parquet sinks keep one beside pyarrow's writer
        writer.write(b"\0" * (4 << 20))
        writer.flush()
        assert start_writeback(fd) is True
        os.close(fd)
    assert start_writeback(fd) is False  # closed: refused (EBADF), never raised
