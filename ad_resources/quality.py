"""Great Expectations 1.x as a Dagster resource.

``dagster-ge`` only supports GX 0.x, so this small resource runs GX 1.x itself: an ephemeral context, a
pandas dataframe batch, a validation definition per suite. Expectations run on the small profile tables of
``ad_core.quality.profile`` (one row per stream or per signal), never on whole drives.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from dagster import ConfigurableResource, InitResourceContext

_IMPORT_LOCK = threading.Lock()
_IMPORTING: list[threading.Thread] = []


def _import_great_expectations() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no network here; never phone home
    import great_expectations  # noqa: F401


def import_in_background() -> None:
    """Start importing GX on a daemon thread, once per process: the import takes 5-10 s on the 2-core machine,
    paid by the first check of a run otherwise. A later ``import great_expectations`` waits for it to finish."""
    with _IMPORT_LOCK:
        if not _IMPORTING:
            _IMPORTING.append(threading.Thread(target=_import_great_expectations, name="import-gx", daemon=True))
            _IMPORTING[0].start()


@dataclass
class FailedExpectation:
    expectation: str
    column: str | None
    unexpected_count: int
    unexpected_rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SuiteOutcome:
    suite: str
    success: bool
    evaluated: int
    failures: list[FailedExpectation]


class GreatExpectationsResource(ConfigurableResource):
    """Validate a dataframe against a list of GX expectations; failures carry the offending rows."""

    max_rows_reported: int = 20

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # Resources are set up when a run (in-process: all its steps) starts, so the import overlaps the steps
        # before the first check: raw_drive and decode_drive, which mostly wait on native code and a child.
        import_in_background()

    def validate(self, suite: str, frame: pd.DataFrame, expectations: list[Any], id_columns: list[str]) -> SuiteOutcome:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no network here; never phone home
        import great_expectations as gx

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = {"globally": False}
        batch = (
            context.data_sources.add_pandas("profiles")
            .add_dataframe_asset(suite)
            .add_batch_definition_whole_dataframe("whole")
        )
        gx_suite = context.suites.add(gx.ExpectationSuite(name=suite))
        for expectation in expectations:
            gx_suite.add_expectation(expectation)
        validation = context.validation_definitions.add(gx.ValidationDefinition(name=suite, data=batch, suite=gx_suite))
        if frame.empty:
            return SuiteOutcome(suite, True, 0, [])
        result = validation.run(
            batch_parameters={"dataframe": frame.reset_index(drop=True)},
            result_format={"result_format": "COMPLETE"},
        )
        failures = []
        for item in result.results:
            if item.success:
                continue
            indexes = item.result.get("unexpected_index_list") or []
            rows = frame.reset_index(drop=True).iloc[indexes[: self.max_rows_reported]]
            column = item.expectation_config.kwargs.get("column") or item.expectation_config.kwargs.get("column_A")
            shown = [c for c in [*id_columns, column, item.expectation_config.kwargs.get("column_B")] if c]
            failures.append(
                FailedExpectation(
                    expectation=item.expectation_config.type,
                    column=column,
                    unexpected_count=int(item.result.get("unexpected_count") or len(indexes)),
                    unexpected_rows=rows[[c for c in dict.fromkeys(shown) if c in rows]].to_dict("records"),
                )
            )
        return SuiteOutcome(suite, bool(result.success), len(result.results), failures)
