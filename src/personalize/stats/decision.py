"""The decision rule: recommend an arm only when the evidence supports it (docs/training.md).

Stored with the model so the service and the batch scorer decide identically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from personalize.config import NO_PREFERENCE

EITHER = "either"
NO_DIFFERENCE = "no reliable difference: follow patient preference"


def _article(p: float) -> str:
    """'an' before a percentage read with a vowel sound (8, 11, 18, 80-89%), else 'a'."""
    spoken = f"{p:.0%}".rstrip("%")
    return "an" if spoken.startswith("8") or spoken in ("11", "18") else "a"


class Decisions(NamedTuple):
    """Per patient: the recommendation, its rationale, the better bet (for a patient left
    at `either` without a stated preference, the arm the model favours with at least the
    rule's `bet_level` probability; None otherwise) and that probability (NaN where no bet
    is offered)."""

    recommendation: np.ndarray
    rationale: np.ndarray
    better_bet: np.ndarray
    better_bet_probability: np.ndarray


@dataclass(frozen=True)
class DecisionRule:
    treatment: str
    control: str
    margin: float  # minimum clinically meaningful benefit, on the outcome's scale
    level: float  # the benefit interval's coverage
    alpha: float  # significance level of the evidence tests
    evidence: bool  # heterogeneity detected, or the average effect reliably non-zero
    evidence_reason: str
    binary: bool
    # heterogeneity detected: only then is an arm recommended (an average effect says
    # nothing about whether this patient is an exception)
    heterogeneity: bool = False
    individual: bool = False  # the interval covers the patient's own benefit (posterior)
    # the better bet needs at least this probability that the favoured arm is better
    bet_level: float = 0.8
    checks_passed: bool = True  # the model's out-of-fold checks; none fired

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def _amount(self, value: float) -> str:
        return f"{abs(value) * 100:.0f} percentage points" if self.binary else f"{abs(value):.2f}"

    def decide(
        self,
        benefit: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        preference: np.ndarray | None = None,
        p_treatment_better: np.ndarray | None = None,
    ) -> Decisions:
        """Per patient: recommendation (treatment label, control label or "either"), a
        plain-language rationale, and the better bet with its probability (below).
        `p_treatment_better`: each patient's probability that the benefit is positive,
        from the uncertainty the interval comes from; without it no bet is offered."""
        n = len(benefit)
        rec = np.full(n, EITHER, dtype=object)
        why = np.empty(n, dtype=object)
        favour_t = self.evidence & (lower > 0) & (benefit >= self.margin)
        favour_c = self.evidence & (upper < 0) & (benefit <= -self.margin)
        rec[favour_t] = self.treatment
        rec[favour_c] = self.control
        stated = self._stated(preference, n)
        # Without detected heterogeneity the trial cannot say how this patient differs from
        # the average: no recommendation (a false average effect would otherwise send every
        # patient without a contrary preference to one arm).
        average_only = np.zeros(n, dtype=bool)
        favoured = np.where(favour_t, self.treatment, self.control)
        if not self.heterogeneity:
            average_only = rec != EITHER
            rec[average_only] = EITHER
        # A patient left at `either` without a preference still gets one arm or the other.
        # The better bet names the arm the model favours for this patient, only when the
        # model passed its checks and that arm is better with at least `bet_level`
        # probability: how often following it beats a coin is measured per scenario family
        # by the recovery study, not assumed. Never offered against (or beside) a stated
        # preference, and never a recommendation.
        open_choice = (rec == EITHER) & (stated == "")
        p_t = np.full(n, 0.5) if p_treatment_better is None else np.asarray(p_treatment_better)
        offered = open_choice & self.checks_passed & (p_treatment_better is not None)
        bet_t = offered & (benefit > 0) & (p_t > 0.5) & (p_t >= self.bet_level)
        bet_c = offered & (benefit < 0) & (p_t < 0.5) & (1 - p_t >= self.bet_level)
        bet = np.full(n, None, dtype=object)
        bet[bet_t] = self.treatment
        bet[bet_c] = self.control
        bet_p = np.where(bet_t, p_t, np.where(bet_c, 1 - p_t, np.nan))
        pct = f"{self.level:.0%}"
        what = "chance of response" if self.binary else "improvement"
        for i in range(n):
            if average_only[i]:
                why[i] = (
                    f"{NO_DIFFERENCE} (the estimate favours {favoured[i]} by "
                    f"{self._amount(benefit[i])}, but no heterogeneity was detected to say how "
                    f"this patient differs from the average"
                )
            elif rec[i] == EITHER:
                why[i] = NO_DIFFERENCE
                if not self.evidence:
                    why[i] += " (the trial data show no reliable difference between arms"
                elif lower[i] <= 0 <= upper[i]:
                    why[i] += f" (the {pct} interval for {self._whom} includes no difference"
                else:
                    why[i] += (
                        f" (the expected difference is below the {self._amount(self.margin)} margin"
                    )
            else:
                better, worse = (
                    (self.treatment, self.control)
                    if rec[i] == self.treatment
                    else (self.control, self.treatment)
                )
                why[i] = (
                    f"{better} is expected to give a higher {what} than {worse} by "
                    f"{self._amount(benefit[i])} ({pct} interval for {self.treatment} "
                    f"minus {self.control}: {self._signed(lower[i])} to "
                    f"{self._signed(upper[i])})"
                )
                continue
            if stated[i]:
                why[i] += f"; stated preference: {stated[i]})"
            elif bet[i] is not None:
                why[i] += (
                    f"; without a preference, {bet[i]} is the better bet: "
                    f"{_article(bet_p[i])} {bet_p[i]:.0%} probability that its {what} is "
                    f"higher, by {self._amount(benefit[i])})"
                )
            elif open_choice[i] and not self.checks_passed:
                why[i] += "; no better bet: the model failed its checks)"
            elif open_choice[i] and p_treatment_better is not None and benefit[i] != 0:
                why[i] += f"; no arm is favoured with at least {self.bet_level:.0%} probability)"
            else:
                why[i] += ")"
        return Decisions(rec, why, bet, bet_p)

    @property
    def _whom(self) -> str:
        return "this patient's benefit" if self.individual else "patients like this one"

    @staticmethod
    def _stated(preference: np.ndarray | None, n: int) -> np.ndarray:
        """Each patient's stated preference as text, "" where none was stated."""
        if preference is None:
            return np.full(n, "", dtype=object)
        stated = [str(p) if p is not None and p == p else "" for p in preference]
        return np.array(["" if s == NO_PREFERENCE else s for s in stated], dtype=object)

    def _signed(self, value: float) -> str:
        return f"{value * 100:+.0f} pp" if self.binary else f"{value:+.2f}"
