"""The decision rule: recommend an arm only when the evidence supports it (docs/training.md).

Stored with the model so the service and the batch scorer decide identically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

EITHER = "either"
NO_DIFFERENCE = "no reliable difference: follow patient preference"


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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per patient: recommendation (treatment label, control label or "either") and a
        plain-language rationale."""
        n = len(benefit)
        rec = np.full(n, EITHER, dtype=object)
        why = np.empty(n, dtype=object)
        favour_t = self.evidence & (lower > 0) & (benefit >= self.margin)
        favour_c = self.evidence & (upper < 0) & (benefit <= -self.margin)
        rec[favour_t] = self.treatment
        rec[favour_c] = self.control
        pct = f"{self.level:.0%}"
        what = "chance of response" if self.binary else "improvement"
        for i in range(n):
            if rec[i] == EITHER:
                reason = NO_DIFFERENCE
                if not self.evidence:
                    reason += " (the trial data show no reliable difference between arms)"
                elif lower[i] <= 0 <= upper[i]:
                    reason += (
                        f" (the {pct} interval for patients like this one includes no difference)"
                    )
                else:
                    reason += (
                        f" (the expected difference is below the "
                        f"{self._amount(self.margin)} margin)"
                    )
                pref = None if preference is None else preference[i]
                if pref is not None and pref == pref and str(pref) not in ("", "none"):
                    reason += f"; stated preference: {pref}"
                why[i] = reason
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
        return rec, why

    def _signed(self, value: float) -> str:
        return f"{value * 100:+.0f} pp" if self.binary else f"{value:+.2f}"
