"""The graph the UI shows (assets, checks, groups, partitions, tags, jobs, schedules, sensors) is pinned."""

from __future__ import annotations

import json
from pathlib import Path

from ad_platform.definitions import defs
from tests.platform.graph_snapshot import graph_snapshot

SNAPSHOT = Path(__file__).with_name("graph_snapshot.json")


def test_graph_matches_the_snapshot() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    actual = json.loads(json.dumps(graph_snapshot(defs)))
    changed = sorted(
        f"{section}/{name}"
        for section in expected.keys() | actual.keys()
        for name in expected.get(section, {}).keys() | actual.get(section, {}).keys()
        if expected.get(section, {}).get(name) != actual.get(section, {}).get(name)
    )
    assert not changed, (
        f"the graph changed at {changed}; if deliberate, regenerate {SNAPSHOT.name} "
        "(python -m tests.platform.graph_snapshot) and say why in the commit"
    )
