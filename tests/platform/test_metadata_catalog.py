"""The dbt metadata catalog's contract with the platform, without running dbt: sources equal the lake layout,
accepted values equal the platform's constants, and the translator's dependencies follow the stage table."""

from __future__ import annotations

import json
from typing import Any

import yaml
from dagster import AssetKey

from ad_assets.metadata_catalog import CATALOG_GROUP, DBT_PROJECT, CatalogTranslator, prepare_manifest
from ad_common.lake_layout import CATALOG_RECORDS, ODD_TAGS, ODD_UNKNOWN, SPLITS
from ad_common.markets import MARKETS
from ad_common.stages import ASSET_STAGES
from ad_core.curate.odd import ODD_VALUES
from ad_platform.definitions import defs
from ad_resources.catalog import duckdb_columns
from ad_resources.dbt_sources import RECORD_STAGES, SOURCES_FILE, sources_yaml


def _manifest() -> dict[str, Any]:
    return json.loads(prepare_manifest().read_text())


def test_the_committed_sources_are_generated_from_the_lake_layout() -> None:
    assert SOURCES_FILE.read_text() == sources_yaml(), (
        "dbt_metadata sources drifted from CATALOG_RECORDS: run `python -m ad_resources.dbt_sources`"
    )
    sources = {s["name"]: s for s in _manifest()["sources"].values() if s["source_name"] == "lake"}
    assert set(sources) == {r.name for r in CATALOG_RECORDS} == set(RECORD_STAGES)
    for record in CATALOG_RECORDS:
        declared = [(c["name"], c["data_type"]) for c in sources[record.name]["columns"].values()]
        assert declared == duckdb_columns(record), record.name
        assert sources[record.name]["meta"]["folder"] == record.folder


def test_accepted_values_are_the_platforms_vocabulary() -> None:
    odd = {tag: {*values, ODD_UNKNOWN} for tag, values in ODD_VALUES.items()}
    expected = {"split": set(SPLITS), "market": set(MARKETS), **odd}
    seen: dict[str, int] = {}
    for path in (DBT_PROJECT.project_dir / "models").rglob("*.yml"):
        for model in yaml.safe_load(path.read_text()).get("models", []):
            for column in model.get("columns", []):
                for test in column.get("data_tests", []):
                    if isinstance(test, dict) and "accepted_values" in test and column["name"] in expected:
                        values = set(test["accepted_values"]["arguments"]["values"])
                        assert values == expected[column["name"]], (model["name"], column["name"])
                        seen[column["name"]] = seen.get(column["name"], 0) + 1
    assert set(seen) == set(expected)
    project = yaml.safe_load((DBT_PROJECT.project_dir / "dbt_project.yml").read_text())
    assert tuple(project["vars"]["odd_tags"]) == ODD_TAGS


def test_models_are_catalog_assets_downstream_of_the_stages_that_write_their_records() -> None:
    graph = defs.resolve_asset_graph()
    models = {n["name"] for n in _manifest()["nodes"].values() if n["resource_type"] == "model"}
    for model in models:
        node = graph.get(AssetKey([CATALOG_GROUP, model]))
        assert node.group_name == CATALOG_GROUP and node.check_keys, model
        assert all(k.path[0] in (*MARKETS, CATALOG_GROUP) for k in node.parent_keys), model  # no source stubs
    parents = {k.to_user_string() for k in graph.get(AssetKey([CATALOG_GROUP, "split_assignments"])).parent_keys}
    assert parents == {f"{m}/curated_splits" for m in MARKETS}
    streams = {k.to_user_string() for k in graph.get(AssetKey([CATALOG_GROUP, "streams"])).parent_keys}
    assert streams == {f"{m}/decoded_signals" for m in MARKETS}
    job = defs.resolve_job_def("metadata_catalog")
    assert {k.path[0] for k in job.asset_layer.executable_asset_keys} == {CATALOG_GROUP}


def test_a_stage_that_has_not_landed_leaves_no_phantom_dependency() -> None:
    manifest = _manifest()
    without_splits = [s for s in ASSET_STAGES if s.name not in ("curated_splits", "odd_tags")]
    translator = CatalogTranslator(stages=without_splits, markets=("de",))
    spec = translator.get_asset_spec(manifest, "model.ad_metadata.split_assignments", DBT_PROJECT)
    assert spec.key == AssetKey(["catalog", "split_assignments"]) and list(spec.deps) == []
    drives = translator.get_asset_spec(manifest, "model.ad_metadata.drives", DBT_PROJECT)
    assert {d.asset_key.to_user_string() for d in drives.deps} == {
        "catalog/drive_qa_status",
        "de/raw_drive",
        "de/decoded_signals",
        "de/synced_frames",
    }
