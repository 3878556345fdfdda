"""Deterministic, streaming synthetic fleet generator (MDF4 + MCAP + drive.json per drive). See docs/fleetgen.md."""

from .drive import generate_drive, generate_fleet, ground_truth
from .profiles import FAULT_TYPES, GENERATOR_VERSION, MARKETS
from .sizing import options_for_size

__all__ = [
    "FAULT_TYPES",
    "GENERATOR_VERSION",
    "MARKETS",
    "generate_drive",
    "generate_fleet",
    "ground_truth",
    "options_for_size",
]
