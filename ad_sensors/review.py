"""review_verdicts_sensor: polls each market's Label Studio review projects and materializes
``<m>/review_verdicts`` when the answers changed (docs/review.md).

The cursor holds, per market, a fingerprint of the answered tasks (task, annotation, last update): polling
again with nothing new requests nothing, and the run key makes a repeated request a no-op. An unreachable
server skips the tick with the reason and leaves the cursor as it was, so nothing is lost; the local server
is never started by the sensor (only by ``make review`` or an asset run).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ad_assets.review import answers, answers_fingerprint
from ad_common.stages import REVIEW_VERDICTS_STAGE
from ad_resources.label_studio import LabelStudioError, LabelStudioResource
from ad_resources.lake import Lake

SENSOR_NAME = "review_verdicts_sensor"


def evaluate_review(
    context: SensorEvaluationContext, lake: Lake, label_studio: LabelStudioResource, markets: Sequence[str]
) -> SensorResult | SkipReason:
    projects = {m: lake.list_files(f"review/{m}/projects", ".json") for m in markets}
    projects = {m: p for m, p in projects.items() if p}
    if not projects:
        return SkipReason("no review project pushed yet (materialize <market>/review_project: `make review`)")
    try:
        client = label_studio.client_if_running()
        if client is None:
            return SkipReason("the local Label Studio is not running (start it with `make review`)")
        seen = {
            m: answers_fingerprint([a for p in paths for a in answers(client, int(lake.read_json(p)["project_id"]))])
            for m, paths in projects.items()
        }
    except LabelStudioError as exc:
        context.log.warning(str(exc))
        return SkipReason(f"cursor unchanged: {exc}")
    cursor = json.loads(context.cursor) if context.cursor else {}
    changed = sorted(m for m, fp in seen.items() if cursor.get(m) != fp)
    return SensorResult(
        run_requests=[
            RunRequest(run_key=f"{m}@{seen[m]}", asset_selection=[REVIEW_VERDICTS_STAGE.key(m)]) for m in changed
        ],
        cursor=json.dumps({**cursor, **seen}, sort_keys=True),
        skip_reason=None if changed else SkipReason("no new or edited answers"),
    )


def build_review_sensor(markets: Sequence[str]) -> SensorDefinition:
    @sensor(
        name=SENSOR_NAME,
        asset_selection=AssetSelection.assets(*(REVIEW_VERDICTS_STAGE.key(m) for m in markets)),
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="Polls the Label Studio review projects; when reviewers answered or edited tasks, "
        "materializes that market's review_verdicts (the next curated split applies them).",
    )
    def review_verdicts_sensor(
        context: SensorEvaluationContext, lake: Lake, label_studio: LabelStudioResource
    ) -> SensorResult | SkipReason:
        return evaluate_review(context, lake, label_studio, markets)

    return review_verdicts_sensor
