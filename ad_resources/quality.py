"""Great Expectations 1.x as a Dagster resource.

``dagster-ge`` only supports GX 0.x, so this small resource runs GX 1.x itself: an ephemeral context, a
pandas dataframe batch, one validation per table with the expectations of every rule on it. Expectations run on
the small profile tables of ``ad_core.quality.profile`` (one row per stream or per signal), never on whole drives.

Processes that execute steps have GX imported before their first step (``ad_platform/step_process.py``: the step
forkserver's preload, run-once); elsewhere (a test materializing directly) the first validation imports it
(``ad_common.gx``: offline), on the thread that validates. Never on a background thread: its import pulls in
sqlalchemy.orm, scipy, protobuf and more, and a thread importing them while the step's own thread imported one of
them handed the step a half-imported module (``partially initialized module 'sqlalchemy.orm.exc'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from dagster import ConfigurableResource

# The expectation meta key that names the suite an expectation belongs to.
SUITE_META = "ad_suite"


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


@dataclass(frozen=True)
class Suite:
    """Expectations that pass or fail together (one quality rule), and the columns that identify a failing row."""

    expectations: list[Any]
    id_columns: list[str]


class GreatExpectationsResource(ConfigurableResource):
    """Validate a dataframe against suites of GX expectations; failures carry the offending rows."""

    max_rows_reported: int = 20

    def validate(self, name: str, frame: pd.DataFrame, suites: Mapping[str, Suite]) -> dict[str, SuiteOutcome]:
        """One GX validation of ``frame`` over every suite's expectations, split back into one outcome per suite:
        the rules on one table cost one validation run, not one each. Each expectation's ``meta`` is tagged with
        its suite (pass fresh expectations: GX adds them to its suite as they are)."""
        from ad_common.gx import gx

        if frame.empty:
            return {key: SuiteOutcome(key, True, 0, []) for key in suites}
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = {"globally": False}
        batch = (
            context.data_sources.add_pandas("profiles")
            .add_dataframe_asset(name)
            .add_batch_definition_whole_dataframe("whole")
        )
        gx_suite = context.suites.add(gx.ExpectationSuite(name=name))
        for key, suite in suites.items():
            for expectation in suite.expectations:
                expectation.meta = {**(expectation.meta or {}), SUITE_META: key}
                gx_suite.add_expectation(expectation)
        validation = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=gx_suite))
        frame = frame.reset_index(drop=True)
        result = validation.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
        outcomes = {key: SuiteOutcome(key, True, 0, []) for key in suites}
        for item in result.results:
            key = item.expectation_config.meta[SUITE_META]
            outcome = outcomes[key]
            outcome.evaluated += 1
            if item.success:
                continue
            outcome.success = False
            indexes = item.result.get("unexpected_index_list") or []
            rows = frame.iloc[indexes[: self.max_rows_reported]]
            kwargs = item.expectation_config.kwargs
            column = kwargs.get("column") or kwargs.get("column_A")
            shown = [c for c in [*suites[key].id_columns, column, kwargs.get("column_B")] if c]
            outcome.failures.append(
                FailedExpectation(
                    expectation=item.expectation_config.type,
                    column=column,
                    unexpected_count=int(item.result.get("unexpected_count") or len(indexes)),
                    unexpected_rows=rows[[c for c in dict.fromkeys(shown) if c in rows]].to_dict("records"),
                )
            )
        return outcomes
