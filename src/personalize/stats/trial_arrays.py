"""The arrays every evidence function takes, checked once, and what their results share.

Conventions shared by the evidence functions (`dr_scores`, `blp`, `rate`, `group_calibration`,
`policy`, `r_loss`): arrays are 1-D and aligned by patient; ``treated`` is 1
for the treatment arm and 0 for control; ``e`` is the known allocation probability of the
treatment arm (scalar or per patient); ``weight`` holds the IPCW weights, 0 for a patient
whose outcome is unobserved and ``observed / P(observed | baseline, arm)`` otherwise, and
``y`` may be NaN exactly where ``weight`` is 0. Benefit is treatment minus control, so a
positive value favours the treatment arm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

FloatArray = NDArray[np.float64]

# Bootstrap replicates are processed in blocks of at most this many (replicate x patient)
# cells so memory stays bounded for large cohorts.
BOOT_BLOCK_CELLS = 2_000_000


def vector(name: str, x: ArrayLike, n: int | None = None, *, allow_nan: bool = False) -> FloatArray:
    """A 1-D float copy of ``x``; errors name the argument so callers can find the bug."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: must be numeric ({exc})") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be 1-dimensional, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: length {arr.shape[0]} does not match the {n} patients")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        what = "infinite" if allow_nan else "non-finite"
        raise ValueError(f"{name}: {int(bad.sum())} {what} value(s)")
    return arr.copy()


def check_lengths(**arrays: ArrayLike) -> None:
    """All patient-aligned inputs have one length; name the odd ones out if not.

    The reference length is the most common one (first argument on a tie), so a single
    wrong array is the one named, whichever position it has.
    """
    lengths: dict[str, int] = {}
    for name, x in arrays.items():
        shape = np.shape(x)
        if len(shape) == 1:
            lengths[name] = shape[0]
    if len(set(lengths.values())) <= 1:
        return
    values = list(lengths.values())
    reference = max(values, key=lambda v: (values.count(v), -values.index(v)))
    odd = [f"{k} has {v}" for k, v in lengths.items() if v != reference]
    raise ValueError(
        f"{', '.join(k for k, v in lengths.items() if v != reference)}: length mismatch "
        f"({'; '.join(odd)}; expected {reference} like the other inputs)"
    )


def arm_indicator(treated: ArrayLike, n: int | None = None) -> FloatArray:
    arr = vector("treated", treated, n)
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError("treated: treatment indicator must be 0 (control) or 1 (treatment)")
    return arr


def propensity(e: ArrayLike, n: int) -> FloatArray:
    arr = np.asarray(e, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    arr = vector("e", arr, n)
    if ((arr <= 0.0) | (arr >= 1.0)).any():
        raise ValueError("e: propensity must lie strictly between 0 and 1")
    return arr


def weight_vector(weight: ArrayLike, n: int) -> FloatArray:
    arr = vector("weight", weight, n)
    if (arr < 0.0).any():
        raise ValueError("weight: IPCW weights must be >= 0 (0 marks an unobserved outcome)")
    if not (arr > 0.0).any():
        raise ValueError("weight: no observed outcome (all weights are 0)")
    return arr


def outcome_vector(y: ArrayLike, weight: FloatArray) -> FloatArray:
    arr = vector("y", y, weight.shape[0], allow_nan=True)
    missing = np.isnan(arr) & (weight > 0.0)
    if missing.any():
        raise ValueError(
            f"y: {int(missing.sum())} NaN outcome(s) with weight > 0; "
            "unobserved outcomes must carry weight 0"
        )
    return arr


def interval_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must lie strictly between 0 and 1, got {level}")
    return float(level)


def bootstrap_count(n_boot: int) -> int:
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot: need an integer >= 2, got {n_boot}")
    return int(n_boot)


def normal_quantile(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2.0))


def bootstrap_counts(rng: np.random.Generator, n: int, n_boot: int) -> list[FloatArray]:
    """Patient multiplicities of ``n_boot`` nonparametric bootstrap resamples, in blocks.

    A resample is represented by how many times each patient is drawn, so statistics can
    be recomputed as weighted sums without materializing resampled arrays.
    """
    per_block = max(1, BOOT_BLOCK_CELLS // max(n, 1))
    blocks: list[FloatArray] = []
    done = 0
    p = np.full(n, 1.0 / n)
    while done < n_boot:
        size = min(per_block, n_boot - done)
        blocks.append(rng.multinomial(n, p, size=size).astype(np.float64))
        done += size
    return blocks


def json_ready(value: Any) -> Any:
    """Make a value JSON-ready: numpy scalars/arrays to Python, tuples to lists."""
    if isinstance(value, np.ndarray):
        return [json_ready(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value
