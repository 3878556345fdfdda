"""Prepares a process to execute steps, once: imported by the step forkserver of launched runs (its preload, so
every step process is forked ready) and by run-once before its first run (``runner.prepare_process``).

* Great Expectations (~1,200 modules, 2-3 s) is imported here, not by the first check of a step, so a step's time
  is its own work. Never on a background thread beside a step: ``ad_resources/quality.py`` says why.
* ``gc.freeze()``: the ~750,000 objects of the definitions (Dagster, torch, dbt, MLflow, GX) move to the permanent
  generation. A full collection during a step walked them all, 0.4-0.5 s each (docs/benchmarks.md); processes
  forked from here also keep those pages shared instead of copying them when the collector touches them.
"""

import gc

import ad_common.gx  # noqa: F401  (imported for its side effect: GX loaded, offline)

gc.freeze()
