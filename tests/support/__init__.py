"""Helpers shared by test modules (plain module: import it, do not put fixtures here)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
