"""The sync's version: the synced_frames asset's code_version (a change marks synced drives stale) and part of a
trained model's code version. Bump it when sync_drive writes other frames for the same decoded drive."""

SYNC_VERSION = "1.0.0"
