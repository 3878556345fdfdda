-- QA status per registered drive: the asset-check outcomes its per-drive stages recorded (drive_checks) for the
-- drive's current registered version. failed = a blocking check failed, warned = only warn-level checks failed.
with registry as (
    select market, drive_id, version as drive_version
    from {{ source('lake', 'drive_registry') }}
),

current_checks as (
    select c.*
    from {{ source('lake', 'drive_checks') }} as c
    inner join registry as r
        on c.market = r.market and c.drive_id = r.drive_id and c.drive_version is not distinct from r.drive_version
),

per_drive as (
    select
        market,
        drive_id,
        count(*) as checks,
        count(*) filter (where not passed) as checks_failed,
        count(*) filter (where not passed and blocking) as blocking_failed,
        list(distinct stage order by stage) as stages_checked,
        list(stage || '.' || check_name order by stage, check_name) filter (where not passed) as failed_checks,
        make_timestamp(max(evaluated_at_ns) // 1000) as last_evaluated_at
    from current_checks
    group by market, drive_id
)

select
    r.market || '/' || r.drive_id as drive_key,
    r.market,
    r.drive_id,
    r.drive_version,
    case
        when p.checks is null then 'not_checked'
        when p.blocking_failed > 0 then 'failed'
        when p.checks_failed > 0 then 'warned'
        else 'passed'
    end as qa_status,
    coalesce(p.checks, 0) as checks,
    coalesce(p.checks_failed, 0) as checks_failed,
    coalesce(p.blocking_failed, 0) as blocking_failed,
    coalesce(p.stages_checked, []::varchar[]) as stages_checked,
    coalesce(p.failed_checks, []::varchar[]) as failed_checks,
    p.last_evaluated_at
from registry as r
left join per_drive as p on r.market = p.market and r.drive_id = p.drive_id
