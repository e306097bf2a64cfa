"""Measured evaluation of anomaly detection on histories written by the real server.

Histories come from ``bench/_server_sim.py``: the real server engine and service on a
manual clock, real export, real ingest into a SQLite vendor store, receipts imported
back. For every site (one generator seed) the accepted history is simulated once and
then forked into every case: each legitimate operation of :data:`LEGIT` and each
attack class of :data:`ATTACKS` happens in the judged (last) report period.

What is counted (a report is *flagged* when it carries a finding of severity
``warning`` or ``critical``; ``info`` findings are shown to the clerk but raise no alarm):

* clean false-alarm rate: flagged clean reports / judged clean reports, every report
  of the clean case that has at least three accepted reports before it;
* per legitimate case: flagged judged reports / histories;
* per attack class: histories in which a report written after the attack began (of
  the attacked server, or any report of a second server) is flagged / histories; and
  the same for the first such report alone (``attacks_first_report``: clients patched
  to scale their amounts run for a month of reports, ADR 0037).

Findings are those of :func:`meterbox.vendorkit.anomaly.detect` over the records as
the vendor verified them, plus ingest's own ledger, license and clone findings
(``ledger.*``, ``report.*``, ``license.*``, ``record.*``), which need no detector.

Seeds: development seeds (:data:`DEV_SEEDS`) are the only ones looked at while
tuning; held-out seeds (:data:`HELD_OUT_SEEDS`) are run once per detector change and
their figures published in docs/benchmarks.md. The CI run
(tests/integration/test_anomaly_eval_small.py) uses :data:`CI_SEED`, also held out.

    .venv/bin/python bench/anomaly_eval.py simulate --seeds held-out --out /tmp/ho
    .venv/bin/python bench/anomaly_eval.py judge /tmp/ho --json figures.json

Calibration (ADR 0027) reads development case files only, and refuses held-out ones:

    .venv/bin/python bench/anomaly_eval.py simulate --seeds dev --out /tmp/dev
    .venv/bin/python bench/anomaly_eval.py calibrate /tmp/dev
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server_sim import (
    ATTACKS,
    FEATURE_CASES,
    LEGIT,
    POLICY,
    SiteSim,
    Vendor,
    histories,
    site_profile,
)
from meterbox.vendorkit.anomaly import (
    Anomaly,
    InstanceHistory,
    ThresholdsConfig,
    detect,
    ingest_view,
)
from meterbox.vendorkit.anomaly._rules import usage_rate_spans, weak_usage_drop

#: Seeds used while developing and calibrating.
DEV_SEEDS: tuple[int, ...] = tuple(range(100, 112))
#: Seeds never looked at while tuning; run once per change. 9000-9011 run every case;
#: 9012-9073 (declared later, 9048-9073 with ADR 0038, for tighter false-alarm bounds:
#: 74 histories per legitimate case bound a rate of 0 below 5 %) the clean and
#: legitimate ones, which are the cheap ones to simulate.
HELD_OUT_SEEDS: tuple[int, ...] = tuple(range(9000, 9012))
#: 9224-9297 for ADR 0041 (the usage spans' threshold), declared before that rule was
#: judged on any held-out honest report.
HELD_OUT_HONEST_SEEDS: tuple[int, ...] = (*range(9012, 9074), *range(9224, 9298))
#: The usage attacks (under-reporting by a factor, a meter dropped or halved) are the
#: statistical classes; 12 histories bound their recall at 76 % only. 9012-9047 run
#: them as well (declared after ADR 0040, with the usage detectors unchanged since
#: ADR 0038; their honest cases are in the 9012-9073 run already); 9048-9073 with
#: ADR 0041, before its usage rule was chosen (none of their attacked histories had
#: been simulated).
USAGE_ATTACKS: tuple[str, ...] = (
    "under_report_10",
    "under_report_30",
    "under_report_50",
    "drop_meter",
    "selective_meter_50",
)
HELD_OUT_USAGE_SEEDS: tuple[int, ...] = tuple(range(9012, 9074))
#: The feature cases (ADR 0039) need sites whose teams use different features (about
#: 60 % of sites): development on those of 100-171 (112-135 declared for them,
#: 136-171 with ADR 0040), held out on those of 9000-9223 (9048-9073 declared with the
#: first form of ADR 0040, 9074-9123 with its regular clients, which no history of
#: 9000-9073 was simulated with; 9124-9223 for the same rule unchanged, so that the
#: wind-down's rate is bounded by about 100 histories; ``simulate --teams-only``).
#: 9298-9397 after ADR 0041's honest run (9224-9297), whose 39 wind-downs bound that
#: case's rate at 17 % only; with every detector of ADR 0041 unchanged. 9398-9497
#: for ADR 0042 (rejected: a regular's absence before a stop against its own), declared before
#: any history of them was simulated: the wind-down and the move to a silent copy.
#: 9505-9604 for ADR 0042's second form (absence counted in the site's working days),
#: declared after 9398-9497 showed the first form's cost, before they were simulated.
#: 9605-9704 for ADR 0043 (a regular's absence counted in the hours its own team
#: worked), declared before any history of them was simulated. 9705-9804 for ADR 0045
#: (a single week's drop of usage per seat-hour confirmed by the span after it),
#: declared before any history of them was simulated.
DEV_TEAM_SEEDS: tuple[int, ...] = tuple(range(100, 172))
HELD_OUT_TEAM_SEEDS: tuple[int, ...] = (*range(9000, 9224), *range(9298, 9498), *range(9505, 9805))
#: The CI run's seed (held out as well).
CI_SEED = 9504
THRESHOLDS = ThresholdsConfig(clock=POLICY)
#: Ingest findings that need no detector (the ledger, the licenses, clones by activity,
#: heads the clients witnessed that the chain lacks).
INGEST_PREFIXES = ("ledger.", "report.", "license.", "record.", "witness.")
ALARM = frozenset({"warning", "critical"})
#: Reports of accepted history before the judged period, by reporting interval in
#: days: as many as the ingest window holds (ADR 0038: eight weeks of weekly reports;
#: a monthly reporter's window holds eight reports, of which four months are lived
#: here, to keep a 50-seat site's simulation within minutes).
HISTORY_PERIODS = {7: 8, 30: 4}
#: Reports of accepted history a report needs before its clean verdict is counted.
MIN_HISTORY = 2


@dataclass
class CaseRun:
    """One simulated case of one site, as judged later (pickled between the steps)."""

    seed: int
    site: str
    schedule: str
    report_days: int
    seats: int
    case: str
    main: InstanceHistory
    others: list[InstanceHistory]
    attacked: set[int]
    ingest: dict[str, list[tuple[str, str]]]
    #: snapshot_stopped_quiet: whether the restore found no seat out (None elsewhere).
    quiet: bool | None = None
    #: Team sizes, one per feature, of a site whose teams use different features.
    teams: tuple[int, ...] = ()
    #: A feature case: the size of the team whose feature it is about.
    team: int | None = None


def simulate(
    seeds: Iterable[int],
    out: Path,
    cases: Sequence[str],
    *,
    progress: bool,
    teams_only: bool = False,
) -> None:
    """Simulate every case of every seed's site and pickle the histories under ``out``
    (``teams_only``: only sites whose teams use two or more features)."""
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        target = out / f"seed-{seed}.pkl"
        if target.exists():
            continue
        if teams_only and len(site_profile(np.random.default_rng(seed), "").features) < 2:
            continue
        runs = simulate_site(seed, cases, progress=progress)
        target.write_bytes(pickle.dumps(runs))


def simulate_site(seed: int, cases: Sequence[str], *, progress: bool = False) -> list[CaseRun]:
    prof = site_profile(np.random.default_rng(seed), f"site{seed}")
    periods = HISTORY_PERIODS[prof.report_days] + 1
    runs: list[CaseRun] = []
    with tempfile.TemporaryDirectory(dir=_fast_tmp()) as tmp:
        root = Path(tmp)
        vendor = Vendor.create(root)
        base = SiteSim(root / "base", vendor, prof, seed, periods=periods)
        t0 = time.monotonic()
        base.run_history()
        if progress:
            print(f"seed {seed} {prof} history {time.monotonic() - t0:.0f}s", file=sys.stderr)
        for case in cases:
            if case in FEATURE_CASES and len(prof.features) < 2:
                continue  # a site with one feature has no team of its own to lose
            t0 = time.monotonic()
            sim = base.fork(case, root / case).run()
            hs = list(histories(sim))
            runs.append(
                CaseRun(
                    seed,
                    prof.name,
                    prof.schedule,
                    prof.report_days,
                    prof.seats,
                    case,
                    hs[0],
                    hs[1:],
                    set(sim.attacked),
                    dict(sim.ingest_findings),
                    sim.plan.get("quiet"),
                    tuple(size for _, size in prof.features),
                    dict(prof.features).get(sim.plan.get("feature", "")),
                )
            )
            shutil.rmtree(root / case)
            if progress:
                print(f"  {case} {time.monotonic() - t0:.0f}s", file=sys.stderr)
        base.stop_all()
    return runs


# ------------------------------------------------------------------- judging
def prefix(h: InstanceHistory, n: int) -> InstanceHistory:
    return replace(h, reports=h.reports[:n])


def judge(
    h: InstanceHistory, index: int, peers: Sequence[InstanceHistory], th: ThresholdsConfig
) -> list[Anomaly]:
    """Findings for report ``index`` as the vendor sees it at ingest.

    The history up to it, cut to the window ingest reads from its store
    (:func:`ingest_view`, ADR 0038), so what is measured is what ingest judges.
    """
    cut = h.reports[index].received_ms
    visible = [prefix(p, sum(1 for r in p.reports if r.received_ms <= cut)) for p in peers]
    judged = ingest_view(prefix(h, index + 1))
    return detect(judged, [p for p in visible if p.reports], thresholds=th)


def alarms(found: Iterable[Anomaly]) -> set[str]:
    return {a.code for a in found if a.severity in ALARM}


def ingest_alarms(run: CaseRun, digest: str) -> set[str]:
    return {
        code
        for code, sev in run.ingest.get(digest, [])
        if sev in ALARM and code.startswith(INGEST_PREFIXES)
    }


@dataclass
class Tally:
    clean_judged: int = 0
    clean_flagged: int = 0
    clean_codes: Counter[str] = field(default_factory=Counter)
    cases: dict[str, list[bool]] = field(default_factory=dict)
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    info_codes: dict[str, Counter[str]] = field(default_factory=dict)
    by_period: dict[str, list[int]] = field(default_factory=dict)
    #: snapshot_stopped_quiet: (the restore found no seat out, the case was flagged).
    quiet: list[tuple[bool, bool]] = field(default_factory=list)
    #: Per case: flagged by the first report written after the attack began (or a
    #: second server's report the vendor had by then).
    first: dict[str, list[bool]] = field(default_factory=dict)
    #: Feature cases: (size of the team whose feature it is about, flagged).
    teams: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)

    def add(self, case: str, hit: bool, codes: set[str], info: set[str]) -> None:
        self.cases.setdefault(case, []).append(hit)
        self.codes.setdefault(case, Counter()).update(codes)
        self.info_codes.setdefault(case, Counter()).update(info)

    def merge(self, other: Tally) -> None:
        """Add ``other``'s counts to these (sites judged apart, one table)."""
        self.clean_judged += other.clean_judged
        self.clean_flagged += other.clean_flagged
        self.clean_codes.update(other.clean_codes)
        for case, hits in other.cases.items():
            self.cases.setdefault(case, []).extend(hits)
        for name, mine in (("codes", self.codes), ("info_codes", self.info_codes)):
            for case, counts in getattr(other, name).items():
                mine.setdefault(case, Counter()).update(counts)
        for period, (k, n) in other.by_period.items():
            slot = self.by_period.setdefault(period, [0, 0])
            slot[0] += k
            slot[1] += n
        self.quiet.extend(other.quiet)
        for case, hits in other.first.items():
            self.first.setdefault(case, []).extend(hits)
        for case, rows in other.teams.items():
            self.teams.setdefault(case, []).extend(rows)

    def rate(self, case: str) -> float:
        hits = self.cases.get(case, [])
        return sum(hits) / max(1, len(hits))

    def clean_rate(self) -> float:
        return self.clean_flagged / max(1, self.clean_judged)

    def as_dict(self) -> dict[str, object]:
        def row(hits: list[bool]) -> dict[str, object]:
            k, n = sum(hits), len(hits)
            lo, hi = wilson(k, n)
            return {"k": k, "n": n, "rate": k / max(1, n), "ci95": [round(lo, 3), round(hi, 3)]}

        lo, hi = wilson(self.clean_flagged, self.clean_judged)
        return {
            "clean_reports": {
                "k": self.clean_flagged,
                "n": self.clean_judged,
                "rate": self.clean_rate(),
                "ci95": [round(lo, 3), round(hi, 3)],
                "codes": dict(self.clean_codes),
                "by_period": {p: {"k": v[0], "n": v[1]} for p, v in self.by_period.items()},
            },
            "legit": {c: row(v) for c, v in self.cases.items() if c in LEGIT},
            "attacks": {c: row(v) for c, v in self.cases.items() if c in ATTACKS},
            "attacks_first_report": {c: row(v) for c, v in self.first.items() if c in ATTACKS},
            "codes": {c: dict(v) for c, v in self.codes.items()},
            "info_codes": {c: dict(v) for c, v in self.info_codes.items()},
            "by_team_size": {
                case: {
                    label: row([hit for size, hit in rows if lo <= size <= hi])
                    for label, lo, hi in TEAM_BUCKETS
                }
                for case, rows in self.teams.items()
            },
            "quiet_restores": {
                "n": len(self.quiet),
                "no_seat_out": sum(q for q, _ in self.quiet),
                "no_seat_out_flagged": sum(q and hit for q, hit in self.quiet),
            },
        }


#: Team sizes of the feature cases' tables (docs/benchmarks.md), smallest first.
TEAM_BUCKETS = (("1-2", 1, 2), ("3-5", 3, 5), ("6-9", 6, 9), ("10+", 10, 10**6), ("3+", 3, 10**6))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for ``k`` successes in ``n`` trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def score(
    run: CaseRun, tally: Tally, th: ThresholdsConfig = THRESHOLDS, only: str | None = None
) -> None:
    """Add ``run``'s verdicts to ``tally`` (``only``: count the alarms of the codes that
    start with it, one rule's verdict, and no other)."""
    main = run.main

    def flags(found: Iterable[Anomaly], digest: str) -> set[str]:
        codes = alarms(found) | ingest_alarms(run, digest)
        return codes if only is None else {c for c in codes if c.startswith(only)}

    period = "weekly" if run.report_days == 7 else "monthly"
    if run.case == "clean":
        for i in range(MIN_HISTORY, len(main.reports)):
            found = judge(main, i, run.others, th)
            flagged = flags(found, main.reports[i].digest)
            tally.clean_judged += 1
            slot = tally.by_period.setdefault(period, [0, 0])
            slot[1] += 1
            if flagged:
                tally.clean_flagged += 1
                slot[0] += 1
                tally.clean_codes.update(flagged)
    judged = sorted(run.attacked) or [len(main.reports) - 1]
    codes: set[str] = set()
    info: set[str] = set()
    first_cut = main.reports[judged[0]].received_ms
    first = False
    for i in judged:
        found = judge(main, i, run.others, th)
        here = flags(found, main.reports[i].digest)
        first |= i == judged[0] and bool(here)
        codes |= here
        info |= {a.code for a in found if a.severity == "info"}
    for other in run.others:
        for i in range(len(other.reports)):
            found = judge(other, i, [main], th)
            here = flags(found, other.reports[i].digest)
            first |= other.reports[i].received_ms <= first_cut and bool(here)
            codes |= here
    tally.add(run.case, bool(codes), codes, info)
    tally.first.setdefault(run.case, []).append(first)
    if run.quiet is not None:
        tally.quiet.append((run.quiet, bool(codes)))
    if run.team is not None:
        tally.teams.setdefault(run.case, []).append((run.team, bool(codes)))


class _Unpickler(pickle.Unpickler):
    """Reads case files written by earlier runs of this script as ``__main__``."""

    def find_class(self, module: str, name: str) -> type:
        if module == "__main__" and name == "CaseRun":
            return CaseRun
        found: type = super().find_class(module, name)
        return found


def load_runs(path: Path) -> list[CaseRun]:
    with path.open("rb") as f:
        runs: list[CaseRun] = _Unpickler(f).load()
    return runs


def case_files(directories: Sequence[Path]) -> list[Path]:
    """Every site's case file under ``directories``, in seed order; a seed twice is refused."""
    files: dict[str, Path] = {}
    for d in directories:
        for path in d.glob("seed-*.pkl"):
            if path.name in files:
                raise SystemExit(
                    f"{path.name} is in both {files[path.name].parent} and {d}: a site is "
                    "judged once. Remove one of them and run again"
                )
            files[path.name] = path
    return [files[name] for name in sorted(files)]


def judge_file(path: Path, cases: Sequence[str] | None = None, only: str | None = None) -> Tally:
    tally = Tally()
    for run in load_runs(path):
        if cases is None or run.case in cases:
            score(run, tally, only=only)
    return tally


def judge_dirs(
    directories: Sequence[Path],
    cases: Sequence[str] | None = None,
    *,
    jobs: int = 1,
    only: str | None = None,
) -> Tally:
    """Judge every site under ``directories`` (``jobs`` sites at a time) into one tally."""
    files = case_files(directories)
    tally = Tally()
    if jobs <= 1:
        for path in files:
            tally.merge(judge_file(path, cases, only))
        return tally
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for part in pool.map(judge_file, files, [cases] * len(files), [only] * len(files)):
            tally.merge(part)
    return tally


def evaluate(seeds: Sequence[int], cases: Sequence[str]) -> Tally:
    """Simulate and judge in one go (the CI run)."""
    tally = Tally()
    for seed in seeds:
        for run in simulate_site(seed, cases):
            score(run, tally)
    return tally


# --------------------------------------------------------------- calibration
#: The false-alarm budget: clean reports with a warning or critical finding.
BUDGET = 0.02


@dataclass
class Calibration:
    """What honest development reports score, per detector (ADR 0027)."""

    reports: int = 0
    #: Reports carrying each code, per severity.
    seen: dict[str, Counter[str]] = field(default_factory=dict)
    #: Each scored code's scores on honest reports (z, cost in days, ms moved, ...).
    scores: dict[str, list[float]] = field(default_factory=dict)
    #: Honest reports whose usage is weakly below history (one strand of the triple).
    weak_drops: int = 0
    #: Every usage span's score (z, drop, z_limit, floor), by reporting interval and the
    #: span's reports ("7d/2": two weekly reports): what ADR 0041's thresholds are
    #: fitted on.
    spans: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)

    def add(
        self,
        h: InstanceHistory,
        found: Sequence[Anomaly],
        th: ThresholdsConfig,
        report_days: int = 7,
    ) -> None:
        self.reports += 1
        for a in found:
            self.seen.setdefault(a.code, Counter())[a.severity] += 1
            if a.score is not None:
                self.scores.setdefault(a.code, []).append(a.score)
        view = ingest_view(h)  # what ingest judges (ADR 0038)
        if weak_usage_drop(view, th) is not None:
            self.weak_drops += 1
        for sp in usage_rate_spans(view, th):
            key = f"{report_days}d/{sp.reports}"
            self.spans.setdefault(key, []).append((sp.z, sp.drop, sp.z_limit, sp.floor))

    def span_rows(self) -> dict[str, object]:
        """Per span kind: the honest scores' spread and lowest value, the lowest with a
        drop of the span's floor or more, and how many reach their threshold past it."""
        rows: dict[str, object] = {}
        for key, got in sorted(self.spans.items()):
            zs = [z for z, _, _, _ in got]
            past_floor = [z for z, drop, _, floor in got if drop >= floor]
            rows[key] = {
                "n": len(zs),
                "sd": round(statistics.pstdev(zs), 3) if len(zs) > 1 else None,
                "min": round(min(zs), 3),
                "min_past_floor": round(min(past_floor), 3) if past_floor else None,
                "alarms": sum(1 for z, drop, lim, floor in got if drop >= floor and z <= -lim),
            }
        return rows

    def as_dict(self) -> dict[str, object]:
        n = self.reports
        rows: dict[str, object] = {}
        for code, sev in sorted(self.seen.items()):
            k = sev["warning"] + sev["critical"]
            lo, hi = wilson(k, n)
            sc = self.scores.get(code, [])
            rows[code] = {
                "info": sev["info"],
                "alarm": k,
                "alarm_ci95": [round(lo, 4), round(hi, 4)],
                "score_min": round(min(sc), 3) if sc else None,
                "score_max": round(max(sc), 3) if sc else None,
            }
        lo, hi = wilson(self.weak_drops, n)
        return {
            "honest_reports": n,
            "budget": BUDGET,
            "codes": rows,
            "weak_usage_drop": {"k": self.weak_drops, "ci95": [round(lo, 4), round(hi, 4)]},
            "usage_spans": self.span_rows(),
        }

    def merge(self, other: Calibration) -> None:
        self.reports += other.reports
        for code, sev in other.seen.items():
            self.seen.setdefault(code, Counter()).update(sev)
        for code, sc in other.scores.items():
            self.scores.setdefault(code, []).extend(sc)
        self.weak_drops += other.weak_drops
        for key, got in other.spans.items():
            self.spans.setdefault(key, []).extend(got)


def calibrate_dir(directory: Path, th: ThresholdsConfig = THRESHOLDS) -> Calibration:
    """Score every honest report (clean, and each legitimate case's judged report).

    Development seeds only: a held-out seed here would leak it into the thresholds.
    """
    cal = Calibration()
    for path in sorted(directory.glob("seed-*.pkl")):
        seed = int(path.stem[5:])
        if seed not in DEV_SEEDS and seed not in DEV_TEAM_SEEDS:
            raise SystemExit(
                f"calibrate reads development seeds only ({DEV_SEEDS[0]}-{DEV_SEEDS[-1]}); "
                f"found {path.name}. Move held-out case files elsewhere and run again"
            )
        for run in load_runs(path):
            if run.case != "clean" and run.case not in LEGIT:
                continue
            main = run.main
            indices = (
                range(MIN_HISTORY, len(main.reports))
                if run.case == "clean"
                else [len(main.reports) - 1]
            )
            for i in indices:
                cal.add(prefix(main, i + 1), judge(main, i, run.others, th), th, run.report_days)
    return cal


def _fast_tmp() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def markdown(figures: dict[str, object]) -> str:
    """The figures as the tables of docs/benchmarks.md."""
    lines = ["| case | flagged / histories | rate | 95 % CI |", "|---|---|---|---|"]
    clean = figures["clean_reports"]
    assert isinstance(clean, dict)
    lines.append(
        f"| clean reports | {clean['k']} / {clean['n']} | {clean['rate'] * 100:.1f} % | "
        f"{clean['ci95'][0] * 100:.1f}-{clean['ci95'][1] * 100:.1f} % |"
    )
    for section in ("legit", "attacks"):
        rows = figures[section]
        assert isinstance(rows, dict)
        for case, r in rows.items():
            lines.append(
                f"| {case} | {r['k']} / {r['n']} | {r['rate'] * 100:.0f} % | "
                f"{r['ci95'][0] * 100:.0f}-{r['ci95'][1] * 100:.0f} % |"
            )
    first = figures.get("attacks_first_report")
    if isinstance(first, dict) and first:
        lines += ["", "| attack | found by its first report | 95 % CI |", "|---|---|---|"]
        for case, r in first.items():
            lines.append(
                f"| {case} | {r['k']} / {r['n']} | "
                f"{r['ci95'][0] * 100:.0f}-{r['ci95'][1] * 100:.0f} % |"
            )
    teams = figures.get("by_team_size")
    if isinstance(teams, dict) and teams:
        lines += ["", "| case | team | flagged / histories | 95 % CI |", "|---|---|---|---|"]
        for case, buckets in teams.items():
            for label, r in buckets.items():
                lines.append(
                    f"| {case} | {label} | {r['k']} / {r['n']} | "
                    f"{r['ci95'][0] * 100:.0f}-{r['ci95'][1] * 100:.0f} % |"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulate")
    sim.add_argument(
        "--seeds",
        default="dev",
        help="dev | held-out | held-out-honest | held-out-usage | dev-teams | held-out-teams"
        " | FIRST-LAST",
    )
    sim.add_argument("--out", type=Path, required=True)
    sim.add_argument(
        "--cases", nargs="*", help="default: every case (held-out-usage: the usage attacks)"
    )
    sim.add_argument("--progress", action="store_true")
    sim.add_argument(
        "--teams-only", action="store_true", help="only sites with two or more features"
    )
    jd = sub.add_parser("judge")
    jd.add_argument("dir", type=Path, nargs="+", help="directories of case files")
    jd.add_argument("--jobs", type=int, default=1, help="sites judged at once")
    jd.add_argument("--json", type=Path)
    jd.add_argument("--markdown", action="store_true")
    jd.add_argument(
        "--only",
        metavar="PREFIX",
        help="count only alarms whose code starts with PREFIX (one rule's verdict)",
    )
    cal = sub.add_parser("calibrate", help="honest development reports' scores per detector")
    cal.add_argument("dir", type=Path, nargs="+", help="directories of case files")
    args = ap.parse_args(argv)
    if args.cmd == "simulate":
        cases = args.cases
        if cases is None:
            cases = USAGE_ATTACKS if args.seeds == "held-out-usage" else (*LEGIT, *ATTACKS)
        simulate(
            _seeds(args.seeds),
            args.out,
            cases,
            progress=args.progress,
            teams_only=args.teams_only,
        )
        return 0
    if args.cmd == "calibrate":
        total = Calibration()
        for d in args.dir:
            total.merge(calibrate_dir(d))
        print(json.dumps(total.as_dict(), indent=2, sort_keys=True))
        return 0
    t0 = time.monotonic()
    figures = judge_dirs(args.dir, jobs=args.jobs, only=args.only).as_dict()
    if args.only:
        figures["only"] = args.only
    figures["seconds"] = round(time.monotonic() - t0, 1)
    figures["seeds"] = sorted(int(p.stem[5:]) for p in case_files(args.dir))
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(markdown(figures) if args.markdown else text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def _seeds(spec: str) -> Sequence[int]:
    if spec == "dev":
        return DEV_SEEDS
    if spec == "held-out":
        return HELD_OUT_SEEDS
    if spec == "held-out-honest":
        return HELD_OUT_HONEST_SEEDS
    if spec == "held-out-usage":
        return HELD_OUT_USAGE_SEEDS
    if spec == "dev-teams":
        return DEV_TEAM_SEEDS
    if spec == "held-out-teams":
        return HELD_OUT_TEAM_SEEDS
    lo, _, hi = spec.partition("-")
    return range(int(lo), int(hi or lo) + 1)


if __name__ == "__main__":
    # Run the imported module, not this script's copy, so pickled CaseRuns name
    # ``anomaly_eval.CaseRun`` whoever loads them later.
    import anomaly_eval

    raise SystemExit(anomaly_eval.main())
