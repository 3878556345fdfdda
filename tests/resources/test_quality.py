"""The Great Expectations resource: the rules on one table run as one GX validation, each rule keeping its own
outcome and failing rows."""

from __future__ import annotations

import pandas as pd

from ad_common.gx import gx
from ad_resources.quality import GreatExpectationsResource, Suite


def test_one_validation_of_a_table_splits_back_into_each_suites_outcome() -> None:
    frame = pd.DataFrame(
        {
            "stream": ["imu", "gnss", "camera"],
            "out_of_range_rows": [0, 3, 0],
            "gap_limit_s": [1.0, 1.0, 1.0],
            "max_gap_s": [0.1, 0.2, 4.5],
            "clock_issue": [None, None, None],
        }
    )
    suites = {
        "physical_ranges": Suite(
            [gx.expectations.ExpectColumnValuesToBeBetween(column="out_of_range_rows", max_value=0)], ["stream"]
        ),
        "no_gaps": Suite(
            [
                gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A="gap_limit_s", column_B="max_gap_s", or_equal=True
                )
            ],
            ["stream"],
        ),
        "clock_sanity": Suite([gx.expectations.ExpectColumnValuesToBeNull(column="clock_issue")], ["stream"]),
    }

    outcomes = GreatExpectationsResource().validate("streams__d1", frame, suites)

    assert {k: (o.success, o.evaluated) for k, o in outcomes.items()} == {
        "physical_ranges": (False, 1),
        "no_gaps": (False, 1),
        "clock_sanity": (True, 1),
    }
    (ranges,) = outcomes["physical_ranges"].failures
    assert (ranges.expectation, ranges.column, ranges.unexpected_count) == (
        "expect_column_values_to_be_between",
        "out_of_range_rows",
        1,
    )
    assert ranges.unexpected_rows == [{"stream": "gnss", "out_of_range_rows": 3}]
    (gap,) = outcomes["no_gaps"].failures
    assert gap.unexpected_rows == [{"stream": "camera", "gap_limit_s": 1.0, "max_gap_s": 4.5}]


def test_an_empty_table_passes_every_suite_without_evaluating() -> None:
    suites = {"a": Suite([gx.expectations.ExpectColumnValuesToBeNull(column="x")], [])}
    outcomes = GreatExpectationsResource().validate("empty", pd.DataFrame({"x": []}), suites)
    assert [(o.suite, o.success, o.evaluated, o.failures) for o in outcomes.values()] == [("a", True, 0, [])]
