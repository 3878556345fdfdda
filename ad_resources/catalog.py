"""The DuckDB metadata catalog: views over the lake's per-drive records.

Runs never write to DuckDB (it allows one writer); they write one small Parquet/JSON record per drive
into the lake, and the catalog exposes them as views, one per record in ``ad_common.lake_layout``. A view's
glob is evaluated at query time, so a drive registered a second ago is visible without any refresh; a record
with no files yet is an empty view with the record's columns, so a query on a fresh state returns no rows
instead of failing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import duckdb
from dagster import ConfigurableResource

from ad_common.lake_layout import CATALOG_RECORDS, CatalogRecord
from ad_resources.lake import Lake

CATALOG_VIEWS: tuple[str, ...] = tuple(r.name for r in CATALOG_RECORDS)


def _reader_sql(record: CatalogRecord, folder_uri: str) -> str:
    glob = f"{folder_uri}/*/*.{record.file_format}"
    if record.file_format == "json":
        return f"read_json_auto('{glob}', union_by_name = true)"
    return f"read_parquet('{glob}', union_by_name = true)"


def _empty_sql(con: duckdb.DuckDBPyConnection, record: CatalogRecord) -> str:
    """A zero-row SELECT with the record's column names and DuckDB types."""
    relation = con.from_arrow(record.schema.empty_table())
    columns = ", ".join(
        f'CAST(NULL AS {dtype}) AS "{name}"' for name, dtype in zip(relation.columns, relation.types, strict=True)
    )
    return f"SELECT {columns} WHERE false"


class DuckDBCatalog(ConfigurableResource):
    """DuckDB file holding views over the lake; query it with ``duckdb <path>`` or :meth:`connect`."""

    path: str
    lake: Lake

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the catalog with every record's view (re)created: over its files, or empty until one exists."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(self.path)
        try:
            for record in CATALOG_RECORDS:
                if self.lake.list_files(record.folder, f".{record.file_format}"):
                    body = f"SELECT * FROM {_reader_sql(record, self.lake.uri(record.folder))}"
                else:
                    body = _empty_sql(con, record)
                con.execute(f"CREATE OR REPLACE VIEW {record.name} AS {body}")
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        with self.connect() as con:
            return con.execute(sql, params or []).fetchall()
