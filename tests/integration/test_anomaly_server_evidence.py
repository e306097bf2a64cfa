"""Each detector on records the real server wrote, for the evidence the server is the source of.

A two-seat site runs four weeks through the real server engine and service (manual
clock), with real export, ingest and receipts (``bench/_server_sim.py``); its history
is then forked into one operation per test. The records the detectors read are the
ones the server wrote and the vendor verified, not hand-written ones.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _server_sim import DAY, MeterProfile, SiteProfile, SiteSim, Vendor, histories
from meterbox.ledger import RecordType
from meterbox.vendorkit import VendorStore
from meterbox.vendorkit.anomaly import Anomaly, InstanceHistory, detect, instance_history
from meterbox.vendorkit.anomaly import _rules as R
from meterbox.vendorkit.anomaly._features import (
    UNKNOWN_LEASE,
    clients_in,
    lease_spans,
    seat_time_in,
)
from meterbox.vendorkit.clockcheck import ClockCheckConfig

SITE = SiteProfile(
    name="evidence",
    seats=3,
    schedule="office",
    work_start=8,
    work_hours=9,
    weekend=0.0,
    meters=(MeterProfile("solve", 6.0, 2.0), MeterProfile("export", 1.0, 1.0)),
    report_days=7,
    growth_per_week=0.0,
    batch_ticks=3,
    restart_per_week=0.0,
    rough_ntp=False,
)
TH = R.ThresholdsConfig(clock=ClockCheckConfig(heartbeat_interval_ms=10 * 60_000))


def lived(
    factory: pytest.TempPathFactory, site: SiteProfile, seed: int, periods: int
) -> Iterator[SiteSim]:
    """A site that has lived its accepted history, stopped after the module's tests."""
    root = factory.mktemp(site.name)
    sim = SiteSim(root / "base", Vendor.create(root), site, seed, periods=periods)
    sim.run_history()
    yield sim
    sim.stop_all()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteSim]:
    yield from lived(tmp_path_factory, SITE, 7, 4)


def run(base: SiteSim, case: str, tmp_path: Path) -> tuple[InstanceHistory, list[InstanceHistory]]:
    sim = base.fork(case, tmp_path / case).run()
    main, *others = histories(sim)
    return main, others


def upto(h: InstanceHistory, i: int) -> InstanceHistory:
    """The history as the vendor held it when report ``i`` was judged."""
    return dataclasses.replace(h, reports=h.reports[: i + 1])


def last(h: InstanceHistory, peers: list[InstanceHistory] | None = None) -> list[Anomaly]:
    return detect(h, peers or [], thresholds=TH)


def alarms(found: list[Anomaly]) -> set[str]:
    return {a.code for a in found if a.severity in ("warning", "critical")}


def test_clean_week_of_the_real_server_raises_no_warning(base: SiteSim, tmp_path: Path) -> None:
    main, _ = run(base, "clean", tmp_path)
    for i in range(2, len(main.reports)):
        prefix = InstanceHistory(
            main.instance_id,
            main.license_id,
            main.customer,
            main.report_every_ms,
            main.grace_ms,
            main.reports[: i + 1],
            license_issued_ms=main.license_issued_ms,
        )
        assert alarms(last(prefix)) == set(), i


def test_restored_copy_leaves_renewals_of_unknown_leases_the_server_records(
    base: SiteSim, tmp_path: Path
) -> None:
    main, _ = run(base, "snapshot_stopped_seats", tmp_path)
    kinds = {e.kind for e in main.reports[-1].events}
    # The restored server did not know the leases its clients still held, and said so.
    assert UNKNOWN_LEASE in kinds
    assert RecordType.from_kind(UNKNOWN_LEASE) is RecordType.SEAT_UNKNOWN
    found = R.lease_unknown(main, TH)
    assert [(a.code, a.severity) for a in found] == [(R.LEASE_UNKNOWN, "warning")]
    assert "restored" in found[0].message


def test_leases_that_ran_out_in_a_power_cut_are_not_unknown(base: SiteSim, tmp_path: Path) -> None:
    main, _ = run(base, "power_cut", tmp_path)
    assert R.lease_unknown(main, TH) == []
    found = last(main)
    assert alarms(found) == set(), [a.message for a in found]
    assert {a.code for a in found} >= {"heartbeat.unclean_restart"}


def test_server_killed_for_a_working_day_is_a_downtime_warning(
    base: SiteSim, tmp_path: Path
) -> None:
    main, _ = run(base, "stop_kill", tmp_path)
    found = [a for a in last(main) if a.code == R.DOWNTIME]
    assert [a.severity for a in found] == ["warning"]


def test_fresh_backdated_copy_is_dated_before_the_license_and_is_a_clone(
    base: SiteSim, tmp_path: Path
) -> None:
    main, others = run(base, "clone_fresh_backdated", tmp_path)
    (fresh,) = others
    assert R.BEFORE_ISSUE in alarms(last(fresh, [main]))
    assert R.CLONE in alarms(last(main, [fresh]))


def test_whole_small_meter_dropped_is_a_meter_rate_warning(base: SiteSim, tmp_path: Path) -> None:
    main, _ = run(base, "drop_meter", tmp_path)
    found = [a for a in last(main) if a.code == R.METER_RATE]
    assert found and "'export'" in found[0].message


def test_ingest_judges_each_meter_from_the_store(base: SiteSim, tmp_path: Path) -> None:
    """The vendor store keeps each usage record's meter; ingest's detectors read it."""
    sim = base.fork("drop_meter", tmp_path / "drop_meter").run()
    main, *_ = histories(sim)
    at_ingest = sim.ingest_findings[main.reports[-1].digest[:16]]
    assert (R.METER_RATE, "warning") in at_ingest, at_ingest
    # Every report before the attack was judged at ingest too, and none per meter.
    earlier = [sim.ingest_findings[r.digest[:16]] for r in main.reports[:-1]]
    assert all(R.METER_RATE not in {c for c, _ in f} for f in earlier)


def test_restored_copy_with_lost_work_is_combined_evidence_and_a_power_cut_is_not(
    base: SiteSim, tmp_path: Path
) -> None:
    """Lost checkouts and a working day lost together are critical; a power cut stays info."""
    main, _ = run(base, "snapshot_stopped_seats", tmp_path)
    found = last(main)
    warned = {a.code for a in found if a.severity == "warning"}
    assert R.LEASE_UNKNOWN in warned and warned & {R.DOWNTIME, R.USAGE_RATE}, warned
    assert [a.severity for a in found if a.code == R.COMBINED] == ["critical"]
    cut, _ = run(base, "power_cut", tmp_path)
    assert R.COMBINED not in {a.code for a in last(cut)}


def test_restored_idle_copy_meets_the_ledger_heads_its_clients_hold(
    base: SiteSim, tmp_path: Path
) -> None:
    """A copy taken while no seat was out loses no checkout, but its clients' heads.

    Every acknowledgement hands the client the ledger head; the client hands it back
    with its next request. After the restore the clients hold heads of the records the
    copy lost, and the restored server seals a WITNESS_MISMATCH for each: ingest's
    ``witness.mismatch`` (critical), whether or not a seat was out at the restore.
    """
    sim = base.fork("snapshot_stopped_idle", tmp_path / "idle").run()
    main, *_ = histories(sim)
    judged = [sim.ingest_findings[main.reports[i].digest[:16]] for i in sorted(sim.attacked)]
    assert any(("witness.mismatch", "critical") in f for f in judged), judged
    assert any(e.kind == RecordType.WITNESS_MISMATCH.kind for e in main.reports[-1].events)


def test_copy_restored_with_no_seat_out_is_found_by_the_clients_heads_alone(
    base: SiteSim, tmp_path: Path
) -> None:
    """Copied with no seat out, restored with no seat out: no checkout is lost.

    Nothing the restored ledger holds shows the copy (no unknown lease, a clean stop
    and a boot, as after planned maintenance); the clients given heads since the copy
    hand them back, and that is critical at ingest.
    """
    sim = base.fork("snapshot_stopped_quiet", tmp_path / "quiet").run()
    assert sim.plan["restored"] and sim.plan["quiet"] is True, sim.plan
    main, *_ = histories(sim)
    judged = [sim.ingest_findings[main.reports[i].digest[:16]] for i in sorted(sim.attacked)]
    assert any(("witness.mismatch", "critical") in f for f in judged), judged
    found = {a.code for a in last(main)}
    assert R.LEASE_UNKNOWN not in found, found
    kinds = [e.kind for e in main.reports[-1].events]
    assert RecordType.WITNESS_MISMATCH.kind in kinds


def test_honest_stops_meet_only_heads_their_ledger_has(base: SiteSim, tmp_path: Path) -> None:
    """A power cut (kill -9) and a maintenance weekend keep every head they handed out."""
    for case in ("power_cut", "maintenance_weekend"):
        sim = base.fork(case, tmp_path / case).run()
        main, *_ = histories(sim)
        for r in main.reports:
            codes = {c for c, _ in sim.ingest_findings[r.digest[:16]]}
            assert not {c for c in codes if c.startswith("witness.")}, (case, codes)
        kinds = {e.kind for e in main.reports[-1].events}
        assert RecordType.WITNESS.kind in kinds  # the clients did witness heads
        assert RecordType.WITNESS_MISMATCH.kind not in kinds


#: A twelve-seat site: a 3-seat site's meters are too small for a halved one to stand
#: out of one week's sampling noise (docs/benchmarks.md, "Against the targets").
MIX_SITE = dataclasses.replace(SITE, name="mix", seats=12)


@pytest.fixture(scope="module")
def mix_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteSim]:
    yield from lived(tmp_path_factory, MIX_SITE, 11, 4)


def test_one_meter_reported_at_half_is_a_meter_mix_warning(
    mix_base: SiteSim, tmp_path: Path
) -> None:
    """Halving the big meter moves its share against the other meter; clean weeks do not."""
    main, _ = run(mix_base, "selective_meter_50", tmp_path)
    found = R.meter_mix(main, TH)
    assert [(a.code, a.severity) for a in found] == [(R.METER_MIX, "warning")], found
    assert "'solve'" in found[0].message and "Ask the customer" in found[0].message
    assert R.METER_MIX in alarms(last(main))
    clean, _ = run(mix_base, "clean", tmp_path)
    for i in range(2, len(clean.reports)):
        h = upto(clean, i)
        assert R.meter_mix(h, TH) == [], i
        assert alarms(last(h)) == set(), i


#: Twenty-four seats, two teams of twelve, each on its own feature: a team of a few
#: people stopping looks like their week off (ADR 0039).
TEAMS_SITE = dataclasses.replace(SITE, name="teams", seats=24, features=(("cad", 12), ("sim", 12)))


@pytest.fixture(scope="module")
def teams_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteSim]:
    yield from lived(tmp_path_factory, TEAMS_SITE, 13, 5)


def test_the_server_names_each_checkouts_feature_and_the_store_keeps_it(
    teams_base: SiteSim, tmp_path: Path
) -> None:
    """Seat time per feature, from the verified records and from the vendor store, agree."""
    sim = teams_base.fork("clean", tmp_path / "clean").run()
    main, *_ = histories(sim)
    seen = {e.feature for e in main.events if e.kind == "seat.checkout"}
    assert seen == {"cad", "sim"}
    store = VendorStore.open(sim.vendor.store_url)
    try:
        with store.engine.connect() as conn:
            stored = instance_history(conn, main.instance_id, license_id=sim.license_id)
    finally:
        store.close()
    ours = seat_time_in(lease_spans(list(main.events))[0])
    theirs = seat_time_in(lease_spans(list(stored.events))[0])
    assert {f: t.ms for f, t in ours.items()} == {f: t.ms for f, t in theirs.items()}
    # Each checkout's client too: the people of each team, from either source.
    ledger_spans, store_spans = (
        lease_spans(list(main.events))[0],
        lease_spans(list(stored.events))[0],
    )
    lo, hi = main.reports[0].first_wall_ms or 0, main.reports[-1].last_wall_ms or 0
    for f in ("cad", "sim"):
        people = clients_in(ledger_spans, f, lo, hi + 1)
        assert len(people) == 12, (f, people)
        assert clients_in(store_spans, f, lo, hi + 1) == people
    for i in range(2, len(main.reports)):
        h = upto(main, i)
        assert [a for a in R.feature_mix(h, TH) if a.severity != "info"] == [], i


def test_one_features_users_moved_to_a_silent_copy_is_a_feature_mix_warning(
    teams_base: SiteSim, tmp_path: Path
) -> None:
    """Every user of one feature works on a copy that never reports: that feature's seat
    time leaves the reports at once, the other team's stays; ingest finds it too."""
    sim = teams_base.fork("clone_silent_feature", tmp_path / "moved").run()
    main, *_ = histories(sim)
    moved = sim.plan["feature"]
    hits = []
    for i in sorted(sim.attacked):
        h = upto(main, i)
        hits += [a for a in R.feature_mix(h, TH) if a.severity == "warning"]
    assert hits and f"{moved!r}" in hits[0].message and "Ask the customer" in hits[0].message
    assert any(
        (R.FEATURE_MIX, "warning") in sim.ingest_findings[main.reports[i].digest[:16]]
        for i in sim.attacked
    )


def test_a_team_winding_down_its_feature_over_weeks_raises_no_warning(
    teams_base: SiteSim, tmp_path: Path
) -> None:
    """Twelve users leave one by one over eight weeks: the share falls, never stops at once."""
    sim = teams_base.fork("feature_wind_down", tmp_path / "wind").run()
    main, *_ = histories(sim)
    assert not [c for c in sim.clients if c.feature == sim.plan["feature"] and not c.gone]
    for i in sorted(sim.attacked):
        h = upto(main, i)
        warned = [a for a in R.feature_mix(h, TH) if a.severity != "info"]
        assert warned == [], (i, warned)
        at_ingest = sim.ingest_findings[main.reports[i].digest[:16]]
        assert (R.FEATURE_MIX, "warning") not in at_ingest, (i, at_ingest)


#: Sixteen seats: a team of twelve and a team of four, each on its own feature.
SMALL_TEAM_SITE = dataclasses.replace(
    SITE, name="small-team", seats=16, features=(("cad", 12), ("sim", 4))
)


@pytest.fixture(scope="module")
def small_team_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteSim]:
    yield from lived(tmp_path_factory, SMALL_TEAM_SITE, 13, 5)


def test_a_team_of_four_moved_in_mid_week_is_warned_once(
    small_team_base: SiteSim, tmp_path: Path
) -> None:
    """The four users of 'sim' move to a silent copy during a week: that week still
    holds some of their use, so the stop is judged from their last seat (ADR 0040) by the
    next report; the reports after it carry it as info, one stop, one warning."""
    sim = small_team_base.fork("clone_silent_feature", tmp_path / "moved").run()
    assert sim.plan["feature"] == "sim", sim.plan  # this seed moves the small team
    main, *_ = histories(sim)
    per_report = []
    for i in sorted(sim.attacked):
        h = upto(main, i)
        per_report.append(
            [a for a in R.feature_mix(h, TH) if a.severity != "info" or "still" in a.message]
        )
    first = sorted(sim.attacked)[0]
    assert any(e.feature == "sim" for e in main.reports[first].events), "the move was mid-week"
    warned = [
        i for i, found in enumerate(per_report) if any(a.severity == "warning" for a in found)
    ]
    assert len(warned) == 1, per_report
    assert "'sim'" in per_report[warned[0]][0].message
    assert "stopped at once" in per_report[warned[0]][0].message
    for later in per_report[warned[0] + 1 :]:
        assert [a.severity for a in later] == ["info"], later
        assert "still no seat of feature 'sim'" in later[0].message
    at_ingest = [sim.ingest_findings[main.reports[i].digest[:16]] for i in sorted(sim.attacked)]
    assert sum((R.FEATURE_MIX, "warning") in f for f in at_ingest) == 1, at_ingest


def test_a_team_of_four_working_on_raises_no_feature_warning(
    small_team_base: SiteSim, tmp_path: Path
) -> None:
    sim = small_team_base.fork("clean", tmp_path / "clean").run()
    main, *_ = histories(sim)
    for i in range(2, len(main.reports)):
        h = upto(main, i)
        assert [a for a in R.feature_mix(h, TH) if a.severity != "info"] == [], i


def test_the_last_three_of_a_team_of_four_stopping_a_week_after_one_left_is_no_warning(
    small_team_base: SiteSim, tmp_path: Path
) -> None:
    """One of the four users of 'sim' leaves for good; the other three stop a week later.
    Every regular was seen in the fortnight before the stop, so ADR 0040 alone calls it
    a stop; the first to leave missed four of the team's working days where one was the
    most it had missed, so it is a team winding down (ADR 0043)."""
    sim = small_team_base.fork("feature_wind_down", tmp_path / "last")
    at = sim.plan["at"]
    sim.run(at + 1)  # the case has begun: the plan says who leaves when
    team = [i for i, c in enumerate(sim.clients) if c.feature == "sim"]
    assert len(team) == 4, team
    first, *rest = team
    sim.plan["leave"] = [(at, first), *((at + 7 * DAY, i) for i in rest)]
    sim.run()
    main, *_ = histories(sim)

    def warned(th: R.ThresholdsConfig) -> list[tuple[int, Anomaly]]:
        hits = []
        for i in sorted(sim.attacked):
            hits += [(i, a) for a in R.feature_mix(upto(main, i), th) if a.severity == "warning"]
        return hits

    assert warned(TH) == []
    # The same history with every regular allowed to have been away: a stop, warned.
    everyone_away = dataclasses.replace(TH, feature_away_share=1.0)
    assert [a.message[:40] for _, a in warned(everyone_away)], "ADR 0040 alone finds a stop"
    for i in sorted(sim.attacked):
        at_ingest = sim.ingest_findings[main.reports[i].digest[:16]]
        assert (R.FEATURE_MIX, "warning") not in at_ingest, (i, at_ingest)
