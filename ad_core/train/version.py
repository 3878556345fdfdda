"""What code trained a model: the trainer's own version, the git commit, and the decoder and sync that made its
frames."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

from ad_core.decode.version import DECODER_VERSION
from ad_core.sync.version import SYNC_VERSION

TRAINER_VERSION = "1.1.0"  # bump when the data pipeline, model or loop change what a retrain produces


@cache
def git_sha() -> str:
    """``AD_GIT_SHA`` (set in images, which carry no .git) or ``git rev-parse HEAD`` of this checkout."""
    if sha := os.environ.get("AD_GIT_SHA"):
        return sha
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version() -> str:
    """``trainer-<v>+git-<sha12>+decoder-<v>+sync-<v>``: one string for tags and the gate's audit record."""
    return f"trainer-{TRAINER_VERSION}+git-{git_sha()[:12]}+decoder-{DECODER_VERSION}+sync-{SYNC_VERSION}"


def version_tags() -> dict[str, str]:
    return {
        "code_version": code_version(),
        "git_sha": git_sha(),
        "trainer_version": TRAINER_VERSION,
        "decoder_version": DECODER_VERSION,
        "sync_version": SYNC_VERSION,
    }
