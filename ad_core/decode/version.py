"""The decoder's version: the decoded_signals asset's code_version (a change marks decoded drives stale)."""

# 1.1: float columns BYTE_STREAM_SPLIT, frame tables uncompressed. 1.1.1: an unreadable channel is left out of
# its group (with a note in the stream report) instead of failing the whole group.
DECODER_VERSION = "1.1.1"
