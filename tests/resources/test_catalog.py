"""The DuckDB catalog and the lake's listings on the embedded default's kind of path (under ``.state``)."""

from __future__ import annotations

import pyarrow as pa

from ad_common.lake_layout import CATALOG_RECORDS, DECODED_STREAMS, RAW_FILES, is_hidden, registry_path
from tests.support.platform import LocalPlatform


def test_every_catalog_view_exists_and_is_empty_on_a_fresh_state(local_platform: LocalPlatform) -> None:
    with local_platform.catalog.connect() as con:
        for record in CATALOG_RECORDS:
            result = con.execute(f"SELECT * FROM {record.name}")
            assert result.fetchall() == []
            assert [d[0] for d in result.description] == record.schema.names


def test_lake_listings_under_a_dot_folder_see_records_but_not_temporaries(local_platform: LocalPlatform) -> None:
    lake = local_platform.lake
    assert "/.state/" in lake.uri("x")
    row = {name: None for name in DECODED_STREAMS.schema.names} | {"market": "de", "drive_id": "d1", "rows": 7}
    lake.write_table(DECODED_STREAMS.path("de", "d1"), pa.Table.from_pylist([row], schema=DECODED_STREAMS.schema))
    lake.write_json(registry_path("de", "d1"), {"market": "de", "drive_id": "d1", "version": 1})
    (local_platform.state / "lake" / DECODED_STREAMS.folder / "de" / ".d2.parquet.tmp-0123abcd").write_bytes(b"partial")

    assert lake.list_files(DECODED_STREAMS.folder) == [DECODED_STREAMS.path("de", "d1")]
    rows = local_platform.catalog.query("SELECT market, drive_id, rows FROM decoded_streams")
    assert rows == [("de", "d1", 7)]
    assert local_platform.catalog.query("SELECT drive_id, version FROM drive_registry") == [("d1", 1)]
    assert local_platform.catalog.query(f"SELECT count(*) FROM {RAW_FILES.name}") == [(0,)]


def test_hidden_is_judged_on_the_relative_path() -> None:
    assert not is_hidden("catalog/raw_files/de/d1.parquet")
    assert is_hidden("catalog/raw_files/de/.d1.parquet.tmp")
    assert is_hidden(".staging/de/d1.json")
