-- One row per decoded stream of a drive: rows, time span, rate, status and where its Parquet table is.
select
    market || '/' || drive_id || '/' || stream as stream_key,
    market || '/' || drive_id as drive_key,
    market,
    drive_id,
    stream,
    kind,
    source_file,
    rows,
    rate_hz,
    (end_ns - start_ns) / 1e9 as duration_s,
    status,
    error,
    parquet as parquet_path,
    decoder_version,
    out_of_order_samples
from {{ source('lake', 'decoded_streams') }}
