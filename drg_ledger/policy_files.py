"""Build the policy files that ship with the project (`ledger/policies/*.jsonl`).

Each file is a list of `PolicyVersionPublished` envelopes, ready for `drg-ledger ingest`.
Values the seeds give are cited; every other value is marked `[assumed]` in the version's
`note` (RULES.md: assumptions live in policy data, never in code).

Rebuild with `python -m drg_ledger.policy_files`; a test checks the committed files match.
"""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledger.catalogue import catalogue_from_csv
from ledger.events import EventType, canonical_json, parse_event

POLICIES = Path(__file__).resolve().parent.parent / "ledger" / "policies"
CATALOGUE_CSV = POLICIES / "high_tech_catalogue_2020.csv"
AC_ALL = Decimal("9500.00")
"""[assumed] Panzhihua's overall average cost; EVENTS.md's example pairs it with BJ11 225.50 / 21422.50."""

# [assumed] Ordinary CHS-DRG groups for an illustrative Panzhihua table: (code, name, base points, stable).
ORDINARY_GROUPS: list[tuple[str, str, str, bool]] = [
    ("BR23", "脑缺血性疾患,伴CC", "95.40", True),
    ("BR25", "脑缺血性疾患,不伴CC/MCC", "78.20", True),
    ("BX29", "神经系统其他疾患", "56.10", True),
    ("DT19", "中耳炎及上呼吸道感染", "38.50", True),
    ("ES21", "呼吸系统感染/炎症,伴MCC", "132.60", True),
    ("ES23", "呼吸系统感染/炎症,伴CC", "88.70", True),
    ("ES25", "呼吸系统感染/炎症,不伴CC/MCC", "61.30", True),
    ("ET11", "慢性阻塞性肺病,伴MCC", "118.90", True),
    ("ET15", "慢性阻塞性肺病,不伴CC/MCC", "72.40", True),
    ("FR45", "心绞痛,不伴CC/MCC", "64.80", True),
    ("FT15", "高血压,不伴CC/MCC", "45.20", True),
    ("FV23", "严重心律失常及心脏停搏,伴CC", "102.30", True),
    ("GS15", "胃肠出血,不伴CC/MCC", "66.90", True),
    ("GZ15", "其他消化系统诊断,不伴CC/MCC", "42.70", True),
    ("HC25", "胆囊切除手术,不伴CC/MCC", "142.80", True),
    ("IC29", "髋、肩、膝、肘和踝关节置换术", "611.50", True),
    ("IF59", "骨科固定装置去除/修正术", "98.60", True),
    ("IU25", "骨病及其他关节病,不伴CC/MCC", "58.30", True),
    ("KS15", "糖尿病,不伴CC/MCC", "61.80", True),
    ("LU15", "肾及泌尿道感染,不伴CC/MCC", "52.40", True),
    ("NE19", "外阴、阴道、宫颈手术", "82.10", True),
    ("OC19", "阴道分娩伴手术操作", "48.60", True),
    ("OF19", "剖宫产,不伴CC/MCC", "74.90", True),
    ("RE19", "恶性增生性疾患的化学治疗", "54.70", True),
    ("XJ19", "其他接触健康服务的诊断伴手术室操作", "121.40", False),
    ("YR19", "HIV相关疾患", "143.90", False),
    ("ZZ19", "多发严重创伤", "512.00", False),
]

PANZHIHUA_HIGH_RATIO = [
    {"max_base_points": "100", "threshold": "3"},
    {"max_base_points": "300", "threshold": "2"},
    {"max_base_points": None, "threshold": "1.5"},
]
SEED_003_MULTIPLIERS = {
    "bed_blocking": "1",
    "split_hospitalisation": "2",
    "cost_shifting": "3",
    "insufficient_service": "3",
    "shirking_severe": "3",
    "upcoding": "4",
    "fraud": "5",
    "other": "2",
}


def _policy(
    event_id: str,
    pool: str,
    component: str,
    version: str,
    effective_from: str,
    effective_to: str | None,
    recorded_at: str,
    body: dict[str, Any],
    note: str,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": EventType.POLICY_VERSION_PUBLISHED,
        "schema_version": 1,
        "recorded_at": recorded_at,
        "source": "operator:policy-files",
        "payload": {
            "pool": pool,
            "component": component,
            "version": version,
            "effective_from": effective_from,
            "effective_to": effective_to,
            "body": body,
            "note": note,
        },
    }


def _drg_table() -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    with CATALOGUE_CSV.open(encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh):
            bp = Decimal(rec["base_points"])
            groups[rec["drg_code"]] = {
                "drg_code": rec["drg_code"],
                "base_points": str(bp),
                "average_cost": str(bp * AC_ALL / 100),
                "stable": True,
            }
    for code, _name, bp_text, stable in ORDINARY_GROUPS:
        bp = Decimal(bp_text)
        groups[code] = {"drg_code": code, "base_points": bp_text, "average_cost": str(bp * AC_ALL / 100), "stable": stable}
    return {"overall_average_cost": str(AC_ALL), "groups": sorted(groups.values(), key=lambda g: g["drg_code"])}


def panzhihua() -> list[dict[str, Any]]:
    """Panzhihua 2020 onwards (seeds 000, 002, 003, 004)."""
    known = "2019-12-31T09:00:00+08:00"
    catalogue = catalogue_from_csv(CATALOGUE_CSV, "seed 000 附件 攀枝花定点医疗机构高精尖医疗技术纳入支持目录（第一批）")
    return [
        _policy(
            "policy-panzhihua-drg_table-2020", "panzhihua", "drg_table", "2020.1", "2020-01-01", None, known, _drg_table(),
            "[assumed] base points of catalogue groups from seed 000 附件; other groups, average costs "
            "(BP x AC_all / 100) and AC_all 9500.00 are illustrative",
        ),
        _policy(
            "policy-panzhihua-coefficients-2020", "panzhihua", "coefficients", "2020.1", "2020-01-01", None, known,
            {"grades": {"3A": "1.00", "3B": "0.92", "2A": "0.85", "2B": "0.80", "1": "0.75"}, "hospitals": {}},
            "[assumed] grade coefficients (EVENTS.md example); seed 002 sets coefficients against the budget",
        ),
        _policy(
            "policy-panzhihua-case_rules-2020", "panzhihua", "case_rules", "2020.1", "2020-01-01", None, known,
            {
                "high_ratio": PANZHIHUA_HIGH_RATIO,
                "low_ratio": {"default": "0.4", "by_level": {}},
                "bilateral_factor": None,
                "multi_site_share": None,
                "incentive_cap_per_mille": None,
            },
            "[assumed] H = 3 / 2 / 1.5 by base points and L = 0.4 (RULES.md 3); Panzhihua has no "
            "bilateral, multi-site or incentive rule (those are Xuancheng's, seed 001)",
        ),
        _policy(
            "policy-panzhihua-penalty_rules-2018", "panzhihua", "penalty_rules", "2018.1", "2018-01-01", "2024-01-31", known,
            {"multipliers": SEED_003_MULTIPLIERS},
            "[assumed] seed 003 took effect 2024-02-01; earlier violations use the same table (POLICY.md gaps)",
        ),
        _policy(
            "policy-panzhihua-penalty_rules-2024", "panzhihua", "penalty_rules", "2024.1", "2024-02-01", "2026-01-31",
            "2023-12-28T09:00:00+08:00",
            {"multipliers": SEED_003_MULTIPLIERS},
            "seed 003 攀医保规〔2023〕6号 第十八条, in force 2024-02-01 for two years (第二十三条)",
        ),
        _policy(
            "policy-panzhihua-clearing_rules-2018", "panzhihua", "clearing_rules", "2018.1", "2018-01-01", None, known,
            {"personal_paid_in_point_value": True},
            "seed 004: the DRG payment standard covers fund and personal payments together",
        ),
        _policy(
            "policy-panzhihua-high_tech_catalogue-2020", "panzhihua", "high_tech_catalogue", "2020.1", "2020-01-01",
            "2022-05-10", "2021-05-11T00:00:00+08:00", catalogue.model_dump(mode="json"),
            "seed 000: issued 2021-05-11, trial for one year, and 2020-01-01 to the issue date is paid under it",
        ),
    ]


def xuancheng() -> list[dict[str, Any]]:
    """Xuancheng from 2024-01-01 (seed 001); values the seed does not give are assumed."""
    known = "2023-12-31T09:00:00+08:00"
    return [
        _policy(
            "policy-xuancheng-drg_table-2024", "xuancheng", "drg_table", "2024.1", "2024-01-01", None, known, _drg_table(),
            "[assumed] illustrative table (Panzhihua's groups); seed 001 gives no figures",
        ),
        _policy(
            "policy-xuancheng-coefficients-2024", "xuancheng", "coefficients", "2024.1", "2024-01-01", None, known,
            {"grades": {"3A": "1.00", "3B": "0.94", "2A": "0.86", "2B": "0.82", "1": "0.76"}, "hospitals": {}},
            "[assumed] level coefficients; seed 001 二(一) defines them as level x 80% + cost x 20% from cost data",
        ),
        _policy(
            "policy-xuancheng-case_rules-2024", "xuancheng", "case_rules", "2024.1", "2024-01-01", None, known,
            {
                "high_ratio": PANZHIHUA_HIGH_RATIO,
                "low_ratio": {"default": "0.4", "by_level": {"1": "0.3"}},
                "bilateral_factor": "1.5",
                "multi_site_share": "0.5",
                "incentive_cap_per_mille": {"3": "6", "2": "4", "1": "4"},
            },
            "seed 001: bilateral 1.5 and multi-site 0.5 (二(四)), incentive caps 6‰/4‰ (二(二)), level-1 low "
            "ratio 0.3 (三); [assumed] high-ratio steps and L = 0.4 for levels 2-3",
        ),
        _policy(
            "policy-xuancheng-penalty_rules-2024", "xuancheng", "penalty_rules", "2024.1", "2024-01-01", None, known,
            {"multipliers": SEED_003_MULTIPLIERS},
            "[assumed] Xuancheng's penalty table is not in the seeds; Panzhihua's seed 003 table is used",
        ),
        _policy(
            "policy-xuancheng-clearing_rules-2024", "xuancheng", "clearing_rules", "2024.1", "2024-01-01", None, known,
            {"personal_paid_in_point_value": True},
            "[assumed] as Panzhihua (seed 004)",
        ),
    ]


def render(events: list[dict[str, Any]]) -> str:
    """One canonical JSON line per event (validated on the way)."""
    return "".join(canonical_json(parse_event(e)) + "\n" for e in events)


FILES = {"panzhihua.jsonl": panzhihua, "xuancheng.jsonl": xuancheng}


def main() -> None:
    for name, build in FILES.items():
        (POLICIES / name).write_text(render(build()), encoding="utf-8")
        print(f"wrote {POLICIES / name}")


if __name__ == "__main__":
    main()

