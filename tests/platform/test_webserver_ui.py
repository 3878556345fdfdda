"""The Dagster UI for real: `dagster-webserver` and `dagster-daemon` as processes on a small materialized state.

Proves over HTTP what a user sees and does in the UI: the lineage (every edge of the Definitions' asset graph),
each market's drive partitions, a per-market backfill launched through GraphQL and run to success by the daemon
(only that market's drives), and the rendered asset graph in headless Chromium (screenshot kept).

The screenshot goes to `.state/screenshots/asset-graph.png` (git-ignored); with `AD_UPDATE_DOCS_IMG=1` it also
replaces `docs/img/asset-graph.png`, so a test run never dirties the checkout by accident.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from dagster import DagsterInstance

from ad_common.markets import MARKETS
from ad_platform.definitions import build_definitions
from ad_platform.runner import run_once
from fleetgen import generate_fleet
from tests.support import REPO_ROOT

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO_ROOT / ".state" / "screenshots" / "asset-graph.png"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "img" / "asset-graph.png"
DRIVES = {"de": 2, "jp": 1}  # two DE drives: the DE backfill must run both and nothing of JP
# Dagster 1.13: the backfill daemon loops every 30 s; a backfill needs 2-3 loops (submit, then mark complete).
BACKFILL_TIMEOUT_S = 180
# The instance the processes share: no telemetry, no first-visit newsletter modal over the graph, and a
# queue that is checked every second (the default 5 s only adds waiting).
DAGSTER_YAML = """\
telemetry:
  enabled: false
nux:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""


@dataclass
class Ui:
    url: str
    state: Path
    drives: dict[str, list[str]]
    logs: Callable[[], str]
    start_daemon: Callable[[], None]

    def gql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> str:
    """The console script beside this interpreter (the venv's), not whatever is first on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started (webserver/daemon plus their code-server children), then kill."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _wait(what: str, check: Callable[[], Any], timeout_s: float, logs: Callable[[], str], every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except (requests.ConnectionError, requests.Timeout):
            result = None
        if result:
            return result
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs()}")


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    state = tmp_path_factory.mktemp("ui_state")
    home = state / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AD_", "DAGSTER_HOME"))}
    env.update(AD_STATE_DIR=str(state), DAGSTER_HOME=str(home))

    # The state is made in-process first (the run_once path of `make demo`), then served.
    drives: dict[str, list[str]] = {}
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH"):
            mp.delenv(var, raising=False)
        mp.setenv("AD_STATE_DIR", str(state))
        mp.setenv("DAGSTER_HOME", str(home))
        for seed, (market, count) in enumerate(DRIVES.items()):
            drives[market] = sorted(p.name for p in generate_fleet(state / "landing", [market], count, 0.4, seed=seed))
        with DagsterInstance.from_config(str(home)) as instance:
            outcomes = run_once(build_definitions(), instance, state_dir=state, log=lambda _: None, settle_s=0)
    assert sorted(o.status for o in outcomes) == ["materialized"] * sum(DRIVES.values()), outcomes

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    log_paths = {name: state / f"{name}.log" for name in ("webserver", "daemon")}

    def logs() -> str:
        return "\n".join(
            f"--- {name} (last 3000 chars) ---\n{path.read_text(errors='replace')[-3000:]}"
            for name, path in log_paths.items()
            if path.exists()
        )

    def start(name: str, argv: list[str]) -> None:
        with log_paths[name].open("wb") as out:
            # Own session: _stop ends the whole group (the processes spawn gRPC code servers).
            procs[name] = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    try:
        start("webserver", [_tool("dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"])
        _wait("/server_info", lambda: requests.get(f"{url}/server_info", timeout=5).ok, 90, logs)
        daemon = [_tool("dagster-daemon"), "run", "-w", "workspace.yaml"]
        server = Ui(url=url, state=state, drives=drives, logs=logs, start_daemon=lambda: start("daemon", daemon))
        # The landing sensor is on by default; the backfill test asserts exactly what one backfill launches, so
        # the sensor is stopped (through the API, as a user would) before the daemon that would tick it starts.
        repo = _wait("the code location", lambda: _repository(server), 60, logs)
        (sensor,) = [s for s in repo["sensors"] if s["name"] == "landing_zone_sensor"]
        stopped = server.gql(
            "mutation($id: String) { stopSensor(id: $id) { __typename "
            "... on StopSensorMutationResult { instigationState { status } } } }",
            id=sensor["sensorState"]["id"],
        )
        assert stopped["stopSensor"]["instigationState"]["status"] == "STOPPED", stopped
        yield server
    finally:
        for proc in reversed(list(procs.values())):
            _stop(proc)


def _repository(ui: Ui) -> dict[str, Any] | None:
    data = ui.gql(
        "{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name "
        "sensors { name sensorState { id status } } } } } }"
    )
    nodes = data["repositoriesOrError"].get("nodes") or []
    return nodes[0] if nodes else None


def _asset_nodes(ui: Ui) -> list[dict[str, Any]]:
    return ui.gql(
        "{ assetNodes { assetKey { path } dependencyKeys { path } jobNames partitionDefinition { name type } } }"
    )["assetNodes"]


def _materializations(ui: Ui, path: list[str]) -> list[dict[str, Any]]:
    data = ui.gql(
        "query($k: AssetKeyInput!) { assetOrError(assetKey: $k) { __typename "
        "... on Asset { assetMaterializations(limit: 1000) { runId partition } } } }",
        k={"path": path},
    )
    return data["assetOrError"]["assetMaterializations"]


def test_lineage_edges_in_graphql_match_the_definitions(ui: Ui) -> None:
    served = {
        (tuple(dep["path"]), tuple(node["assetKey"]["path"]))
        for node in _asset_nodes(ui)
        for dep in node["dependencyKeys"]
    }
    graph = build_definitions().resolve_asset_graph()
    expected = {(tuple(parent.path), tuple(node.key.path)) for node in graph.asset_nodes for parent in node.parent_keys}
    assert expected and served == expected
    for market in ("de", "us", "cn", "jp"):  # the core edges, named explicitly
        assert ((market, "raw_drive"), (market, "decoded_signals")) in served
        assert ((market, "vehicle_dbc"), (market, "decoded_signals")) in served


def test_each_market_shows_only_its_own_drive_partitions(ui: Ui) -> None:
    for market, drives in ui.drives.items():
        data = ui.gql(
            "query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { __typename ... on AssetNode { "
            "partitionKeys partitionDefinition { name } "
            "partitionStats { numMaterialized numPartitions numFailed } } } }",
            k={"path": [market, "raw_drive"]},
        )["assetNodeOrError"]
        assert data["partitionDefinition"]["name"] == f"drives_{market}"
        assert sorted(data["partitionKeys"]) == drives
        assert data["partitionStats"] == {"numMaterialized": len(drives), "numPartitions": len(drives), "numFailed": 0}


def test_a_market_backfill_launched_through_graphql_runs_only_that_markets_drives(ui: Ui) -> None:
    market, other = "de", "jp"
    # What the UI's "Materialize" on a market's drive assets does: every asset of the market's ingest job that
    # is partitioned by its drives (derived from the graph: later stages join without editing this test).
    selection = [
        {"path": node["assetKey"]["path"]}
        for node in _asset_nodes(ui)
        if f"ingest_{market}" in node["jobNames"]
        and (node["partitionDefinition"] or {}).get("name") == f"drives_{market}"
    ]
    assert {"path": [market, "raw_drive"]} in selection and {"path": [market, "decoded_signals"]} in selection
    other_before = len(_materializations(ui, [other, "raw_drive"]))

    launched = ui.gql(
        "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename "
        "... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on Error { message } } }",
        p={"assetSelection": selection, "partitionNames": ui.drives[market], "title": f"re-ingest {market}"},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    # Started only now: its backfill loop runs every 30 s, and its first pass picks the backfill up at once.
    ui.start_daemon()

    def finished() -> dict[str, Any] | None:
        backfill = ui.gql(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { "
            "status partitionNames runs { runId status tags { key value } } } } }",
            id=backfill_id,
        )["partitionBackfillOrError"]
        return backfill if backfill["status"] not in ("REQUESTED", "CANCELING") else None

    started = time.monotonic()
    backfill = _wait(f"backfill {backfill_id} to finish", finished, BACKFILL_TIMEOUT_S, ui.logs, every_s=2)
    print(f"backfill {backfill_id} finished in {time.monotonic() - started:.0f} s")  # visible with -s
    assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, ui.logs())
    assert sorted(backfill["partitionNames"]) == ui.drives[market]
    runs = backfill["runs"]
    assert runs and all(run["status"] == "SUCCESS" for run in runs), runs
    run_ids = {run["runId"] for run in runs}

    for path in ([market, "raw_drive"], [market, "decoded_signals"]):
        from_backfill = sorted(m["partition"] for m in _materializations(ui, path) if m["runId"] in run_ids)
        assert from_backfill == ui.drives[market], (path, from_backfill)
    # Nothing of the other market ran: no new materialization, no run of ours touched its partitions.
    assert len(_materializations(ui, [other, "raw_drive"])) == other_before
    assert not any(m["runId"] in run_ids for m in _materializations(ui, [other, "decoded_signals"]))


def test_asset_graph_renders_in_headless_chromium(ui: Ui) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's `chromium` package (.ci/run does when it is missing)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright (pinned in pyproject)")

    market_nodes = [n for n in _asset_nodes(ui) if n["assetKey"]["path"][0] in MARKETS]
    markets = {node["assetKey"]["path"][0] for node in market_nodes}
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        # Debian's Chromium, never a Playwright-downloaded browser; a fresh profile every run.
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            # Tall enough that the 4-market graph renders full nodes (with partition health), not compact ones.
            viewport={"width": 2400, "height": 4400},
            timeout=60_000,
        )
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            # One group's lineage at a time: the global graph of ~80 assets renders its nodes compact (no titles).
            text, counts = "", {}
            for group, names in (("raw", ("raw_drive", "vehicle_dbc")), ("decoded", ("decoded_signals",))):
                page.goto(f"{ui.url}/locations/ad_fleet/asset-groups/{group}", wait_until="domcontentloaded")
                for name in names:  # every node shows once per market (node titles are the last key component)
                    page.get_by_text(name, exact=True).first.wait_for()
                page.wait_for_function("() => !document.body.innerText.includes('Loading')", timeout=30_000)
                page.wait_for_timeout(500)
                if group == "raw":
                    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(SCREENSHOT))
                text += page.inner_text("body")
                counts[names[0]] = page.get_by_text(names[0], exact=True).count()
        finally:
            context.close()

    assert SCREENSHOT.stat().st_size > 20_000  # a rendered graph, not a blank page
    if os.environ.get("AD_UPDATE_DOCS_IMG") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)
    for name in ("raw_drive", "decoded_signals", "vehicle_dbc"):
        assert name in text
    assert counts == {"raw_drive": len(markets), "decoded_signals": len(markets)}, counts
