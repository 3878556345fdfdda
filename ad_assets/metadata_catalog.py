"""The dbt metadata catalog (``dbt_metadata/``) as Dagster assets: one asset per dbt model (group ``catalog``),
one asset check per dbt test, downstream of the stage assets whose records the models read.

The dbt project reads the lake's catalog records (sources generated from the lake layout by
``ad_resources/dbt_sources.py``) under the root that the ``metadata_catalog`` resource gives it (the local lake,
or the local mirror of an S3 lake), and builds its models into that resource's DuckDB file. Each run is one
``dbt build``: models, then their tests; a failing test fails its asset check and skips the models below it.

The manifest is prepared at build time (``make dbt-manifest``, the image's ``dbt parse``); importing this module
parses the project only when the manifest is missing or older than the project's files (a fresh checkout).
"""

import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import AssetDep, AssetExecutionContext, AssetKey, AssetSpec, Definitions
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets

from ad_common.markets import MARKETS
from ad_common.stages import ASSET_STAGES, STAGE_TAG, AssetStage, k8s_op_tags
from ad_resources.catalog import MetadataCatalog
from ad_resources.dbt_sources import DBT_PROJECT_DIR

CATALOG_GROUP = "catalog"
CATALOG_POD = "catalog"  # stage_specs: dbt on DuckDB, one writer (the Helm run queue allows one at a time)
DBT_PROJECT = DbtProject(project_dir=DBT_PROJECT_DIR)
_PROJECT_FILES = ("dbt_project.yml", "profiles.yml", "models", "macros", "tests")


def _newest_project_file(project_dir: Path) -> float:
    paths = [project_dir / name for name in _PROJECT_FILES]
    files = [p for path in paths if path.exists() for p in ([path] if path.is_file() else path.rglob("*"))]
    return max((p.stat().st_mtime for p in files if p.is_file()), default=0.0)


def prepare_manifest(project: DbtProject = DBT_PROJECT) -> Path:
    """``dbt parse`` (offline) when the manifest is missing or older than the project's files; its path."""
    manifest = project.manifest_path
    if not manifest.exists() or manifest.stat().st_mtime < _newest_project_file(project.project_dir):
        # The venv's own dbt, as the resource uses it: PATH may lack the venv's bin folder.
        dbt_cli_resource(project).cli(["parse", "--quiet"], target_path=project.target_path).wait()
    return manifest


def dbt_cli_resource(project: DbtProject = DBT_PROJECT) -> DbtCliResource:
    """The ``dbt`` resource: the venv's own dbt executable (PATH may lack the venv's bin folder)."""
    beside = Path(sys.executable).parent / "dbt"
    return DbtCliResource(project_dir=project, dbt_executable=str(beside) if beside.exists() else "dbt")


class CatalogTranslator(DagsterDbtTranslator):
    """dbt models -> ``catalog/<model>`` in group ``catalog``; a model reading a lake source depends on the
    per-market assets of the stages that write that record (the source's ``meta.upstream_stages``).

    Stage names missing from ``stages`` are skipped, so a record whose stage has not landed yet (or was
    removed) leaves the model without that dependency instead of a phantom asset.
    """

    def __init__(self, stages: Iterable[AssetStage] = ASSET_STAGES, markets: Sequence[str] = MARKETS) -> None:
        super().__init__(DagsterDbtTranslatorSettings(enable_asset_checks=True))
        self._stages = {s.name: s for s in stages}
        self._markets = tuple(markets)

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return AssetKey([dbt_resource_props["source_name"], dbt_resource_props["name"]])
        return AssetKey([CATALOG_GROUP, dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return CATALOG_GROUP

    def get_tags(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, str]:
        return {**super().get_tags(dbt_resource_props), STAGE_TAG: CATALOG_POD}

    def source_upstream_keys(self, source_props: Mapping[str, Any]) -> list[AssetKey]:
        names = (source_props.get("meta") or {}).get("upstream_stages") or []
        return [self._stages[n].key(m) for n in names if n in self._stages for m in self._markets]

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if not unique_id.startswith("model."):
            return spec
        keys: list[AssetKey] = []
        for parent in manifest["nodes"][unique_id]["depends_on"]["nodes"]:
            if parent.startswith("source."):
                keys += self.source_upstream_keys(manifest["sources"][parent])
            else:
                keys.append(self.get_asset_spec(manifest, parent, project).key)
        return spec.replace_attributes(deps=[AssetDep(k) for k in dict.fromkeys(keys)])


@dbt_assets(
    manifest=prepare_manifest(),
    project=DBT_PROJECT,
    dagster_dbt_translator=CatalogTranslator(),
    name="dbt_metadata_catalog",
    op_tags=k8s_op_tags(CATALOG_POD),
)
def dbt_metadata_catalog(
    context: AssetExecutionContext, dbt: DbtCliResource, metadata_catalog: MetadataCatalog
) -> Iterator[Any]:
    """``dbt build`` of the selected models and their tests over the lake's catalog records."""
    with metadata_catalog.dbt_vars() as dbt_vars:
        yield from dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context).stream()


def definitions() -> Definitions:
    return Definitions(assets=[dbt_metadata_catalog])
