-- One row per split of a split version of a market: drives, kept and excluded frames, distinct geo cells and the
-- split's share of the version's kept frames.
with assigned as (
    select * from {{ ref('split_assignments') }}
),

cells as (
    select market, split_version, split, count(distinct cell) as geo_cells
    from (select market, split_version, split, unnest(geo_cells) as cell from assigned)
    group by market, split_version, split
),

splits as (
    select
        market,
        split_version,
        split,
        count(*) as drives,
        sum(frames) as frames,
        sum(excluded_frames) as excluded_frames,
        count(distinct manifest_sha256) as manifests,
        min(manifest_sha256) as manifest_sha256
    from assigned
    group by market, split_version, split
)

select
    s.market || '/' || s.split_version || '/' || s.split as split_key,
    s.market,
    s.split_version,
    s.split,
    s.drives,
    s.frames,
    s.excluded_frames,
    coalesce(c.geo_cells, 0) as geo_cells,
    s.frames / nullif(sum(s.frames) over (partition by s.market, s.split_version), 0) as share_of_frames,
    s.manifests,
    s.manifest_sha256
from splits as s
left join cells as c on s.market = c.market and s.split_version = c.split_version and s.split = c.split
