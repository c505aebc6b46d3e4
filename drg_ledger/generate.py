"""Synthetic event files for a pool's year: what a Chinese city's HIS systems and bureau would send.

`generate(path, cases=..., hospitals=..., year=..., seed=...)` writes one canonical JSON
envelope per line (EVENTS.md), streaming: memory does not grow with `cases`, so the same
code writes 100 cases for a unit test and 15 million for a load test. The output is a
pure function of the arguments (`random.Random(seed)`).

What a file holds, in the order written (arrival order must not matter to the ledger,
EVENTS.md "Order of arrival", so some events are deliberately out of place):

- the pool's shipped policy versions (`ledger/policies/<pool>.jsonl`) except the high-tech
  catalogue, which is written in the middle of the cases with its real `recorded_at`
  (2021-05-11, seed 000) when it covers the whole year (2020, 2021). For a later year,
  which it covers in part (2022) or not at all, a synthetic copy is re-dated to that
  year and recorded 11 May of the following year, as the real one was, so every year
  tells the same story. A year the pool's other shipped policies do not cover (e.g.
  Panzhihua before 2020) is refused with a ValueError;
- `HospitalRegistered` (grades about 10% 3A, 10% 3B, 25% 2A, 20% 2B, 35% level 1);
- the year's `BudgetSet`, sized at 0.7 x the expected fund share of the year's costs;
- monthly `PrepaymentMade` per hospital (80% of its expected share of the budget);
- `CaseSubmitted` in discharge order, with revisions, withdrawals and review verdicts
  recorded later (some verdicts placed before their case, some superseded verdicts
  after the verdict that supersedes them);
- the January declaration of the following year (seed 000 四): two `CoefficientChanged`
  effective over the year, recorded 20 January of the next year.

Lines are built as dicts (or, for cases, a template) and dumped the way
`ledger.events.canonical_json` dumps a parsed event; a test checks every line of a
generated file equals `canonical_json(parse_event(line))`.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import io
import json
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any, Callable

from drg_ledger.policy_files import POLICIES
from ledger.catalogue import normalise_code
from ledger.events import canonical_text, parse_event

ZONE = "+08:00"
"""Every generated timestamp is Beijing time, as the HIS and the bureau write it."""

GRADES = ("3A", "3B", "2A", "2B", "1")
GRADE_SHARES = {"3A": 0.10, "3B": 0.10, "2A": 0.25, "2B": 0.20, "1": 0.35}
"""Share of hospitals per grade; a city pool has few tertiary hospitals and many small ones."""
GRADE_SIZE = {"3A": 10.0, "3B": 5.0, "2A": 2.5, "2B": 1.5, "1": 0.5}
"""Relative inpatient volume per grade: tertiary hospitals treat about half a city's cases."""
GRADE_COST = {"3A": 1.10, "3B": 1.00, "2A": 0.92, "2B": 0.88, "1": 0.80}
"""Cost level per grade relative to the group average (tertiary care costs more)."""

CATALOGUE_SHARE = 0.05
"""Share of a 3A/3B hospital's cases treated with a listed high-tech procedure (seed 000)."""
CATALOGUE_SHARE_2A = 0.005
"""A few 2A cases carry a catalogue code too: the catalogue must not match them."""
UNGROUPED_SHARE = 0.003
REVISION_SHARE = 0.03
THIRD_REVISION_SHARE = 0.2
WITHDRAWAL_SHARE = 0.01
VERDICT_SHARE = 0.02
SUPERSEDED_SHARE = 0.2
VERDICT_FIRST_SHARE = 0.1
BILATERAL_SHARE_SURGICAL = 0.045
MULTI_SITE_SHARE_SURGICAL = 0.045
PERSONAL_PAID = (0.10, 0.35)
BUDGET_FACTOR = 0.7
"""B = 0.7 x expected (total cost - personal payments): the fund budget is tighter than costs."""
PREPAID_SHARE = 0.8
MAX_DELAY_CASES = 5000
"""Events recorded later are written at most this many cases later: memory stays bounded."""
CHUNK_LINES = 2000
DAY0 = 40
"""Index of 1 January in the generator's table of ISO dates (admissions start up to 30 days before)."""

OUTCOME_CYCLE = "VUVSVVUVIVVUVSVVUVSV"
"""Verdict outcomes in turn: 12 violations, 4 upheld, 3 special reviews, 1 incentive per 20."""
OUTCOMES = {"V": "violation", "U": "upheld", "S": "special_review_approved", "I": "incentive_approved"}
VIOLATIONS = (
    "bed_blocking",
    "split_hospitalisation",
    "cost_shifting",
    "insufficient_service",
    "shirking_severe",
    "upcoding",
    "fraud",
    "other",
)
REVIEWERS = ("市医保中心审核科", "DRG专家评审组", "第三方稽核机构", "市医保局稽核科")
WITHDRAWAL_REASONS = ("重复上传", "误录入门诊病例", "患者转院后合并结算", "结算信息有误，撤回重传")

MEDICAL_CODES = ("88.7101", "87.0300", "89.5200", "99.1800", "87.4400", "89.6500", "99.0400")
SURGICAL_CODES = {
    "B": "01.3901", "C": "13.4100", "D": "28.2x00", "E": "32.2900", "F": "37.2200", "G": "45.2300",
    "H": "51.2300", "I": "81.5400", "J": "85.2300", "K": "06.2x00", "L": "56.0x00", "M": "60.2900",
    "N": "68.4100", "O": "74.9900", "P": "96.0401", "Q": "07.8000", "V": "86.2201", "Z": "54.1100",
}  # fmt: skip
DIAGNOSES = {
    "B": "I63.900", "C": "H33.000", "D": "H66.900", "E": "J18.900", "F": "I20.000", "G": "K92.200",
    "H": "K80.100", "I": "M17.900", "J": "C50.900", "K": "E11.900", "L": "N39.000", "M": "N40.x00",
    "N": "C53.900", "O": "O82.000", "P": "P22.000", "Q": "D15.000", "R": "C34.900", "V": "T14.100",
    "X": "Z51.500", "Y": "B24.x01", "Z": "T07.x00", "0": "R69.x00",
}  # fmt: skip

PLACES = {
    "panzhihua": ("攀枝花", ("东区", "西区", "仁和区", "米易县", "盐边县"),
                  ("炳草岗", "大渡口", "银江", "清香坪", "平地", "攀莲", "红格", "新九", "渔门", "同德")),
    "xuancheng": ("宣城", ("宣州区", "郎溪县", "广德市", "宁国市", "泾县", "绩溪县", "旌德县"),
                  ("水阳", "孙埠", "梅渚", "桃州", "港口", "云岭", "华阳", "蔡家桥", "狸桥", "洪林")),
}  # fmt: skip
"""[synthetic] Place names for hospital names; the hospitals themselves are invented."""


@dataclass
class GenerateSummary:
    """What `generate` wrote: counts per event type, size and speed."""

    pool: str
    year: int
    seed: int
    cases: int
    hospitals: int
    counts: dict[str, int]
    events: int
    bytes: int
    seconds: float
    budget: str
    catalogue: str  # "shipped", "redated" or "none"
    features: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["events_per_second"] = round(self.events_per_second)
        return out


# --------------------------------------------------------------------------- the pool


@dataclass(frozen=True, slots=True)
class _Group:
    code: str
    base_points: float
    average_cost: float
    stable: bool
    kind: str  # "medical", "surgical" (incl. non-OR procedures) or "unstable"
    catalogue: bool


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    drg_code: str
    codes: tuple[str, ...]
    combined: tuple[str, ...]


@dataclass
class _Pool:
    name: str
    policy_lines: list[str]  # shipped lines, canonical, catalogue excluded
    catalogue: dict[str, Any] | None  # the shipped catalogue envelope
    groups: list[_Group]
    ac_all: float
    grade_coefficients: dict[str, float]
    rows: list[_Row]
    first_day: date  # first day the drg_table covers: hospitals are registered before it


def _drg_kind(code: str, stable: bool) -> str:
    # CHS-DRG: the ADRG's second letter A-J is surgery, K-Q non-OR procedures, R-Z medical.
    if not stable:
        return "unstable"
    return "medical" if code[1] >= "R" else "surgical"


def _load_pool(pool: str, year: int) -> _Pool:
    path = POLICIES / f"{pool}.jsonl"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in POLICIES.glob("*.jsonl")))
        raise ValueError(f"no shipped policies for pool {pool!r} (known: {known})")
    lines: list[str] = []
    catalogue = None
    table: dict[str, Any] | None = None
    coefficients: dict[str, Any] | None = None
    versions: dict[str, list[tuple[date, date | None]]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        event = parse_event(raw)  # a broken shipped file should fail here, not in the ledger
        p = event.payload
        component = p.component.value
        versions.setdefault(component, []).append((p.effective_from, p.effective_to))
        d = json.loads(raw)
        if component == "high_tech_catalogue":
            catalogue = d
            continue
        lines.append(_dumps(d))
        if component == "drg_table" and (table is None or p.effective_from <= date(year, 1, 1)):
            table = d["payload"]
        if component == "coefficients" and (coefficients is None or p.effective_from <= date(year, 1, 1)):
            coefficients = d["payload"]["body"]
    missing = [
        c
        for c in ("drg_table", "coefficients", "case_rules", "penalty_rules", "clearing_rules")
        if not _covers_year(versions.get(c, []), year)
    ]
    if missing or table is None or coefficients is None:
        raise ValueError(
            f"the shipped policies of pool {pool} do not cover {year} for {', '.join(missing) or 'drg_table'}; "
            "generate a year they cover"
        )
    rows: list[_Row] = []
    if catalogue is not None:
        for r in catalogue["payload"]["body"]["rows"]:
            rows.append(_Row(r["seq"], r["drg_code"], tuple(r["procedure_codes"]), tuple(r["combined_with_codes"])))
    catalogue_drgs = {r.drg_code for r in rows}
    groups = [
        _Group(
            g["drg_code"],
            float(g["base_points"]),
            float(g["average_cost"]),
            bool(g["stable"]),
            _drg_kind(g["drg_code"], bool(g["stable"])),
            g["drg_code"] in catalogue_drgs,
        )
        for g in table["body"]["groups"]
    ]
    return _Pool(
        pool,
        lines,
        catalogue,
        groups,
        float(table["body"]["overall_average_cost"]),
        {k: float(v) for k, v in coefficients["grades"].items()},
        rows,
        date.fromisoformat(table["effective_from"]),
    )


def _covers_year(intervals: list[tuple[date, date | None]], year: int) -> bool:
    day = date(year, 1, 1)
    while day.year == year:
        if not any(f <= day and (t is None or day <= t) for f, t in intervals):
            return False
        day += timedelta(days=1)
    return True


def _dumps(d: dict[str, Any]) -> str:
    """The canonical form `ledger.events.canonical_json` gives a parsed event."""
    return canonical_text(d)


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _stamp(day: date, seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{day.isoformat()}T{h:02d}:{m:02d}:{s:02d}{ZONE}"


# --------------------------------------------------------------------------- hospitals


@dataclass(frozen=True, slots=True)
class _Hospital:
    hospital_id: str
    name: str
    grade: str
    size: float


def _grade_counts(m: int) -> list[str]:
    """Grades for m hospitals by largest remainder, at least one of each when m >= 5."""
    exact = {g: GRADE_SHARES[g] * m for g in GRADES}
    counts = {g: int(exact[g]) for g in GRADES}
    if m >= 5:
        for g in GRADES:
            counts[g] = max(counts[g], 1)
    while sum(counts.values()) < m:
        g = max(GRADES, key=lambda g: (exact[g] - counts[g], -GRADES.index(g)))
        counts[g] += 1
    while sum(counts.values()) > m:
        g = max((g for g in GRADES if counts[g] > 1), key=lambda g: (counts[g] - exact[g], GRADES.index(g)))
        counts[g] -= 1
    return [g for g in GRADES for _ in range(counts[g])]


def _hospital_names(city: str, districts: tuple[str, ...], towns: tuple[str, ...], grade: str) -> list[str]:
    """Every name a hospital of this grade might have in the city, in a fixed order."""
    if grade == "3A":
        names = [f"{city}市中心医院", f"{city}市中西医结合医院"] + [f"{city}市第{_cn(n)}人民医院" for n in range(1, 10)]
    elif grade == "3B":
        names = [f"{city}市中医医院", f"{city}市妇幼保健院", f"{city}市骨科医院", f"{city}市肿瘤医院", f"{city}市传染病医院"]
        names += [f"{city}市{d}人民医院" for d in districts]
    elif grade == "2A":
        kinds = ("人民医院", "中医医院", "妇幼保健院", "第二人民医院", "中西医结合医院", "骨科医院")
        names = [f"{d}{kind}" for d in districts for kind in kinds]
    elif grade == "2B":
        names = [f"{d}{t}{kind}" for d in districts for t in towns for kind in ("医院", "职工医院")]
    else:
        names = [f"{d}{t}{kind}" for d in districts for t in towns for kind in ("镇卫生院", "社区卫生服务中心")]
    return names


def _hospitals(pool: str, m: int, seed: int) -> list[_Hospital]:
    """[synthetic] The pool's hospitals: invented names, grades by the city's usual mix.

    Own random stream, independent of the year: the same seed registers the same hospitals
    every year, so files of several years can go into one store.
    """
    rng = random.Random(f"{seed}:{pool}:hospitals")
    city, districts, towns = PLACES.get(pool, (pool.capitalize(), ("城区",), ("城关",)))
    # Hospital ids are global in the ledger: each pool gets its own prefix (H for Panzhihua).
    prefix = "H" if pool == "panzhihua" else pool[0].upper()
    width = max(3, len(str(m)))
    out: list[_Hospital] = []
    used: set[str] = set()
    pools: dict[str, list[str]] = {}
    for i, grade in enumerate(_grade_counts(m), start=1):
        if grade not in pools:
            pools[grade] = _hospital_names(city, districts, towns, grade)
            rng.shuffle(pools[grade])
        free = [n for n in pools[grade] if n not in used]
        name = free[0] if free else f"{pools[grade][i % len(pools[grade])]}（第{i}院区）"
        used.add(name)
        size = GRADE_SIZE[grade] * rng.lognormvariate(0.0, 0.3)
        out.append(_Hospital(f"{prefix}{i:0{width}d}", name, grade, size))
    return out


def _cn(n: int) -> str:
    digits = "零一二三四五六七八九"
    if n < 10:
        return digits[n]
    if n < 20:
        return "十" + (digits[n % 10] if n % 10 else "")
    if n < 100:
        return digits[n // 10] + "十" + (digits[n % 10] if n % 10 else "")
    return str(n)


# --------------------------------------------------------------------------- case mix


def _group_weight(g: _Group, grade: str) -> float:
    """How common a group is at a grade: ordinary medical groups most, big surgery rarer.

    Level-1 hospitals treat mostly medical cases; catalogue groups are tertiary work
    (seed 000: groups where tertiary hospitals treat >= 70% of the cases).
    """
    level = grade[0]
    if g.kind == "unstable":
        w = 0.6 if level != "1" else 0.2
    elif g.catalogue:
        w = {"3A": 0.6, "3B": 0.45, "2A": 0.15, "2B": 0.08, "1": 0.01}[grade]
    elif g.kind == "medical":
        w = {"3A": 8.0, "3B": 9.0, "2A": 10.0, "2B": 10.0, "1": 12.0}[grade]
    else:
        w = {"3A": 4.0, "3B": 4.0, "2A": 3.0, "2B": 2.0, "1": 0.4}[grade]
    return w * min(1.0, 150.0 / max(g.base_points, 1.0)) ** 0.7


@dataclass
class _Mix:
    """Cumulative weights for fast draws, per grade."""

    groups: list[_Group]
    cum: dict[str, list[float]]
    by_code: dict[str, _Group]
    siblings: dict[str, list[_Group]]
    secondary: list[_Group]

    @classmethod
    def build(cls, groups: list[_Group]) -> _Mix:
        cum: dict[str, list[float]] = {}
        for grade in GRADES:
            acc, out = 0.0, []
            for g in groups:
                acc += _group_weight(g, grade)
                out.append(acc)
            cum[grade] = out
        siblings: dict[str, list[_Group]] = {}
        for g in groups:
            siblings.setdefault(g.code[:3], []).append(g)
        # Secondary operation groups are groups "without complications" (code ending 5 or 9).
        secondary = [g for g in groups if g.kind == "surgical" and g.code[-1] in "59"]
        return cls(groups, cum, {g.code: g for g in groups}, siblings, secondary)

    def draw(self, rng: random.Random, grade: str) -> _Group:
        cum = self.cum[grade]
        return self.groups[bisect.bisect_right(cum, rng.random() * cum[-1])]

    def probabilities(self, grade: str) -> list[float]:
        cum = self.cum[grade]
        total = cum[-1]
        return [(c - (cum[i - 1] if i else 0.0)) / total for i, c in enumerate(cum)]


def _mean_cost_factor() -> float:
    # lognormal(-s^2/2, s) has mean 1; 1% of cases x U(2.5, 5), 1% x U(0.1, 0.3).
    return 1.0 + 0.01 * (3.75 - 1.0) + 0.01 * (0.2 - 1.0)


def _expected_cost(pool: _Pool, mix: _Mix, grade: str) -> float:
    """Expected total cost of one case at a grade (yuan), for sizing budget and prepayments."""
    ordinary = sum(p * g.average_cost for p, g in zip(mix.probabilities(grade), mix.groups))
    if grade in ("3A", "3B") and pool.rows:
        coded = sum(mix.by_code[r.drg_code].average_cost for r in pool.rows) / len(pool.rows)
        ordinary = (1 - CATALOGUE_SHARE) * ordinary + CATALOGUE_SHARE * coded
    ordinary = (1 - UNGROUPED_SHARE) * ordinary + UNGROUPED_SHARE * pool.ac_all
    return ordinary * GRADE_COST[grade] * _mean_cost_factor()


# --------------------------------------------------------------------------- writer


class _Writer:
    """Buffered line writer counting events and bytes, reporting progress per chunk."""

    def __init__(self, out: IO[Any], binary: bool, on_progress: Callable[[int], None] | None) -> None:
        self.out, self.binary, self.on_progress = out, binary, on_progress
        self.buf: list[str] = []
        self.counts = Counter[str]()
        self.events = 0
        self.bytes = 0

    def write(self, event_type: str, line: str) -> None:
        buf = self.buf
        buf.append(line)
        self.counts[event_type] += 1
        if len(buf) >= CHUNK_LINES:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        data = "\n".join(self.buf) + "\n"
        encoded = data.encode("utf-8")
        self.out.write(encoded if self.binary else data)
        self.bytes += len(encoded)
        self.events += len(self.buf)
        self.buf.clear()
        if self.on_progress is not None:
            self.on_progress(self.events)


def _open(path_or_stream: Any) -> tuple[IO[Any], bool, bool]:
    """(stream, binary, we_own_it)."""
    if isinstance(path_or_stream, (str, os.PathLike)):
        return open(path_or_stream, "wb"), True, True  # noqa: SIM115 - closed by generate
    stream = path_or_stream
    binary = isinstance(stream, (io.RawIOBase, io.BufferedIOBase)) or "b" in getattr(stream, "mode", "")
    return stream, binary, False


# --------------------------------------------------------------------------- generate


def generate(
    path_or_stream: str | os.PathLike[str] | IO[Any],
    *,
    cases: int,
    hospitals: int,
    year: int,
    seed: int,
    pool: str = "panzhihua",
    on_progress: Callable[[int], None] | None = None,
) -> GenerateSummary:
    """Write a pool's year of synthetic events, one canonical JSON envelope per line.

    `on_progress(n)` is called with the number of events written so far, every few
    thousand lines and once at the end. Deterministic for (`cases`, `hospitals`, `year`,
    `seed`, `pool`); memory is constant in `cases`.
    """
    if cases < 0:
        raise ValueError("cases: must be >= 0")
    if hospitals < 1:
        raise ValueError("hospitals: must be >= 1")
    started = time.perf_counter()
    stream, binary, owned = _open(path_or_stream)
    try:
        writer = _Writer(stream, binary, on_progress)
        gen = _Generator(_load_pool(pool, year), cases, hospitals, year, seed, writer)
        gen.run()
        writer.flush()
        if on_progress is not None and writer.events == 0:
            on_progress(0)
    finally:
        if owned:
            stream.close()
    return GenerateSummary(
        pool=pool,
        year=year,
        seed=seed,
        cases=cases,
        hospitals=hospitals,
        counts=dict(sorted(writer.counts.items())),
        events=writer.events,
        bytes=writer.bytes,
        seconds=time.perf_counter() - started,
        budget=gen.budget,
        catalogue=gen.catalogue_mode,
        features=dict(sorted(gen.features.items())),
    )


def expected_events(cases: int, hospitals: int) -> int:
    """About how many events `generate` writes (for a progress bar's total)."""
    per_case = (
        1
        + REVISION_SHARE * (1 + THIRD_REVISION_SHARE)
        + WITHDRAWAL_SHARE
        + VERDICT_SHARE * (1 + SUPERSEDED_SHARE)
    )
    return int(cases * per_case) + hospitals * 13 + 10


class _Generator:
    """One run: the random stream, the counters, the delay heap."""

    def __init__(self, pool: _Pool, cases: int, hospitals: int, year: int, seed: int, writer: _Writer) -> None:
        self.pool, self.n, self.year, self.seed, self.w = pool, cases, year, seed, writer
        self.rng = random.Random(f"{seed}:{pool.name}:{year}:{cases}:{hospitals}")
        self.hospitals = _hospitals(pool.name, hospitals, seed)
        self.mix = _Mix.build(pool.groups)
        self.features = Counter[str]()
        self.heap: list[tuple[int, int, str, str]] = []
        self.seq = 0
        self.days_in_year = (date(year + 1, 1, 1) - date(year, 1, 1)).days
        self.first = date(year, 1, 1)
        self.catalogue_codes = {normalise_code(c) for r in pool.rows for c in r.codes + r.combined}
        # ISO dates from 40 days before the year (admissions) to 200 days after (late records).
        self.day_iso = [(self.first + timedelta(days=d)).isoformat() for d in range(-DAY0, self.days_in_year + 200)]
        self.clock = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}{ZONE}" for s in range(8 * 3600, 20 * 3600)]
        self.surgical_codes = {
            letter: SURGICAL_CODES.get(letter, "54.1100")
            if normalise_code(SURGICAL_CODES.get(letter, "54.1100")) not in self.catalogue_codes
            else "54.1100"
            for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        }
        self.row_order = list(range(len(pool.rows)))
        self.rng.shuffle(self.row_order)
        self.coded = 0
        self.combo_turn: Counter[int] = Counter()
        self.verdicts = 0
        self.violations = 0
        self.turns = Counter[str]()
        self.last_case: dict[str, str] = {}
        self.last_any: str | None = None
        self.budget = "0"
        self.monthly: list[int] = []
        self.catalogue_mode = "none"
        self.counter = [0] * len(self.hospitals)
        sizes = [h.size for h in self.hospitals]
        self.hospital_cum = list(_accumulate(sizes))
        # Cases per day of year: `per_day` sizes the write delay of events recorded later.
        self.per_day = max(cases / self.days_in_year, 1e-9)

    # ------------------------------------------------------------------ framing

    def run(self) -> None:
        w = self.w
        for line in self.pool.policy_lines:
            w.write("PolicyVersionPublished", line)
        self._register()
        self._budget_and_prepayments()
        catalogue_at = self.n // 2
        prepay_month = 1
        # Prepayments are paid on the 15th: written when the cases reach that day.
        prepay_days = [(date(self.year, m, 15) - self.first).days for m in range(1, 13)] + [1 << 30]
        ri, heap, case = self.rng.random, self.heap, self._case
        scale, last = self.days_in_year / max(self.n, 1), self.days_in_year - 1
        for i in range(self.n):
            if i == catalogue_at:
                self._catalogue()
            # Discharges in order over the year, so the file reads like a year of HIS uploads.
            d = min(int((i + ri()) * scale), last)
            while d >= prepay_days[prepay_month - 1]:
                self._prepayments(prepay_month)
                prepay_month += 1
            case(i, d)
            while heap and heap[0][0] <= i:
                _, _, event_type, line = heapq.heappop(heap)
                w.write(event_type, line)
        if self.n == 0:
            self._catalogue()
        while prepay_month <= 12:
            self._prepayments(prepay_month)
            prepay_month += 1
        self._declarations()
        while self.heap:
            _, _, event_type, line = heapq.heappop(self.heap)
            w.write(event_type, line)

    def _later(self, i: int, days: float, event_type: str, line: str, extra: int = 0) -> None:
        """Write an event recorded `days` after case i's about this many cases later (bounded)."""
        delay = min(int(days * self.per_day), MAX_DELAY_CASES) + extra
        self.seq += 1
        heapq.heappush(self.heap, (i + max(delay, 1), self.seq, event_type, line))

    def _envelope(self, event_id: str, event_type: str, recorded_at: str, source: str, payload: dict[str, Any]) -> str:
        return _dumps(
            {
                "event_id": event_id,
                "event_type": event_type,
                "payload": payload,
                "recorded_at": recorded_at,
                "schema_version": 1,
                "source": source,
            }
        )

    # ------------------------------------------------------------------ operator events

    def _register(self) -> None:
        registered = self.pool.first_day - timedelta(days=12)
        for h in self.hospitals:
            payload = {"grade": h.grade, "hospital_id": h.hospital_id, "name": h.name, "pool": self.pool.name}
            line = self._envelope(
                f"reg-{self.pool.name}-{h.hospital_id}",
                "HospitalRegistered",
                _stamp(registered, 9 * 3600),
                "operator:registry",
                payload,
            )
            self.w.write("HospitalRegistered", line)

    def _budget_and_prepayments(self) -> None:
        """B = 0.7 x expected fund share of the year's costs; prepayments 80% of each hospital's share."""
        total_size = self.hospital_cum[-1] if self.hospital_cum else 1.0
        personal = sum(PERSONAL_PAID) / 2
        costs = [self.n * h.size / total_size * _expected_cost(self.pool, self.mix, h.grade) for h in self.hospitals]
        fund = sum(costs) * (1 - personal)
        budget = max(round(BUDGET_FACTOR * fund, -3), 1000.0)
        self.budget = _money(int(budget) * 100)
        self.monthly = [
            int(PREPAID_SHARE * budget * c / sum(costs) / 12 * 100) if sum(costs) > 0 else 0 for c in costs
        ]
        line = self._envelope(
            f"budget-{self.pool.name}-{self.year}",
            "BudgetSet",
            _stamp(date(self.year, 1, 6), 9 * 3600),
            "operator:budget",
            {"amount": self.budget, "pool": self.pool.name, "year": self.year},
        )
        self.w.write("BudgetSet", line)

    def _prepayments(self, month: int) -> None:
        paid_on = date(self.year, month, 15)
        for h, cents in zip(self.hospitals, self.monthly):
            if cents <= 0:
                continue
            line = self._envelope(
                f"prepay-{self.pool.name}-{h.hospital_id}-{self.year}-{month:02d}",
                "PrepaymentMade",
                _stamp(paid_on, 10 * 3600),
                "operator:fund",
                {"amount": _money(cents), "hospital_id": h.hospital_id, "paid_on": paid_on.isoformat(), "pool": self.pool.name},
            )
            self.w.write("PrepaymentMade", line)

    def _catalogue(self) -> None:
        """The high-tech catalogue (seed 000), written mid-file: arrival order must not matter."""
        shipped = self.pool.catalogue
        if shipped is None:
            return
        p = shipped["payload"]
        start, end = date(self.year, 1, 1), date(self.year, 12, 31)
        frm = date.fromisoformat(p["effective_from"])
        to = date.fromisoformat(p["effective_to"]) if p["effective_to"] else None
        if frm <= start and (to is None or end <= to):
            self.catalogue_mode = "shipped"
            self.w.write("PolicyVersionPublished", _dumps(shipped))
            return
        # [synthetic] The real catalogue does not cover this year: re-date a copy the way the
        # real one was issued, retroactive to 1 January and recorded 11 May of the next year.
        self.catalogue_mode = "redated"
        copy = json.loads(json.dumps(shipped))
        copy["event_id"] = f"{shipped['event_id']}-synthetic-{self.year}"
        copy["recorded_at"] = f"{self.year + 1}-05-11T00:00:00{ZONE}"
        copy["payload"].update(
            {
                "version": f"{self.year}.1-synthetic",
                "effective_from": start.isoformat(),
                "effective_to": end.isoformat(),
                "note": f"[synthetic] the catalogue of {shipped['event_id']} re-dated to {self.year} by the "
                "generator, recorded 11 May of the next year as seed 000 was",
            }
        )
        self.w.write("PolicyVersionPublished", _dumps(copy))

    def _declarations(self) -> None:
        """January declarations for last year's clearing (seed 000 四), recorded 20 January Y+1.

        One hospital + DRG code (the biggest 3A hospital, for the catalogue group it treats
        most: RULES.md 3 step 1 beats the catalogue) and one DRG code + grade (2A, for a
        common surgical group: step 3).
        """
        rng = self.rng
        recorded = _stamp(date(self.year + 1, 1, 20), 10 * 3600)
        span = {"effective_from": f"{self.year}-01-01", "effective_to": f"{self.year}-12-31"}
        hospital = max(self.hospitals, key=lambda h: (h.grade == "3A", h.grade[0], h.size))
        grades = {h.grade for h in self.hospitals}
        grade = "2A" if "2A" in grades else hospital.grade

        def top(groups: list[_Group], at: str) -> list[_Group]:
            return sorted(groups, key=lambda g: (-_group_weight(g, at), g.code))[:3]

        surgical = [g for g in self.pool.groups if g.kind == "surgical" and not g.catalogue]
        catalogue = [g for g in self.pool.groups if g.catalogue] or surgical
        h_drg = top(catalogue, hospital.grade)[0].code
        g_drg = rng.choice(top(surgical, grade)).code
        declarations = [
            {"hospital_id": hospital.hospital_id, "drg_code": h_drg, "grade": None, "coefficient": "1.25",
             "reason": f"seed 000 四: {hospital.hospital_id} {self.year + 1}年1月申报{h_drg}病组调整系数，用于{self.year}年度清算"},
            {"hospital_id": None, "drg_code": g_drg, "grade": grade, "coefficient": "0.90",
             "reason": f"seed 000 四: {self.year + 1}年1月申报{g_drg}病组{grade}级别调整系数（同病组、同级别、同等调整系数）"},
        ]  # fmt: skip
        for n, body in enumerate(declarations, start=1):
            payload = {"pool": self.pool.name, **body, **span}
            line = self._envelope(
                f"coef-{self.pool.name}-{self.year}-decl-{n}", "CoefficientChanged", recorded, "operator:coefficients", payload
            )
            self.w.write("CoefficientChanged", line)

    # ------------------------------------------------------------------ cases

    def _clock(self) -> str:
        """A time of day in office hours, with the zone."""
        return self.clock[int(self.rng.random() * len(self.clock))]

    def _case(self, i: int, d: int) -> None:
        # The hot loop: one call per case. Plain floats and local names for speed; every
        # draw comes from self.rng in a fixed order, so a seed gives the same bytes.
        rng = self.rng
        ri = rng.random
        features = self.features
        cum = self.hospital_cum
        hi = bisect.bisect_right(cum, ri() * cum[-1])
        h = self.hospitals[hi]
        grade = h.grade
        hid = h.hospital_id
        self.counter[hi] += 1
        case_id = f"{hid}-{self.year}-{self.counter[hi]:06d}"
        procedures: list[str]
        coded = False
        group: _Group | None
        u = ri()
        if self.pool.rows and (
            (u < CATALOGUE_SHARE and grade in ("3A", "3B")) or (u < CATALOGUE_SHARE_2A and grade == "2A")
        ):
            group, procedures = self._catalogue_case(grade)
            coded = True
        elif u > 1 - UNGROUPED_SHARE:
            group = None
            procedures = []
            features["ungrouped"] += 1
        else:
            group = self.mix.draw(rng, grade)
            procedures = self._procedures(group)
        if group is None:
            drg, average, kind = "0000", self.pool.ac_all, "unstable"
        else:
            drg, average, kind = group.code, group.average_cost, group.kind
            if kind == "unstable":
                features["unstable_group"] += 1

        cents = self._cost(average, grade, kind)
        personal = int(cents * (PERSONAL_PAID[0] + (PERSONAL_PAID[1] - PERSONAL_PAID[0]) * ri()))
        los = min(30, max(1, int(math.exp(rng.gauss(2.0 if kind == "medical" else 2.2, 0.5)))))
        day_iso = self.day_iso
        delay_days = 1 + int(ri() * 5)
        recorded = f"{day_iso[d + delay_days + DAY0]}T{self._clock()}"
        bilateral = False
        secondary = None
        if kind == "surgical":
            if ri() < BILATERAL_SHARE_SURGICAL:
                bilateral = True
                features["bilateral"] += 1
            if ri() < MULTI_SITE_SHARE_SURGICAL:
                choices = [g for g in self.mix.secondary if g.code != drg]
                if choices:
                    secondary = choices[int(ri() * len(choices))].code
                    features["secondary_drg"] += 1
        diagnosis = DIAGNOSES.get(drg[0] if drg != "0000" else "0", "R69.x00")
        admission = day_iso[d - los + DAY0]
        discharge = day_iso[d + DAY0]
        first = _case_line(
            hid, case_id, 1, admission, discharge, drg, cents, personal, procedures, diagnosis, bilateral, secondary, recorded
        )

        # What happens to the case later: revisions, then a withdrawal or a review.
        later: list[tuple[float, str, str]] = []
        last_day = d + delay_days
        if ri() < REVISION_SHARE:
            revisions = 3 if ri() < THIRD_REVISION_SHARE else 2
            for rev in range(2, revisions + 1):
                last_day += 3 + int(ri() * 28)
                if coded or ri() < 0.6:
                    cents = max(10000, int(cents * rng.uniform(0.85, 1.15)))
                    personal = int(cents * rng.uniform(*PERSONAL_PAID))
                    features["revised_cost"] += 1
                else:
                    drg = self._regroup(drg, grade)
                    features["revised_drg"] += 1
                stamp = f"{day_iso[last_day + DAY0]}T{self._clock()}"
                line = _case_line(
                    hid, case_id, rev, admission, discharge, drg, cents, personal, procedures, diagnosis, bilateral,
                    secondary, stamp,
                )  # fmt: skip
                later.append((last_day - d, "CaseSubmitted", line))
        v = ri()
        if v >= WITHDRAWAL_SHARE + VERDICT_SHARE:
            self.w.write("CaseSubmitted", first)
            for days, event_type, line in later:
                self._later(i, days, event_type, line)
            self.last_case[hid] = self.last_any = case_id
            return
        verdict_first = False
        if v < WITHDRAWAL_SHARE:
            last_day += 1 + int(ri() * 20)
            payload = {"case_id": case_id, "hospital_id": hid, "reason": rng.choice(WITHDRAWAL_REASONS)}
            stamp = f"{day_iso[last_day + DAY0]}T{self._clock()}"
            line = self._envelope(f"his-{case_id}-withdrawn", "CaseWithdrawn", stamp, f"his:{hid}", payload)
            later.append((last_day - d, "CaseWithdrawn", line))
        else:
            verdict_first = ri() < VERDICT_FIRST_SHARE
            points = self._estimate_points(group, grade, cents)
            day = d + delay_days + rng.randint(20, 90)
            first_verdict = self._verdict(case_id, hid, 1, day, points, cents)
            if ri() < SUPERSEDED_SHARE:
                later_day = day + rng.randint(10, 40)
                second = self._verdict(case_id, hid, 2, later_day, points, cents)
                features["superseded_verdict"] += 1
                if ri() < 0.5:
                    # The superseding verdict arrives first: recorded_at, not arrival, decides.
                    features["superseding_verdict_written_first"] += 1
                    later.append((day - d, "ReviewVerdictRecorded", second))
                    later.append((day - d, "ReviewVerdictRecorded", first_verdict))
                else:
                    later.append((day - d, "ReviewVerdictRecorded", first_verdict))
                    later.append((later_day - d, "ReviewVerdictRecorded", second))
            else:
                later.append((day - d, "ReviewVerdictRecorded", first_verdict))

        if verdict_first:
            # The review arrives before the case it names (EVENTS.md "Order of arrival").
            features["verdict_written_before_case"] += 1
            for _, event_type, line in later:
                if event_type == "ReviewVerdictRecorded":
                    self.w.write(event_type, line)
            self._later(i, 0, "CaseSubmitted", first, extra=rng.randint(0, 50))
            for days, event_type, line in later:
                if event_type != "ReviewVerdictRecorded":
                    self._later(i, days, event_type, line)
        else:
            self.w.write("CaseSubmitted", first)
            for days, event_type, line in later:
                self._later(i, days, event_type, line)
        self.last_case[hid] = self.last_any = case_id

    def _catalogue_case(self, grade: str) -> tuple[_Group, list[str]]:
        """A case treated with a listed technology: the row's DRG and one of its codes (seed 000 附件).

        3A/3B cases take the rows in turn (shuffled once per seed), so a few thousand cases
        reach every row, row 37's `6.9501` included; rows 48 and 51 need one code of each
        set, and every other such case brings only the first. 2A cases take a random row
        with complete codes: the catalogue must not match them (it names 三甲 and 三乙 only).
        """
        rng = self.rng
        tertiary = grade in ("3A", "3B")
        if tertiary:
            row = self.pool.rows[self.row_order[self.coded % len(self.row_order)]]
            self.coded += 1
        else:
            row = self.pool.rows[int(rng.random() * len(self.pool.rows))]
        codes = [self._variant(rng.choice(row.codes))]
        if row.combined:
            if tertiary:
                self.combo_turn[row.seq] += 1
            if not tertiary or self.combo_turn[row.seq] % 2 == 1:
                codes.append(self._variant(rng.choice(row.combined)))
                self.features["catalogue_combination_complete"] += 1
            else:
                self.features["catalogue_combination_incomplete"] += 1
        if rng.random() < 0.5:
            codes.append(rng.choice(MEDICAL_CODES))
        self.features[f"catalogue_coded_{grade}"] += 1
        return self.mix.by_code[row.drg_code], codes

    def _variant(self, code: str) -> str:
        """A code as a HIS might print it: case of the `x`, chapter with or without its zero."""
        u = self.rng.random()
        if u < 0.7:
            return code
        if u < 0.85:
            return code.upper() if code != code.upper() else code.lower()
        if len(code) > 2 and code[1] == ".":
            return "0" + code  # `6.9501` -> `06.9501`
        if code[0] == "0" and code[2] == ".":
            return code[1:]  # `06.3907` -> `6.3907`, a spreadsheet's dropped zero
        return code

    def _procedures(self, group: _Group) -> list[str]:
        ri = self.rng.random
        n = len(MEDICAL_CODES)
        if group.kind == "surgical":
            code = self.surgical_codes[group.code[0]]
            return [code, MEDICAL_CODES[int(ri() * n)]] if ri() < 0.5 else [code]
        k = int(ri() * 3)
        if k == 0:
            return []
        a = int(ri() * n)
        if k == 1:
            return [MEDICAL_CODES[a]]
        b = int(ri() * (n - 1))
        return [MEDICAL_CODES[a], MEDICAL_CODES[b + (b >= a)]]

    def _cost(self, average: float, grade: str, kind: str) -> int:
        """Total cost in cents: lognormal around the group's average, with a few outliers."""
        rng = self.rng
        sigma = 0.45 if kind == "medical" else 0.35
        x = average * GRADE_COST[grade] * math.exp(rng.gauss(-sigma * sigma / 2, sigma))
        u = rng.random()
        if u < 0.01:
            x *= rng.uniform(2.5, 5.0)  # complications: a high-ratio case
        elif u < 0.02:
            x *= rng.uniform(0.1, 0.3)  # left early or transferred: a low-ratio case
        return max(10000, int(x * 100 + 0.5))

    def _regroup(self, drg: str, grade: str) -> str:
        """A revision's corrected DRG code: a sibling group (other CC level) when there is one."""
        siblings = [g for g in self.mix.siblings.get(drg[:3], []) if g.code != drg] if drg != "0000" else []
        if siblings:
            return self.rng.choice(siblings).code
        return self.mix.draw(self.rng, grade).code

    def _estimate_points(self, group: _Group | None, grade: str, cents: int) -> float:
        """The reviewer's idea of the case's points, for sizing violating points."""
        if group is None or group.kind == "unstable":
            return cents / 100 / self.pool.ac_all * 100
        return group.base_points * self.pool.grade_coefficients.get(grade, 1.0)

    def _verdict(self, case_id: str, hid: str, n: int, day: int, points: float, cents: int) -> str:
        """A review verdict, outcomes and violation types taken in turn so each appears (seed 003 第十八条)."""
        rng = self.rng
        outcome = OUTCOMES[OUTCOME_CYCLE[self.verdicts % len(OUTCOME_CYCLE)]]
        self.verdicts += 1
        payload: dict[str, Any] = {
            "case_id": case_id,
            "multiplier": None,
            "outcome": outcome,
            "related_case_ids": [],
            "reviewer": rng.choice(REVIEWERS),
            "unreasonable_cost": None,
            "violating_points": None,
            "violation_type": None,
        }
        self.features[f"outcome_{outcome}"] += 1
        if outcome == "violation":
            kind = VIOLATIONS[self.violations % len(VIOLATIONS)]
            self.violations += 1
            turn = self.turns[kind]
            self.turns[kind] += 1
            payload["violation_type"] = kind
            self.features[f"violation_{kind}"] += 1
            v = points * rng.uniform(0.2, 0.7)
            if kind == "bed_blocking":
                v = None  # the whole case's points are the violating points (第十八条(一))
            elif kind in ("split_hospitalisation", "shirking_severe"):
                related = self.last_case.get(hid) or self.last_any
                if related and related != case_id:
                    payload["related_case_ids"] = [related]
                if kind == "shirking_severe":
                    v = points * rng.uniform(0.8, 1.6)  # V covers both admissions (第十八条(四))
            elif kind == "fraud":
                # With and without violating points (then V = P), with and without a multiplier.
                v = points * rng.uniform(0.5, 1.0) if turn % 2 == 0 else None
                payload["multiplier"] = ("3", None, "5", "4")[turn % 4]
                self.features["fraud_without_violating_points"] += v is None
            elif kind == "other":
                payload["multiplier"] = ("1.5", "2", None)[turn % 3]
            if v is not None:
                payload["violating_points"] = f"{v:.2f}"
        elif outcome in ("special_review_approved", "incentive_approved") and rng.random() < 0.5:
            payload["unreasonable_cost"] = _money(int(cents * rng.uniform(0.02, 0.15)))
        recorded = _stamp(self.first + timedelta(days=day), rng.randint(9 * 3600, 17 * 3600))
        return self._envelope(f"review-{case_id}-{n}", "ReviewVerdictRecorded", recorded, "operator:review", payload)


def _case_line(
    hid: str,
    case_id: str,
    revision: int,
    admission: str,
    discharge: str,
    drg: str,
    cents: int,
    personal: int,
    procedures: list[str],
    diagnosis: str,
    bilateral: bool,
    secondary: str | None,
    recorded: str,
) -> str:
    """A CaseSubmitted line, templated in canonical key order for speed (a test checks it is canonical)."""
    procs = ",".join(['"' + c + '"' for c in procedures])
    second = f'"{secondary}"' if secondary is not None else "null"
    return (
        f'{{"event_id":"his-{case_id}-r{revision}","event_type":"CaseSubmitted","payload":{{'
        f'"admission_date":"{admission}","bilateral":{"true" if bilateral else "false"},"case_id":"{case_id}",'
        f'"diagnosis_codes":["{diagnosis}"],"discharge_date":"{discharge}","drg_code":"{drg}",'
        f'"hospital_id":"{hid}","personal_paid":"{personal // 100}.{personal % 100:02d}","procedure_codes":[{procs}],'
        f'"revision":{revision},"secondary_drg_code":{second},"total_cost":"{cents // 100}.{cents % 100:02d}"}},'
        f'"recorded_at":"{recorded}","schema_version":1,"source":"his:{hid}"}}'
    )


def _accumulate(xs: list[float]) -> list[float]:
    acc, out = 0.0, []
    for x in xs:
        acc += x
        out.append(acc)
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m drg_ledger.generate OUT --cases N`: write a file and print the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", type=int, default=4000)
    ap.add_argument("--hospitals", type=int, default=24)
    ap.add_argument("--year", type=int, default=2020)
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--pool", default="panzhihua")
    args = ap.parse_args(argv)
    summary = generate(args.out, cases=args.cases, hospitals=args.hospitals, year=args.year, seed=args.seed, pool=args.pool)
    json.dump(summary.as_json(), sys.stdout, ensure_ascii=False, indent=2)
    print()


if __name__ == "__main__":
    main()
