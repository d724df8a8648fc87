"""The promotion gate's calibration slope: its standard error is what the slope's spread
over repeated trials shows, and the gate fails a slope only when the data place it outside
the band."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from personalize.config import Gates
from personalize.stats.calibration import assess, logit


def trial(rng: np.random.Generator, n: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Well-calibrated predictions of the given spread on the logit scale, and outcomes."""
    p = expit(-0.3 + spread * rng.normal(size=n))
    return p, rng.binomial(1, p).astype(float)


def test_the_slope_error_matches_its_spread_over_trials() -> None:
    rng = np.random.default_rng(0)
    fits = [
        assess(y, p, np.ones(len(y)), True, "platt")
        for p, y in (trial(rng, 385, 0.3) for _ in range(300))
    ]
    slopes = np.array([f.slope for f in fits])
    ses = np.array([f.slope_se for f in fits])
    assert 0.8 < np.median(ses) / slopes.std() < 1.25
    assert np.median(ses) > 0.3  # a hundred-odd responders and little spread: a wide slope
    # 95% intervals around well-calibrated predictions reach slope 1 about 95% of the time
    assert 0.9 < np.mean(np.abs(slopes - 1) <= 1.96 * ses) <= 1.0


def test_weights_widen_the_error() -> None:
    rng = np.random.default_rng(1)
    p, y = trial(rng, 400, 0.5)
    plain = assess(y, p, np.ones(400), True, "platt").slope_se
    uneven = assess(y, p, rng.choice([0.2, 1.8], 400), True, "platt").slope_se
    assert uneven > plain


def test_a_continuous_slope_has_an_error_too() -> None:
    rng = np.random.default_rng(2)
    pred = rng.normal(size=500)
    y = pred + rng.normal(size=500)
    cal = assess(y, pred, np.ones(500), False, "identity")
    assert abs(cal.slope - 1) < 3 * cal.slope_se
    assert 0.03 < cal.slope_se < 0.06  # sd 1 noise, 500 rows: about 1 / sqrt(500)


def test_the_gate_fails_only_a_slope_the_data_place_outside() -> None:
    gates = Gates(calibration_slope=(0.5, 1.5))
    assert gates.slope_passes(0.09, 0.29)  # 95% CI -0.48..0.66 reaches 0.5
    assert not gates.slope_passes(0.09, 0.1)  # -0.11..0.29: below the band
    assert not gates.slope_passes(2.2, 0.3)  # 1.61..2.79: above it
    assert gates.slope_passes(1.0, 0.0)
    assert gates.slope_passes(0.4, float("nan")) is False  # no error recorded: the point
    assert not gates.slope_passes(float("nan"), 0.2)
    assert gates.slope_rule("MBT", 0.09, 0.1) == (
        "calibration slope MBT = 0.09 (95% CI -0.11 to 0.29) lies outside [0.5, 1.5]"
    )
    assert (
        gates.slope_rule("CBT", 0.8, float("nan"))
        == "calibration slope CBT = 0.80 reaches [0.5, 1.5]"
    )


def test_logit_predictions_with_no_spread_do_not_fail_on_the_slope() -> None:
    """Constant predictions carry no slope to judge: the ECE judges them."""
    rng = np.random.default_rng(3)
    p = np.full(300, 0.4) + rng.normal(scale=1e-4, size=300)
    y = rng.binomial(1, 0.4, 300).astype(float)
    cal = assess(y, p, np.ones(300), True, "platt")
    assert cal.slope_se > 10 * abs(cal.slope) or cal.slope_se > 100
    assert Gates(calibration_slope=(0.5, 1.5)).slope_passes(cal.slope, cal.slope_se)
    assert np.isfinite(logit(p)).all()
