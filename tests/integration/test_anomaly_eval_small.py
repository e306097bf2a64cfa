"""The small anomaly evaluation, on held-out generator seeds, through the real ledger.

Two customers, five weeks, one generator seed never used while developing; each attack
class that leaves evidence injected once per customer. The targets are those of the
full evaluation (docs/benchmarks.md) with a margin for the small sample: every rule-
detectable class must be found in every history here, and clean reports must stay
quiet. Classes known to leave no or weak evidence (small under-reporting) are measured
by the full run in bench/, not asserted here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from anomaly_eval import HELD_OUT_SEED_BASE, evaluate

#: Classes whose evidence the rules see whenever the attack is as large as generated.
STRONG = ("suppress_all", "clock_back", "clock_back_offline", "clock_forward", "clone")


@pytest.fixture(scope="module")
def tally():  # type: ignore[no-untyped-def]
    return evaluate(
        customers=2,
        seeds=[HELD_OUT_SEED_BASE + 500],
        weeks=5,
        attacks=(*STRONG, "under_report_50"),
    )


@pytest.mark.parametrize("attack", STRONG)
def test_attack_that_leaves_evidence_is_found_on_held_out_seeds(tally, attack) -> None:  # type: ignore[no-untyped-def]
    assert tally.recall(attack) == 1.0, tally.as_dict()


def test_clean_reports_on_held_out_seeds_stay_quiet(tally) -> None:  # type: ignore[no-untyped-def]
    assert tally.judged_clean >= 8
    # Target 2 % per report; with eight reports any false positive is already 12 %.
    assert tally.flagged_clean == 0, tally.as_dict()


def test_half_of_usage_hidden_is_found_at_least_once(tally) -> None:  # type: ignore[no-untyped-def]
    assert tally.recall("under_report_50") >= 0.5, tally.as_dict()
