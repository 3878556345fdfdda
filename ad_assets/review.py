"""Review in Label Studio (docs/review.md): a split version's frames out as a review project, verdicts back.

``<m>/review_project`` pushes the stratified sample and every flagged frame of the market's split version as
tasks (idempotent: a task per ``<drive>/<frame>``, a project per split version). ``<m>/review_verdicts`` reads
the answered tasks into ``REVIEW_VERDICTS`` records; ``review_verdicts_sensor`` materializes it when answers
change, and the next ``curated_splits`` excludes what they reject.
"""

import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, Config, DataVersion, Definitions, MaterializeResult, MetadataValue, asset
from pydantic import Field

from ad_assets.curated import read_lake_frame, read_lake_parquet, read_split_manifest
from ad_assets.stage_asset import stage_asset_args
from ad_common.lake_layout import (
    DRIVE_CHECKS,
    REVIEW_VERDICTS,
    review_project_path,
)
from ad_common.stages import REVIEW_PROJECT, REVIEW_VERDICTS_STAGE
from ad_core.curate.manifest import REJECT, manifest_bytes, sha256_bytes
from ad_core.curate.review_tasks import (
    TaskAnswer,
    flagged_frames,
    label_config,
    project_title,
    review_items,
    task_data,
    verdict_records,
)
from ad_resources.label_studio import LabelStudioClient, LabelStudioResource
from ad_resources.lake import Lake

IMPORT_BATCH = 50  # tasks per import request (each carries its JPEG)


class ReviewSettings(Config):
    split_version: str = Field(default="v1", description="The split version to review.")
    frames_per_odd_value: int = Field(default=3, description="Sampled frames per split and ODD tag value.")
    max_flagged_frames: int = Field(
        default=200, description="Frames a quality check flagged that are pushed at most (reproducibly chosen)."
    )


def _failed_drive_checks(lake: Lake, market: str, drives: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {d: [] for d in drives}
    for path in lake.list_files(DRIVE_CHECKS.market_folder(market), ".parquet"):
        drive = path.rsplit("/", 1)[1].split("@", 1)[0]
        if drive not in drives:
            continue
        table = read_lake_parquet(lake, path, columns=["stage", "check_name", "passed", "severity"])
        for r in table.to_pylist() if table is not None else []:
            if not r["passed"]:
                out[drive].append(f"{r['stage']}: {r['check_name']} failed ({r['severity']})")
    return out


def answers(client: LabelStudioClient, project_id: int) -> list[TaskAnswer]:
    """Each answered task with its latest (not cancelled) annotation and the reviewer's e-mail."""
    tasks = client.tasks(project_id)
    users = client.users() if any(t.annotations for t in tasks) else {}
    out = []
    for task in tasks:
        done = [a for a in task.annotations if not a.was_cancelled]
        if not done:
            continue
        latest = max(done, key=lambda a: (a.updated_at, a.id))
        reviewer = users.get(latest.completed_by or -1, str(latest.completed_by))
        out.append(TaskAnswer(task.id, task.data, latest.id, reviewer, latest.updated_at, latest.result))
    return out


def answers_fingerprint(items: list[TaskAnswer]) -> str:
    """What changes when a reviewer answers or edits: the sensor compares it with its cursor."""
    return sha256_bytes(repr(sorted((a.task_id, a.annotation_id, a.updated_at) for a in items)).encode())


def definitions(market: str) -> Definitions:
    @asset(
        **stage_asset_args(REVIEW_PROJECT, market),
        kinds={"labelstudio"},
        description=f"The {market.upper()} split version as a Label Studio review project: a stratified sample "
        "(per split and ODD value) plus every frame a quality check flagged, each task with the frame, drive, "
        "market, ODD tags and check results; reviewers accept or reject with a reason and a note. Re-pushing adds "
        "only new frames (docs/review.md).",
    )
    def review_project(
        context: AssetExecutionContext, config: ReviewSettings, lake: Lake, label_studio: LabelStudioResource
    ) -> MaterializeResult:
        started = time.monotonic()
        manifest = read_split_manifest(lake, market, config.split_version)
        drives = set(manifest.column("drive_id").to_pylist())
        synced_paths = dict(
            zip(manifest.column("drive_id").to_pylist(), manifest.column("synced_path").to_pylist(), strict=True)
        )
        flagged = {
            d: flagged_frames(table) for d in sorted(drives) if (table := read_lake_parquet(lake, synced_paths[d]))
        }
        items, capped = review_items(
            manifest, config.split_version, flagged, config.frames_per_odd_value, config.max_flagged_frames
        )
        failed_checks = _failed_drive_checks(lake, market, drives)
        client = label_studio.client(context.log.info)
        title = project_title(market, config.split_version)
        project = client.project_by_title(title) or client.create_project(
            title,
            f"Review of the {market.upper()} curated split {config.split_version} (manifest "
            f"{sha256_bytes(manifest_bytes(manifest))[:12]}). Accept or reject each frame; a rejection needs a reason.",
            label_config(),
        )
        existing = {t.data.get("review_key") for t in client.tasks(project.id)}
        new = [i for i in items if i.key not in existing]
        pushed = 0
        for first in range(0, len(new), IMPORT_BATCH):
            batch = new[first : first + IMPORT_BATCH]
            pushed += client.import_tasks(
                project.id,
                [
                    task_data(
                        i,
                        market,
                        config.split_version,
                        read_lake_frame(lake, i.camera_path, i.frame_index),
                        failed_checks.get(i.drive_id, []),
                    )
                    for i in batch
                ],
            )
        project_url = f"{client.url}/projects/{project.id}/data"
        record: dict[str, Any] = {
            "server": client.url,
            "project_id": project.id,
            "title": title,
            "url": project_url,
            "tasks": len(existing) + pushed,
        }
        lake.write_json(review_project_path(market, config.split_version), record)
        seconds = time.monotonic() - started
        context.log.info(f"{title}: {pushed} new task(s), {len(existing)} already there: {project_url}")
        return MaterializeResult(
            data_version=DataVersion(f"{client.url}#{project.id}:{record['tasks']}"),
            metadata={
                "project_url": MetadataValue.url(project_url),
                "project_id": project.id,
                "tasks": record["tasks"],
                "tasks_pushed": pushed,
                "frames_sampled": sum(1 for i in items if any(not s.startswith("flagged") for s in i.sampled_for)),
                "frames_flagged": sum(len(f) for f in flagged.values()),
                "flagged_left_out_by_cap": capped,
                "seconds": round(seconds, 2),
            },
        )

    @asset(
        **stage_asset_args(REVIEW_VERDICTS_STAGE, market),
        kinds={"parquet"},
        description=f"The reviewers' verdicts of the {market.upper()} review projects (who, when, accept or "
        "reject, reason, note, task id), one row per answered task; materialized by review_verdicts_sensor. The "
        "next curated split excludes rejected frames (whole drives for the drive-level reason).",
    )
    def review_verdicts(
        context: AssetExecutionContext, lake: Lake, label_studio: LabelStudioResource
    ) -> MaterializeResult:
        started = time.monotonic()
        projects = lake.list_files(f"review/{market}/projects", ".json")
        if not projects:
            raise FileNotFoundError(
                f"no review project of {market.upper()} in {lake.uri(f'review/{market}/projects')}: materialize "
                f"{REVIEW_PROJECT.key(market).to_user_string()} first"
            )
        client = label_studio.client(context.log.info)
        tables: dict[str, pa.Table] = {}
        for path in projects:  # everything is read before anything is written: a failure changes nothing
            project = lake.read_json(path)
            version = path.rsplit("/", 1)[1].removesuffix(".json")
            tables[version] = verdict_records(
                answers(client, int(project["project_id"])), market, version, int(project["project_id"]), client.url
            )
        for version, table in tables.items():
            lake.write_table(REVIEW_VERDICTS.path(market, version), table)
        rows = pa.concat_tables(tables.values())
        rejected = rows.filter(pc.equal(rows.column("verdict"), REJECT))
        whole = sorted(set(rejected.filter(rejected.column("whole_drive")).column("drive_id").to_pylist()))
        context.log.info(f"{market.upper()}: {rows.num_rows} verdict(s), {rejected.num_rows} rejection(s)")
        return MaterializeResult(
            data_version=DataVersion(sha256_bytes(manifest_bytes(rows))),
            metadata={
                "dagster/row_count": rows.num_rows,
                "rejected": rejected.num_rows,
                "accepted": rows.num_rows - rejected.num_rows,
                "whole_drives_rejected": MetadataValue.json(whole),
                "reviewers": MetadataValue.json(sorted(set(rows.column("reviewer").to_pylist()))),
                "paths": MetadataValue.json([lake.uri(REVIEW_VERDICTS.path(market, v)) for v in tables]),
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    return Definitions(assets=[review_project, review_verdicts])
