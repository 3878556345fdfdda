"""Pure cores: log validation, decoding, syncing, quality profiles and rules.

No Dagster here: plain functions over files and tables, fast to test."""

import warnings

# foxglove-schemas-protobuf (recordings) ships gencode 5.29, which protobuf 6.31 (qai-hub's cap) reads fine but warns
# about once per message type on import: a screenful in every CLI command and run log.
warnings.filterwarnings("ignore", message="Protobuf gencode version", category=UserWarning)
