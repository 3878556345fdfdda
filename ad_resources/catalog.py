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


def duckdb_columns(record: CatalogRecord, con: duckdb.DuckDBPyConnection | None = None) -> list[tuple[str, str]]:
    """The record's columns as (name, DuckDB type) in schema order: what its Arrow schema reads as in DuckDB."""
    own = con is None
    con = con or duckdb.connect()
    try:
        relation = con.from_arrow(record.schema.empty_table())
        return [(name, str(dtype)) for name, dtype in zip(relation.columns, relation.types, strict=True)]
    finally:
        if own:
            con.close()


def _empty_sql(con: duckdb.DuckDBPyConnection, record: CatalogRecord) -> str:
    """A zero-row SELECT with the record's column names and DuckDB types."""
    columns = ", ".join(f'CAST(NULL AS {dtype}) AS "{name}"' for name, dtype in duckdb_columns(record, con))
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

    @contextlib.contextmanager
    def records_root(self) -> Iterator[str]:
        """The folder or URI under which DuckDB finds the record folders (``<root>/<record.folder>/*/*.<ext>``).

        The lake's own root here (a local folder, or ``s3://`` where DuckDB has httpfs); the S3-mirrored catalog
        yields its local mirror after syncing it. The dbt project reads the records under this root.
        """
        yield self.lake.uri("").rstrip("/")


class MetadataCatalog(ConfigurableResource):
    """The dbt metadata catalog: the DuckDB file that ``dbt_metadata/`` builds its models into, from the records
    that ``records`` (the catalog over the lake) finds. Query it read-only with ``duckdb <path>``."""

    path: str
    records: DuckDBCatalog

    @contextlib.contextmanager
    def dbt_vars(self) -> Iterator[dict[str, str]]:
        """The ``--vars`` of a dbt command: where the records are and which DuckDB file the models go to."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self.records.records_root() as root:
            yield {"lake_root": root, "metadata_path": self.path}

    def query(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        con = duckdb.connect(self.path, read_only=True)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()
