"""The command line: every subcommand's help works, the decode CLI's own included."""

from __future__ import annotations

import pytest

from ad_platform.cli import main


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["decode", "--help"], "usage: python -m ad_core.decode"),
        (["run-once", "--help"], "usage: python -m ad_platform run-once"),
        (["demo", "--help"], "--no-bad-drives"),
        (["--help"], "{run-once,demo,review,metrics,approve,rollback,models,lineage,decode}"),
        (["approve", "--help"], "--by BY --note NOTE"),
        (["rollback", "--help"], "--to TO"),
        (["lineage", "--help"], "MODEL@ALIAS"),
    ],
)
def test_help_prints_usage_and_exits_0(argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    assert usage in capsys.readouterr().out
