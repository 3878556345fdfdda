-- One row per drive of a split version of a market: its split, kept and excluded frames, geo cells, ODD tags.
select
    market || '/' || split_version || '/' || drive_id as assignment_key,
    market || '/' || drive_id as drive_key,
    market,
    split_version,
    drive_id,
    split,
    frames,
    excluded_frames,
    geo_cells,
    len(geo_cells) as geo_cell_count,
    road_type,
    time_of_day,
    weather,
    manoeuvre,
    manifest_sha256
from {{ source('lake', 'split_assignments') }}
