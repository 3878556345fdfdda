-- ODD coverage of each split: per split version, split, tag and value, the split's kept frames with that value,
-- its share of the split and of the whole version (the market), and the difference the odd_quotas check bounds.
-- Frame-level shares come from drive_odd_tags; a drive without them counts all its frames for its split tag.
with assigned as (
    select
        a.*,
        {%- for tag in var('odd_tags') %}
        coalesce(o.{{ tag }}_shares, json_object(a.{{ tag }}, 1.0)::varchar) as {{ tag }}_split_shares{{ "," if not loop.last }}
        {%- endfor %}
    from {{ ref('split_assignments') }} as a
    left join {{ source('lake', 'drive_odd_tags') }} as o on a.market = o.market and a.drive_id = o.drive_id
),

value_frames as (
    {{ odd_value_frames('assigned', ['market', 'split_version', 'split', 'drive_id'], 'frames', '{t}_split_shares') }}
),

coverage as (
    select
        market,
        split_version,
        split,
        tag,
        value,
        count(distinct drive_id) filter (where value_frames > 0) as drives,
        sum(value_frames) as value_frames
    from value_frames
    group by market, split_version, split, tag, value
),

shares as (
    select
        *,
        value_frames / nullif(sum(value_frames) over (partition by market, split_version, split, tag), 0)
            as share_of_split,
        sum(value_frames) over (partition by market, split_version, tag, value)
        / nullif(sum(value_frames) over (partition by market, split_version, tag), 0) as share_of_market
    from coverage
)

select
    market || '/' || split_version || '/' || split || '/' || tag || '/' || value as coverage_key,
    market,
    split_version,
    split,
    tag,
    value,
    drives,
    round(value_frames)::bigint as frames,
    share_of_split,
    share_of_market,
    share_of_split - share_of_market as share_deviation
from shares
