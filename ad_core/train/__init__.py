"""Steering from the front camera: a streaming dataset over a split manifest, a PilotNet-sized CNN, a
deterministic train loop and per-market / per-ODD-slice evaluation. Pure: torch and pyarrow, no Dagster."""
