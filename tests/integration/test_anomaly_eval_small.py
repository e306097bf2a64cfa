"""The small anomaly evaluation: one held-out site, written by the real server.

One site (generator seed :data:`CI_SEED`, never used while tuning) is simulated through
the real server engine and service, exported, ingested and receipted; its accepted
history is then forked into a few legitimate operations and attack classes that
leave evidence in the records the server writes. The targets are those of the full
evaluation (docs/benchmarks.md): every such attack is found, and neither the clean
reports nor the legitimate operations raise a warning. Classes whose evidence is
weak (small under-reporting) or absent are measured by the full run in bench/, not
asserted here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from anomaly_eval import CI_SEED, Tally, evaluate

LEGITIMATE = ("clean", "power_cut", "maintenance_weekend", "ntp_step")
#: Attacks whose evidence the server writes whenever the attack is as large as generated.
STRONG = (
    "snapshot_live_seats",
    # No seat out at the copy: its clients' ledger heads are the evidence (witness).
    "snapshot_stopped_idle",
    # ... nor at the restore: the heads alone.
    "snapshot_stopped_quiet",
    "stop_kill",
    "clock_back_live",
    "clock_forward_stopped",
    "clone_reporting",
    "under_report_50",
)


@pytest.fixture(scope="module")
def tally() -> Tally:
    return evaluate([CI_SEED], (*LEGITIMATE, *STRONG))


@pytest.mark.parametrize("attack", STRONG)
def test_attack_that_leaves_evidence_is_found_on_a_held_out_site(tally: Tally, attack: str) -> None:
    assert tally.rate(attack) == 1.0, tally.as_dict()


def test_clean_reports_of_a_held_out_site_carry_no_warning(tally: Tally) -> None:
    assert tally.clean_judged >= 2
    assert tally.clean_flagged == 0, tally.as_dict()


@pytest.mark.parametrize("case", LEGITIMATE[1:])
def test_legitimate_operation_raises_no_warning(tally: Tally, case: str) -> None:
    assert tally.rate(case) == 0.0, tally.as_dict()
