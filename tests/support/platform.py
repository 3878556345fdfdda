"""One local platform for tests: landing zone, lake and catalog under a ``.state`` folder, and a real instance.

The folder starts with a dot on purpose: the embedded default lives in ``<repo>/.state``, and a path filter
that looks at absolute paths instead of lake-relative ones once emptied every listing there.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterInstance

from ad_resources.catalog import DuckDBCatalog
from ad_resources.lake import LocalLake
from ad_resources.landing import LocalLandingZone


@dataclass
class LocalPlatform:
    state: Path
    instance: DagsterInstance

    @property
    def landing_root(self) -> Path:
        return self.state / "landing"

    @property
    def landing(self) -> LocalLandingZone:
        return LocalLandingZone(root=str(self.landing_root))

    @property
    def lake(self) -> LocalLake:
        return LocalLake(root=str(self.state / "lake"))

    @property
    def catalog(self) -> DuckDBCatalog:
        return DuckDBCatalog(path=str(self.state / "catalog.duckdb"), lake=self.lake)

    @property
    def resources(self) -> dict[str, Any]:
        return {"landing": self.landing, "lake": self.lake, "catalog": self.catalog}

    def land(self, market: str, drive: str, *sources: Path, rename: dict[str, str] | None = None) -> Path:
        """Copy files into ``<landing>/<market>/<drive>/`` and register the drive's partition."""
        folder = self.landing_root / market / drive
        folder.mkdir(parents=True, exist_ok=True)
        for source in sources:
            shutil.copy(source, folder / (rename or {}).get(source.name, source.name))
        self.instance.add_dynamic_partitions(f"drives_{market}", [drive])
        return folder
