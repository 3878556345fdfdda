-- One row per registered drive (its current version): what landed, what was decoded and synced, its derived ODD
-- tags and its QA status.
with registry as (
    select
        market,
        drive_id,
        version as drive_version,
        fingerprint,
        total_bytes,
        make_timestamp(landed_at_ns // 1000) as landed_at,
        make_timestamp(registered_at_ns // 1000) as registered_at
    from {{ source('lake', 'drive_registry') }}
),

raw as (
    select
        market,
        drive_id,
        count(*) as files,
        count(*) filter (where finalized is false) as unfinalized_files,
        (max(end_ns) - min(start_ns)) / 1e9 as duration_s
    from {{ source('lake', 'raw_files') }}
    group by market, drive_id
),

decoded as (
    select
        market,
        drive_id,
        count(*) filter (where status <> 'skipped') as streams_decoded,
        count(*) filter (where status = 'skipped') as streams_not_decoded,
        coalesce(sum(rows) filter (where status <> 'skipped'), 0) as decoded_rows
    from {{ source('lake', 'decoded_streams') }}
    group by market, drive_id
),

synced as (
    select market, drive_id, frames as synced_frames
    from {{ source('lake', 'drive_signal_summaries') }}
),

odd as (
    select market, drive_id, road_type, time_of_day, weather, drive_version as odd_drive_version
    from {{ source('lake', 'drive_odd_tags') }}
)

select
    r.market || '/' || r.drive_id as drive_key,
    r.market,
    r.drive_id,
    r.drive_version,
    r.fingerprint,
    r.total_bytes,
    r.landed_at,
    r.registered_at,
    coalesce(raw.files, 0) as files,
    coalesce(raw.unfinalized_files, 0) as unfinalized_files,
    raw.duration_s,
    coalesce(d.streams_decoded, 0) as streams_decoded,
    coalesce(d.streams_not_decoded, 0) as streams_not_decoded,
    coalesce(d.decoded_rows, 0) as decoded_rows,
    s.synced_frames,
    o.road_type,
    o.time_of_day,
    o.weather,
    -- ODD tags of an older drive version (re-landed, not re-tagged yet) are shown but flagged
    o.odd_drive_version is not distinct from r.drive_version and o.drive_id is not null as odd_tags_current,
    q.qa_status,
    q.failed_checks
from registry as r
left join raw on r.market = raw.market and r.drive_id = raw.drive_id
left join decoded as d on r.market = d.market and r.drive_id = d.drive_id
left join synced as s on r.market = s.market and r.drive_id = s.drive_id
left join odd as o on r.market = o.market and r.drive_id = o.drive_id
left join {{ ref('drive_qa_status') }} as q on r.market = q.market and r.drive_id = q.drive_id
