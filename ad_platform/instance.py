"""The Dagster instance of the embedded default (SQLite under ``$DAGSTER_HOME``), for the CLI commands."""

from __future__ import annotations

import os

from dagster import DagsterInstance

from ad_common import settings


def local_instance() -> DagsterInstance:
    """The instance at ``settings.dagster_home()``; a first call writes a ``dagster.yaml`` with telemetry off."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        # Local SQLite instance; no telemetry (these machines reach package registries only).
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()
