"""Great Expectations 1.x as a Dagster resource.

``dagster-ge`` only supports GX 0.x, so this small resource runs GX 1.x itself: an ephemeral context, a
pandas dataframe batch, a validation definition per suite. Expectations run on the small profile tables of
``ad_core.quality.profile`` (one row per stream or per signal), never on whole drives.

GX is imported (``ad_common.gx``: offline) by the first validation of a process, on the thread that validates;
launched runs have it from the step forkserver's preload (``ad_platform/definitions.py``). Never on a background
thread: its import pulls in sqlalchemy.orm, scipy, protobuf and more, and a thread importing them while the step's
own thread imported one of them handed the step a half-imported module (``partially initialized module
'sqlalchemy.orm.exc'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from dagster import ConfigurableResource


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

    def validate(self, suite: str, frame: pd.DataFrame, expectations: list[Any], id_columns: list[str]) -> SuiteOutcome:
        from ad_common.gx import gx

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
