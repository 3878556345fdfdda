"""Great Expectations, imported offline: this module turns GX's analytics off (no network here; never phone home)
before importing it. GX is ~1,200 modules and 2-8 s: processes that execute steps import it before their first step
(``ad_platform/step_process.py``), others lazily, on the thread that validates (``ad_resources/quality.py`` says
why never on a background thread)."""

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # after the setting above

__all__ = ["gx"]
