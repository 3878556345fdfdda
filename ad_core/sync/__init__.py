"""Multi-sensor time sync: map every decoded stream of a drive onto the front camera's frame timestamps.

Pure and Dagster-free; the ``synced_frames`` asset calls :func:`sync_drive` once per drive. See docs/sync.md.
"""

from ad_core.sync.config import GridReference, ReferenceSpec, StreamSpec, SyncConfig
from ad_core.sync.core import NO_SAMPLE_NS, Method, SampleMatch, match_samples, sync_arrays
from ad_core.sync.drive import sync_drive
from ad_core.sync.report import StreamSyncStats, SyncReport

__all__ = [
    "NO_SAMPLE_NS",
    "GridReference",
    "Method",
    "ReferenceSpec",
    "SampleMatch",
    "StreamSpec",
    "StreamSyncStats",
    "SyncConfig",
    "SyncReport",
    "match_samples",
    "sync_arrays",
    "sync_drive",
]
