"""Serialize what the Dagster UI shows of the graph, so a refactor that changes it fails a test.

Regenerate after a deliberate change: ``python -m tests.platform.graph_snapshot > tests/platform/graph_snapshot.json``
and list the change in the commit message.
"""

from __future__ import annotations

import json
from typing import Any

from dagster import Definitions


def _freshness(policy: Any) -> str | None:
    if policy is None:
        return None

    def hours(window: Any) -> float | None:
        return None if window is None else window.to_timedelta().total_seconds() / 3600

    return f"{type(policy).__name__}(fail={hours(policy.fail_window)} h, warn={hours(policy.warn_window)} h)"


def graph_snapshot(defs: Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    assets: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        spec = node.to_asset_spec() if hasattr(node, "to_asset_spec") else None
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": getattr(node.partitions_def, "name", None) if node.partitions_def else None,
            "tags": dict(sorted(node.tags.items())),
            "kinds": sorted(spec.kinds) if spec is not None else [],
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "code_version": node.code_version,
            "freshness": _freshness(getattr(node, "freshness_policy", None)),
            "observable": node.is_observable,
            "has_description": bool(node.description),
            "checks": sorted(
                f"{c.name}{' (blocking)' if graph.get_check_spec(c).blocking else ''}" for c in node.check_keys
            ),
        }
    repo = defs.get_repository_def()
    jobs = {
        job.name: {
            "assets": sorted(k.to_user_string() for k in job.asset_layer.executable_asset_keys),
            "tags": dict(sorted((k, v) for k, v in job.tags.items() if not k.startswith("dagster-k8s"))),
        }
        for job in sorted(repo.get_all_jobs(), key=lambda j: j.name)
        if not job.name.startswith("__")
    }
    schedules = {s.name: {"cron": s.cron_schedule, "job": s.job_name} for s in repo.schedule_defs}
    sensors = {s.name: sorted(t.job_name for t in s.targets) for s in repo.sensor_defs}
    return {"assets": assets, "jobs": jobs, "schedules": schedules, "sensors": sensors}


if __name__ == "__main__":
    from ad_platform.definitions import defs

    print(json.dumps(graph_snapshot(defs), indent=1, sort_keys=True))
