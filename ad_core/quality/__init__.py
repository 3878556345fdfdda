"""Data-quality profiling and rules for decoded and synced drives (validated with Great Expectations)."""
