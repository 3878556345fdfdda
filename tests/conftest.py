"""Shared fixtures. Real-data tests use ../shared/data beside the checkout and skip with a reason where absent."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import instance_for_test

from ad_resources.label_studio import LABEL_STUDIO_VERSION, Launch, LocalLabelStudio, LocalServer
from tests.support.platform import LocalPlatform

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (the ../shared/data folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def local_platform(tmp_path: Path) -> Iterator[LocalPlatform]:
    """Landing zone + lake + DuckDB catalog under ``<tmp>/.state`` and a real (temporary) Dagster instance."""
    with instance_for_test() as instance:
        yield LocalPlatform(tmp_path / ".state", instance)


@pytest.fixture(scope="session")
def de_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 30 s DE drives, synced into a lake (shared by the training tests; read-only for them)."""
    from tests.support.splits import synced_fleet

    return synced_fleet(tmp_path_factory.mktemp("de_fleet"), "de", drives=3, minutes=0.5)


@pytest.fixture(scope="session")
def label_studio_launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch | str]:
    """Starts a real Label Studio on loopback (SQLite under a temporary folder) from ``.venv-review`` without
    waiting: a fixture that builds a fleet first takes this one, so the server's start overlaps it. Never
    installs it (``make review-venv`` does, ``.ci/run`` builds it beside the demo): without it, the reason."""
    home = LocalLabelStudio(tmp_path_factory.mktemp("label-studio"))
    if not home.binary.is_file():
        yield f"{home.binary} not found: `make review-venv` installs label-studio=={LABEL_STUDIO_VERSION}"
        return
    launch = home.launch(log=lambda line: print(line))
    yield launch
    if launch.process.poll() is None:
        os.killpg(launch.process.pid, signal.SIGTERM)
        launch.process.wait(timeout=60)


@pytest.fixture(scope="session")
def label_studio_server(label_studio_launch: Launch | str) -> LocalServer:
    if isinstance(label_studio_launch, str):
        pytest.skip(label_studio_launch)
    return label_studio_launch.wait()
