-- ODD coverage of each market: per tag and value, the drives that have frames with it and the share of the
-- market's tagged frames (frame-level shares of drive_odd_tags, current drive versions only).
with tagged as (
    select o.*
    from {{ source('lake', 'drive_odd_tags') }} as o
    inner join {{ source('lake', 'drive_registry') }} as r
        on o.market = r.market and o.drive_id = r.drive_id and o.drive_version is not distinct from r.version
),

value_frames as (
    {{ odd_value_frames('tagged', ['market', 'drive_id'], 'frames', '{t}_shares') }}
),

coverage as (
    select
        market,
        tag,
        value,
        count(distinct drive_id) filter (where value_frames > 0) as drives,
        round(sum(value_frames))::bigint as frames
    from value_frames
    group by market, tag, value
)

select
    market || '/' || tag || '/' || value as coverage_key,
    market,
    tag,
    value,
    drives,
    frames,
    frames / nullif(sum(frames) over (partition by market, tag), 0) as share_of_frames
from coverage
