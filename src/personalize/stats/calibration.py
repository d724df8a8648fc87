"""Per-arm calibration of predicted outcomes, chosen and assessed out of fold.

A clinician reads "62% chance of response with MBT" literally, so each arm's probabilities
are recalibrated on out-of-fold predictions (Platt or isotonic, whichever has the lower
cross-validated Brier score) and reported with Brier, ECE, calibration intercept and slope.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import StratifiedKFold

Method = Literal["platt", "isotonic", "identity"]
EPS = 1e-4


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


class ArmCalibrator:
    """A monotone map from a learner's arm prediction to a calibrated probability."""

    def __init__(self, method: Method = "platt") -> None:
        self.method = method

    def fit(self, p: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Self:
        if self.method == "platt":
            self.model_ = LogisticRegression(C=1e6, max_iter=1000)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model_.fit(logit(p)[:, None], y.astype(int), sample_weight=weight)
        elif self.method == "isotonic":
            self.model_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            self.model_.fit(p, y, sample_weight=weight)
        return self

    def transform(self, p: np.ndarray) -> np.ndarray:
        if self.method == "platt":
            # the fitted logistic map itself: scikit-learn's input checks cost more than
            # the arithmetic when one patient is scored through every bootstrap member
            a = float(self.model_.intercept_[0])
            b = float(self.model_.coef_[0, 0])
            return np.asarray(expit(a + b * logit(p)), dtype=float)
        if self.method == "isotonic":  # elementwise, like Platt: any array shape
            return np.asarray(self.model_.predict(np.ravel(p)), dtype=float).reshape(np.shape(p))
        return p


def cross_calibrated(
    p: np.ndarray, y: np.ndarray, weight: np.ndarray, method: Method, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Calibrated predictions where each row's calibrator never saw that row."""
    out = np.empty_like(p)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(p, y.astype(int)):
        out[test] = ArmCalibrator(method).fit(p[train], y[train], weight[train]).transform(p[test])
    return out


# Isotonic regression needs a large calibration set to beat Platt without overfitting
# (Niculescu-Mizil & Caruana 2005: it overfits below about a thousand rows); below this
# many observed outcomes in an arm only Platt scaling is considered.
MIN_ISOTONIC = 1000


def choose_calibrator(
    p: np.ndarray, y: np.ndarray, weight: np.ndarray, seed: int = 0
) -> tuple[ArmCalibrator, np.ndarray, dict[str, float]]:
    """Pick the method with the lower cross-validated Brier score; return it fitted on all
    rows, the honest (cross-calibrated) predictions, and each method's CV Brier."""
    scores: dict[str, float] = {}
    preds: dict[str, np.ndarray] = {}
    methods: tuple[Method, ...] = ("platt", "isotonic") if len(p) >= MIN_ISOTONIC else ("platt",)
    for method in methods:
        preds[method] = cross_calibrated(p, y, weight, method, seed=seed)
        scores[method] = brier(y, preds[method], weight)
    best: Method = min(methods, key=lambda m: scores[m])
    return ArmCalibrator(best).fit(p, y, weight), preds[best], scores


def brier(y: np.ndarray, p: np.ndarray, weight: np.ndarray) -> float:
    return float(np.average((p - y) ** 2, weights=weight))


def ece(y: np.ndarray, p: np.ndarray, weight: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins (weighted)."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = weight.sum()
    err = 0.0
    for b in range(bins):
        m = idx == b
        if weight[m].sum() > 0:
            err += weight[m].sum() / total * abs(np.average(y[m] - p[m], weights=weight[m]))
    return float(err)


def reliability_bins(
    y: np.ndarray, p: np.ndarray, weight: np.ndarray, bins: int = 10
) -> list[dict[str, float]]:
    """Quantile bins of predicted probability: mean predicted vs observed (weighted)."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        m = idx == b
        if weight[m].sum() > 0:
            rows.append(
                {
                    "predicted": float(np.average(p[m], weights=weight[m])),
                    "observed": float(np.average(y[m], weights=weight[m])),
                    "n": int(m.sum()),
                }
            )
    return rows


@dataclass(frozen=True)
class ArmCalibration:
    method: str
    brier: float | None  # binary outcomes
    ece: float | None  # binary outcomes
    rmse: float | None  # continuous outcomes
    intercept: float
    slope: float
    n: int
    slope_se: float = float("nan")  # robust (sandwich) standard error of the slope

    def to_dict(self) -> dict[str, float | int | str | None]:
        return self.__dict__.copy()


def assess(
    y: np.ndarray, p: np.ndarray, weight: np.ndarray, binary: bool, method: str
) -> ArmCalibration:
    """Calibration intercept and slope: logistic recalibration of y on logit(p) for binary
    outcomes (ideal 0 and 1), linear regression of y on the prediction for continuous."""
    if binary:
        lp = logit(p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = LogisticRegression(C=1e6, max_iter=1000).fit(
                lp[:, None], y.astype(int), sample_weight=weight
            )
        slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
        fitted = expit(intercept + slope * lp)
        se = slope_se(lp, y - fitted, fitted * (1 - fitted), weight)
        return ArmCalibration(
            method, brier(y, p, weight), ece(y, p, weight), None, intercept, slope, len(y), se
        )
    lin = LinearRegression().fit(p[:, None], y, sample_weight=weight)
    rmse = float(np.sqrt(np.average((y - p) ** 2, weights=weight)))
    resid = y - lin.predict(p[:, None])
    se = slope_se(p, resid, np.ones(len(y)), weight)
    return ArmCalibration(
        method, None, None, rmse, float(lin.intercept_), float(lin.coef_[0]), len(y), se
    )


def slope_se(x: np.ndarray, resid: np.ndarray, curvature: np.ndarray, weight: np.ndarray) -> float:
    """Sandwich standard error of the slope of a weighted recalibration fit on [1, x]
    (`curvature`: the GLM variance at the fit, 1 for least squares). With a hundred
    responders per arm and predictions that vary little it is large (0.3 to 2 on simulated
    STAMP trials): the gate reads it before calling a slope outside its band."""
    A = np.column_stack([np.ones(len(x)), x])
    bread = (A * (weight * curvature)[:, None]).T @ A
    meat = (A * ((weight * resid) ** 2)[:, None]).T @ A
    try:
        inv = np.linalg.inv(bread)
    except np.linalg.LinAlgError:
        return float("inf")
    var = float((inv @ meat @ inv)[1, 1])
    return float(np.sqrt(var)) if var >= 0 else float("inf")


@dataclass(frozen=True)
class BenefitCalibration:
    """Calibration for benefit: tau' = ate + slope * (tau_hat - center).

    The slope is the out-of-fold best-linear-predictor coefficient of the observed
    (doubly-robust) benefit on the predicted one (grf's differential forest prediction),
    clipped to [0, MAX_SLOPE]: a learner that over-disperses is shrunk, one with no signal
    collapses to the average effect. Coefficient uncertainty travels into the interval.
    """

    ate: float
    ate_se: float
    slope: float
    slope_se: float
    center: float
    raw_slope: float

    MAX_SLOPE = 2.0

    @classmethod
    def from_blp(
        cls, ate: float, ate_se: float, slope: float, slope_se: float, center: float
    ) -> BenefitCalibration:
        raw = slope if np.isfinite(slope) else 0.0
        se = slope_se if np.isfinite(slope_se) else 0.0
        return cls(ate, ate_se, float(np.clip(raw, 0.0, cls.MAX_SLOPE)), se, center, raw)

    @classmethod
    def identity(cls, raw_slope: float) -> BenefitCalibration:
        """No recalibration (a posterior learner's benefit is its posterior mean, already
        shrunk by its prior); `raw_slope` is kept for the report."""
        return cls(0.0, 0.0, 1.0, 0.0, 0.0, raw_slope)

    def apply(self, tau: np.ndarray) -> np.ndarray:
        return self.ate + self.slope * (tau - self.center)

    def coefficient_var(self, tau: np.ndarray) -> np.ndarray:
        """Variance of tau' from the uncertainty in the average effect and the slope."""
        slope_var = self.slope_se**2 if self.slope > 0 else 0.0
        return self.ate_se**2 + (tau - self.center) ** 2 * slope_var

    def to_dict(self) -> dict[str, float]:
        return {
            "ate": self.ate,
            "ate_se": self.ate_se,
            "slope": self.slope,
            "slope_se": self.slope_se,
            "center": self.center,
            "raw_slope": self.raw_slope,
        }
