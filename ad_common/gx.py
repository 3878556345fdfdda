"""Great Expectations, imported offline: this module turns GX's analytics off (no network here; never phone home)
before importing it. GX is ~1,200 modules and 3-8 s, so import this lazily, on the thread that validates
(``ad_resources/quality.py`` says why never on a background thread), or preload it (the step forkserver)."""

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # after the setting above

__all__ = ["gx"]
