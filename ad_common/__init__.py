"""Bottom layer: settings, markets, the stage table, partitions, the lake layout and atomic IO.

Imports no other ad_* package (the import contract in pyproject.toml enforces the layers)."""
