"""The DuckDB metadata catalog: views over the lake's per-drive records.

Runs never write to DuckDB (it allows one writer); they write one small Parquet/JSON record per drive
into the lake, and the catalog exposes them as views. A view's glob is evaluated at query time, so a drive
registered a second ago is visible without any refresh.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import duckdb
from dagster import ConfigurableResource

from ad_resources.lake import Lake

# view name -> (lake folder, reader)
CATALOG_VIEWS: dict[str, tuple[str, str]] = {
    "raw_files": ("catalog/raw_files", "read_parquet('{glob}/*/*.parquet', union_by_name = true)"),
    "decoded_streams": (
        "catalog/decoded_streams",
        "read_parquet('{glob}/*/*.parquet', union_by_name = true)",
    ),
    "drive_registry": ("registry", "read_json_auto('{glob}/*/*.json', union_by_name = true)"),
}


class DuckDBCatalog(ConfigurableResource):
    """DuckDB file holding views over the lake; query it with ``duckdb <path>`` or :meth:`connect`."""

    path: str
    lake: Lake

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the catalog with every view whose records exist (re)created."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(self.path)
        try:
            for view, (folder, reader) in CATALOG_VIEWS.items():
                if self.lake.list_files(folder):
                    con.execute(
                        f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {reader.format(glob=self.lake.uri(folder))}"
                    )
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        with self.connect() as con:
            return con.execute(sql, params or []).fetchall()
