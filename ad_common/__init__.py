"""Bottom layer: settings, markets, the stage table, partitions, the lake layout, atomic IO and the offline
Great Expectations import.

Imports no other ad_* package (the import contract in pyproject.toml enforces the layers)."""
