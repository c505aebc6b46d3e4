"""An event file for the streaming tests: a generated pool-year plus duplicates and bad lines.

`drg_ledger.generate` writes the realistic part (Panzhihua policies, hospitals, budget,
prepayments, cases with revisions, withdrawals and verdicts, and the back-dated 2020
high-tech catalogue in the middle). This module mixes in, at seeded random places:
- 5% duplicates: exact copies of earlier lines (EVENTS.md: same id, same content);
- 1% bad lines, each of a known kind: six the publisher's validation catches (not JSON,
  not UTF-8, unknown event type, bad decimal, missing field, a HIS speaking for another
  hospital) and two only the ledger can refuse (a case of a hospital never registered,
  an event_id already used with other content).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from drg_ledger.generate import generate

EVENTS_PER_CASE = 1.093
"""Events per case the generator writes at its default shares (measured: 18,581 for 17,000)."""

PUBLISH_INVALID = ("truncated_json", "not_utf8", "unknown_event_type", "bad_decimal", "missing_field", "his_for_other")
LEDGER_REFUSED = ("unknown_hospital", "other_content")


@dataclass
class EventFile:
    """What the file holds, by 1-based line number."""

    path: Path
    lines: int = 0
    valid_ids: set[str] = field(default_factory=set)  # every event the ledger must end up with
    penalty_ids: set[str] = field(default_factory=set)  # the PenaltyImposed the ledger derives (RULES.md 4)
    duplicates: int = 0
    bad: dict[int, str] = field(default_factory=dict)  # line -> kind (PUBLISH_INVALID + LEDGER_REFUSED)
    pool: str = "panzhihua"
    years: set[int] = field(default_factory=set)
    hospitals: set[str] = field(default_factory=set)
    catalogue_line: int = 0


def write_event_file(path: Path, events: int, *, seed: int = 7, hospitals: int = 30, year: int = 2020,
                     duplicate_share: float = 0.05, bad_share: float = 0.01) -> EventFile:
    """Writes about `events` lines (at least that many) to `path` and describes them."""
    base_path = path.with_suffix(".base.jsonl")
    cases = max(100, int(events / (1 + duplicate_share + bad_share) / EVENTS_PER_CASE))
    generate(base_path, cases=cases, hospitals=hospitals, year=year, seed=seed)
    base = base_path.read_bytes().splitlines()
    base_path.unlink()
    rng = random.Random(seed)
    # Shares of the whole file: base + n_dup + n_bad lines.
    total = max(events, math.ceil(len(base) / (1 - duplicate_share - bad_share)))
    n_bad = max(len(PUBLISH_INVALID) + len(LEDGER_REFUSED), math.ceil(total * bad_share))
    n_dup = max(total - len(base) - n_bad, math.ceil(total * duplicate_share))

    case_lines = [i for i, line in enumerate(base) if b'"event_type":"CaseSubmitted"' in line]
    # Each extra line goes after the base line it was made from: a duplicate or a reused id
    # must follow its original in the file (and so in its partition).
    inserts: dict[int, list[tuple[bytes, str | None]]] = {}
    for _ in range(n_dup):
        i = rng.randrange(len(base))
        at = rng.randrange(i, len(base))
        inserts.setdefault(at, []).append((base[i], None))
    for k in range(n_bad):
        kind = (PUBLISH_INVALID + LEDGER_REFUSED)[k % (len(PUBLISH_INVALID) + len(LEDGER_REFUSED))]
        i = rng.choice(case_lines)
        at = rng.randrange(i, len(base))
        inserts.setdefault(at, []).append((_bad(base[i], kind, k), kind))

    out = EventFile(path)
    case_ids: set[str] = set()
    violations: dict[str, str] = {}
    with path.open("wb") as fh:
        n = 0
        for i, line in enumerate(base):
            extras: list[tuple[bytes, str | None]] = [(line, "base"), *inserts.get(i, [])]
            for data, what in extras:
                n += 1
                fh.write(data + b"\n")
                if what == "base":
                    d = json.loads(data)
                    out.valid_ids.add(d["event_id"])
                    p = d["payload"]
                    if d["event_type"] == "CaseSubmitted":
                        out.years.add(int(p["discharge_date"][:4]))
                        case_ids.add(p["case_id"])
                    elif d["event_type"] == "ReviewVerdictRecorded" and p["outcome"] == "violation":
                        violations[d["event_id"]] = p["case_id"]
                    elif d["event_type"] == "HospitalRegistered":
                        out.hospitals.add(p["hospital_id"])
                    elif p.get("component") == "high_tech_catalogue":
                        out.catalogue_line = n
                elif what is None:
                    out.duplicates += 1
                else:
                    out.bad[n] = what
        out.lines = n
    # Every violation verdict whose case is known yields one penalty, id penalty:<verdict id>.
    out.penalty_ids = {f"penalty:{vid}" for vid, case_id in violations.items() if case_id in case_ids}
    return out


def _bad(line: bytes, kind: str, k: int) -> bytes:
    """A bad copy of a CaseSubmitted line, of the given kind, with an id of its own."""
    d = json.loads(line)
    d["event_id"] = f"bad-{kind}-{k}"
    p = d["payload"]
    if kind == "truncated_json":
        text = json.dumps(d, ensure_ascii=False).encode("utf-8")
        return text[: len(text) // 2]
    if kind == "not_utf8":
        return b'{"event_id": "bad-not-utf8-' + str(k).encode() + b'", "note": "\xff\xfe"}'
    if kind == "unknown_event_type":
        d["event_type"] = "CaseTeleported"
    elif kind == "bad_decimal":
        p["total_cost"] = "12,345.60"
    elif kind == "missing_field":
        del p["discharge_date"]
    elif kind == "his_for_other":
        d["source"] = "his:H999"
    elif kind == "unknown_hospital":
        p["hospital_id"] = "H999"
        d["source"] = "his:H999"
    elif kind == "other_content":
        d["event_id"] = json.loads(line)["event_id"]  # the original's id ...
        p["total_cost"] = "1.00"  # ... with other content
        p["personal_paid"] = "0.00"
    else:  # pragma: no cover
        raise ValueError(kind)
    return json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
