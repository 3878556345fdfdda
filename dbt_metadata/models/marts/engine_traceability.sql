-- One row per (compiled engine, raw file it descends from): the chain engine -> model version and MLflow run ->
-- split manifest -> drive -> synced frames -> decoded tables -> raw file with its sha256, as recorded when the
-- engine was built (engine_lineage), beside the engine's parity and whether its model version is approved NOW,
-- read from the approval audit trail (model_approvals: the latest event that names the version).
with approval_events as (
    select model, version, at_ns, case action when 'approve' then 'approved' else 'revoked' end as status
    from {{ source('lake', 'model_approvals') }}
    union all
    -- the version an event moved the alias away from (approve) or back to (rollback)
    select model, previous_version as version, at_ns, case action when 'approve' then 'superseded' else 'approved' end
    from {{ source('lake', 'model_approvals') }}
    where previous_version is not null
),

approval_now as (
    select model, version, arg_max(status, at_ns) as approval_status, make_timestamp(max(at_ns) // 1000) as status_since
    from approval_events
    group by model, version
)

select
    l.engine_sha256,
    l.target,
    e.market,
    e.parity_passed,
    e.built_at,
    l.model_name,
    l.model_version,
    coalesce(a.approval_status, 'never_approved') as approval_status,
    a.status_since,
    l.mlflow_run_id,
    l.manifest_sha256,
    l.drive_id,
    l.drive_version,
    l.split,
    l.frames,
    l.synced_path,
    l.synced_sha256,
    l.decoded_path,
    l.decoder_versions,
    l.dbc_files,
    l.sensor_profile,
    l.raw_file,
    l.raw_kind,
    l.raw_size_bytes,
    l.raw_sha256
from {{ source('lake', 'engine_lineage') }} as l
inner join {{ source('lake', 'engines') }} as e on l.engine_sha256 = e.engine_sha256 and l.target = e.target
left join approval_now as a on l.model_name = a.model and l.model_version = a.version
