"""Where state lives. Every location is set by an environment variable; the defaults keep everything in the
git-ignored ``.state/`` folder of the checkout (the embedded default: no services needed)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def state_dir() -> Path:
    """AD_STATE_DIR: Dagster home, DuckDB catalog, CLI cursors. Default ``<repo>/.state``."""
    return Path(os.environ.get("AD_STATE_DIR", REPO_ROOT / ".state")).resolve()


def landing_dir() -> Path:
    """AD_LANDING_DIR: where drives land as ``<market>/<drive_id>/<files>``. Default ``$AD_STATE_DIR/landing``."""
    return Path(os.environ.get("AD_LANDING_DIR", state_dir() / "landing")).resolve()


def lake_dir() -> Path:
    """AD_LAKE_DIR: the Parquet lake, drive registry and per-drive catalog records. Default ``$AD_STATE_DIR/lake``."""
    return Path(os.environ.get("AD_LAKE_DIR", state_dir() / "lake")).resolve()


def catalog_path() -> Path:
    """AD_CATALOG_PATH: the DuckDB catalog file. Default ``$AD_STATE_DIR/catalog.duckdb``."""
    return Path(os.environ.get("AD_CATALOG_PATH", state_dir() / "catalog.duckdb")).resolve()


def metadata_catalog_path() -> Path:
    """AD_METADATA_CATALOG_PATH: the DuckDB file the dbt metadata catalog (dbt_metadata/) builds its models into.
    Default ``$AD_STATE_DIR/metadata.duckdb``."""
    return Path(os.environ.get("AD_METADATA_CATALOG_PATH", state_dir() / "metadata.duckdb")).resolve()


def dagster_home() -> Path:
    """DAGSTER_HOME: the local (SQLite) Dagster instance. Default ``$AD_STATE_DIR/dagster_home``."""
    return Path(os.environ.get("DAGSTER_HOME", state_dir() / "dagster_home")).resolve()
