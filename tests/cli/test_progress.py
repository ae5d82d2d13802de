"""What a long run says while it runs: warnings as they arise, not only in the summary."""

from __future__ import annotations

import pytest

from cli.output import print_warnings
from cli.progress import StageBars

SMALL = "the validation split has 144 images, so one image is 0.69 points, more than ..."


@pytest.mark.parametrize("bars_shown", [True, False])  # False: --json, bars off, stderr still
def test_a_warning_is_said_when_it_arises_and_not_again_in_the_summary(
    capsys: pytest.CaptureFixture[str], bars_shown: bool
) -> None:
    with StageBars(enabled=bars_shown) as bars:
        bars("baseline", 0.5, "evaluating the uncompressed model")
        bars("baseline", 1.0, f"warning: {SMALL}")
        assert f"warning: {SMALL}" in capsys.readouterr().err  # now, before the run goes on
        bars("prune", 0.5, "round 1 of 6")
    assert bars.warned == [SMALL]
    capsys.readouterr()  # the bars' last state, drawn when they stop
    print_warnings({"warnings": [SMALL, "validation accuracy fell 0.50 points"]}, bars.warned)
    said = capsys.readouterr().err
    assert SMALL not in said
    assert said.strip() == "warning: validation accuracy fell 0.50 points"
