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


class Decisions(NamedTuple):
    """Per patient: the recommendation, its rationale, and the better bet (the arm the
    patient's own estimate favours, for a patient left at `either` without a stated
    preference; None otherwise)."""

    recommendation: np.ndarray
    rationale: np.ndarray
    better_bet: np.ndarray


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
    ) -> Decisions:
        """Per patient: recommendation (treatment label, control label or "either"), a
        plain-language rationale, and the better bet (below)."""
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
        # A patient left at `either` without a preference still gets one arm or the other;
        # the arm the patient's own estimate favours is the better bet (higher expected
        # outcome under the model), and no worse than a coin. Never offered against a
        # stated preference, and never a recommendation.
        open_choice = (rec == EITHER) & (stated == "")
        bet = np.full(n, None, dtype=object)
        bet[open_choice & (benefit > 0)] = self.treatment
        bet[open_choice & (benefit < 0)] = self.control
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
                    f"; without a preference, {bet[i]} is the better bet: its expected "
                    f"{what} is higher by {self._amount(benefit[i])})"
                )
            else:
                why[i] += ")"
        return Decisions(rec, why, bet)

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
