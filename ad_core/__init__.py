"""Pure cores: log validation, decoding, syncing, quality profiles and rules.

No Dagster here: plain functions over files and tables, fast to test."""
