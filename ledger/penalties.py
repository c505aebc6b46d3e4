"""What a violation verdict costs the hospital (seed 003 第十八条; RULES.md 4). Pure maths."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ledger.events import PenaltyRulesBody, ReviewVerdictRecorded, ViolationType
from ledger.points import round_points

SEED_003 = "攀医保规〔2023〕6号 第十八条"
CLAUSES: dict[ViolationType, str] = {
    ViolationType.BED_BLOCKING: f"{SEED_003}(一)",
    ViolationType.SPLIT_HOSPITALISATION: f"{SEED_003}(二)",
    ViolationType.COST_SHIFTING: f"{SEED_003}(三)",
    ViolationType.INSUFFICIENT_SERVICE: f"{SEED_003}(三)",
    ViolationType.SHIRKING_SEVERE: f"{SEED_003}(四)",
    ViolationType.UPCODING: f"{SEED_003}(五)",
    ViolationType.FRAUD: f"{SEED_003}(六)",
    ViolationType.OTHER: f"{SEED_003}(七)",
}
WHOLE_CASE = frozenset({ViolationType.BED_BLOCKING, ViolationType.FRAUD})
"""Types that leave the whole case unsettled: (一) 不予结算病例点数, (六) 除不予结算该病例点数外."""
CAPPED = frozenset({ViolationType.FRAUD, ViolationType.OTHER})
"""Types whose multiplier is a maximum: (六) 可按...5倍, (七) 不超过...2倍."""


@dataclass(frozen=True, slots=True)
class Penalty:
    """The verdict's effect: points left settled, points deducted, and the terms used."""

    settled: Decimal
    deducted: Decimal
    violating_points: Decimal
    multiplier: Decimal
    clause: str


def multiplier_for(rules: PenaltyRulesBody, violation: ViolationType, asked: Decimal | None) -> Decimal:
    """k for a violation type: the table's value; for fraud and other the verdict's, capped.

    seed 003 第十八条(六) "可按...5倍" and (七) "不超过...2倍": the table holds the maxima, used
    when the verdict names none.
    """
    k = rules.multipliers[violation]
    if violation in CAPPED and asked is not None:
        return min(asked, k)
    return k


def deduction(case_points: Decimal, verdict: ReviewVerdictRecorded, rules: PenaltyRulesBody) -> Penalty:
    """Apply a violation verdict to a case's points (seed 003 第十八条; RULES.md 4).

    Not settled: the whole case for bed_blocking (一) and fraud (六), else V (max(P - V, 0)).
    Deducted: k x P for bed_blocking (按该病例点数), k x V for every other type; a fraud verdict
    without violating_points takes V = P. shirking_severe's V covers both admissions (四).
    """
    assert verdict.violation_type is not None and case_points >= 0
    violation = verdict.violation_type
    if violation is ViolationType.BED_BLOCKING or verdict.violating_points is None:
        v = case_points
    else:
        v = verdict.violating_points
    settled = Decimal(0) if violation in WHOLE_CASE else max(case_points - v, Decimal(0))
    k = multiplier_for(rules, violation, verdict.multiplier)
    penalty = Penalty(round_points(settled), round_points(k * v), v, k, CLAUSES[violation])
    assert penalty.deducted >= 0 and penalty.settled <= case_points
    return penalty
