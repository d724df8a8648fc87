"""The synthetic trial simulator: calibration, truth, dropout, determinism.

Tolerances are stated as multiples of the sampling standard error (SE) of the statistic.
Every test uses a fixed seed, so it is deterministic; the multiples (4-5 SE) are what a
fresh seed passes with overwhelming probability (with ~15 marginal checks at 4 SE, a
correct simulator fails one at a random seed < 0.1% of the time; 200 seeds were tried),
so the tests do not depend on a lucky seed. Where a tolerance at the trial's size would be
too loose to mean anything (arm mean changes, dropout rates to a point), the check runs at
n = 20,000.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from personalize.data.simulate import (
    SCENARIOS,
    SimulatedTrial,
    clipped_normal_cdf,
    clipped_normal_mean,
    get_scenario,
    potential_outcomes,
    simulate,
    simulate_full,
    truth_for,
)
from personalize.data.table import write_table

ROOT = Path(__file__).resolve().parents[2]
BIG = 20_000

STAMP_VISITS = ("m3", "m6", "m9", "m12")
STAMP_BASELINE = [
    "participant_id", "site", "arm", "delivery", "age", "sex", "bpi_severity",
    "bpi_interference", "odi", "mme", "pain_duration_years", "phq8", "gad7", "pcs",
    "ffmq_nonjudging", "expectancy", "treatment_preference", "sf12_mcs", "sf12_pcs",
]  # fmt: skip


@pytest.fixture(scope="module")
def stamp_big() -> tuple[SimulatedTrial, pd.DataFrame]:
    """A STAMP trial of BIG patients, as recorded and before dropout (four tests read it)."""
    return simulate_full("stamp", BIG, seed=1)


def benefit(truth: pd.DataFrame, treatment: str, control: str) -> pd.Series:
    return truth[f"p_response_{treatment}"] - truth[f"p_response_{control}"]


def within(value: float, target: float, se: float, k: float = 4.0) -> bool:
    return abs(value - target) <= k * se


# ---------------------------------------------------------------------------- API basics


def test_scenarios_and_unknown_scenario() -> None:
    assert SCENARIOS[:3] == ("stamp", "stamp-null", "optimum")
    assert all(name.startswith("stamp-") for name in SCENARIOS[3:])  # the scenario library
    with pytest.raises(ValueError) as err:
        simulate("stampede")
    for name in SCENARIOS:
        assert name in str(err.value)


@pytest.mark.parametrize("n", [0, 1, -5, 2.5, True])
def test_bad_n_raises(n: object) -> None:
    with pytest.raises(ValueError, match="n must be"):
        simulate("stamp", n=n, seed=0)  # type: ignore[arg-type]


def test_bad_seed_raises() -> None:
    with pytest.raises(ValueError, match="seed"):
        simulate("stamp", n=10, seed=-1)


def test_default_sizes() -> None:
    assert len(simulate("stamp", seed=1).cohort) == 770
    assert len(simulate("stamp-null", seed=1).cohort) == 770
    assert len(simulate("optimum", seed=1).cohort) == 451


@pytest.mark.parametrize(
    ("scenario", "id_col", "arms"),
    [
        ("stamp", "participant_id", ("MBT", "CBT")),
        ("stamp-null", "participant_id", ("MBT", "CBT")),
        ("optimum", "patient_id", ("group_visit", "usual_care")),
    ],
)
def test_truth_columns_and_ids(scenario: str, id_col: str, arms: tuple[str, str]) -> None:
    t = simulate(scenario, seed=1)
    treat, ctrl = arms
    assert list(t.truth.columns) == [
        id_col,
        f"p_response_{treat}",
        f"p_response_{ctrl}",
        f"expected_change_{treat}",
        f"expected_change_{ctrl}",
    ]
    assert t.scenario == scenario
    assert t.truth[id_col].tolist() == t.cohort[id_col].tolist()
    assert t.cohort[id_col].is_unique
    assert t.cohort[id_col].iloc[0] in ("P0001", "OPT0001")
    probs = t.truth[[f"p_response_{treat}", f"p_response_{ctrl}"]].to_numpy()
    assert np.all((probs >= 0) & (probs <= 1))
    assert not t.truth.isna().any().any()


# ------------------------------------------------------------------ STAMP calibration


def test_stamp_marginals_at_trial_size() -> None:
    """n = 770, seed 1: each published figure within 4 SE (SE of a mean = sd/sqrt(n),
    of an SD ~ sd/sqrt(2n), of a share = sqrt(p(1-p)/n))."""
    c = simulate("stamp", 770, 1).cohort
    n = len(c)
    assert list(c.columns[: len(STAMP_BASELINE)]) == STAMP_BASELINE
    assert (c.arm == "MBT").sum() == (c.arm == "CBT").sum() == 385
    assert c.site.nunique() == 3

    assert within(c.age.mean(), 57.8, 11.3 / math.sqrt(n))
    assert within(c.age.std(), 11.3, 11.3 / math.sqrt(2 * n))
    assert c.age.min() >= 21
    assert within((c.sex == "female").mean(), 0.564, math.sqrt(0.564 * 0.436 / n))

    assert within(c.bpi_severity.mean(), 6.1, 1.6 / math.sqrt(n))
    assert within(c.bpi_severity.std(), 1.6, 1.6 / math.sqrt(2 * n))
    assert c.bpi_severity.between(0, 10).all()
    assert (c.bpi_severity < 3).mean() < 0.05  # inclusion: BPI average pain >= 3
    assert ((c.bpi_severity * 4) % 1 == 0).all()  # mean of 4 integer items

    assert within(c.odi.mean(), 47.2, 14.0 / math.sqrt(n))
    assert within(c.odi.std(), 14.0, 14.0 / math.sqrt(2 * n))
    assert c.odi.between(20, 100).all()

    assert (c.mme >= 15).all()
    assert c.mme.median() < c.mme.mean()  # right-skewed
    assert within((c.mme >= 90).mean(), 0.30, math.sqrt(0.3 * 0.7 / n))

    for col, lo, hi in [
        ("phq8", 0, 24), ("gad7", 0, 21), ("pcs", 0, 52), ("ffmq_nonjudging", 3, 15),
        ("expectancy", 0, 10), ("bpi_interference", 0, 10),
    ]:  # fmt: skip
        assert c[col].between(lo, hi).all(), col
    for col in ["age", "odi", "phq8", "gad7", "pcs", "ffmq_nonjudging", "expectancy"]:
        assert pd.api.types.is_integer_dtype(c[col]), col
    assert set(c.treatment_preference) == {"MBT", "CBT", "none"}
    assert set(c.delivery) == {"in_person", "remote"}

    # dropout: ~30% at 6 and ~35% at 12 months
    assert within(c.bpi_severity_m6.isna().mean(), 0.30, math.sqrt(0.3 * 0.7 / n))
    assert within(c.bpi_severity_m12.isna().mean(), 0.35, math.sqrt(0.35 * 0.65 / n))


def test_stamp_followups_bounded_missing_together_and_monotone() -> None:
    c = simulate("stamp", 3000, 2).cohort
    prev = np.zeros(len(c), dtype=bool)
    for v in STAMP_VISITS:
        miss = c[f"bpi_severity_{v}"].isna().to_numpy()
        assert (c[f"odi_{v}"].isna().to_numpy() == miss).all()
        assert (c[f"mme_{v}"].isna().to_numpy() == miss).all()
        assert (miss >= prev).all()  # monotone dropout
        prev = miss
        assert c[f"bpi_severity_{v}"].dropna().between(0, 10).all()
        assert c[f"odi_{v}"].dropna().between(0, 100).all()
        assert (c[f"mme_{v}"].dropna() >= 0).all()


def test_stamp_arm_changes_and_dropout_rates_at_large_n(
    stamp_big: tuple[SimulatedTrial, pd.DataFrame],
) -> None:
    t, complete = stamp_big
    truth, c = t.truth, t.cohort
    # 6 months, exact expectations: the average over patients has SE ~ 0.7/sqrt(10000)
    assert abs(truth.expected_change_MBT.mean() - (-0.35)) < 0.03
    assert abs(truth.expected_change_CBT.mean() - (-0.57)) < 0.03
    # 12 months, realised complete outcomes: SE of an arm mean ~ 2.0/sqrt(10000) = 0.02
    change12 = complete.bpi_severity_m12 - complete.bpi_severity
    assert abs(change12[complete.arm == "MBT"].mean() - (-0.45)) < 0.08
    assert abs(change12[complete.arm == "CBT"].mean() - (-0.59)) < 0.08
    # ODI and MME: modest declines in both arms
    for arm in ("MBT", "CBT"):
        rows = complete.arm == arm
        odi_change = (complete.odi_m12 - complete.odi)[rows].mean()
        assert -10 < odi_change < -1
        mme_ratio = (complete.mme_m12 / complete.mme)[rows].mean()
        assert 0.75 < mme_ratio < 1.0
    # dropout rates to within 0.015 (SE ~ 0.0033)
    for visit, target in [("m3", 0.22), ("m6", 0.30), ("m9", 0.33), ("m12", 0.35)]:
        assert abs(c[f"bpi_severity_{visit}"].isna().mean() - target) < 0.015, visit


def test_dropout_depends_on_baseline_but_not_on_outcome(
    stamp_big: tuple[SimulatedTrial, pd.DataFrame],
) -> None:
    t, complete = stamp_big
    c = t.cohort
    miss = c.bpi_severity_m6.isna()

    def gap(mask: pd.Series) -> float:
        return float(miss[mask].mean() - miss[~mask].mean())

    # SE of each difference ~ sqrt(2 * 0.21 / 10000) = 0.0065: these are > 6 SE
    assert gap(c.age < c.age.median()) > 0.04  # younger drop out more
    assert gap(c.mme >= 90) > 0.04  # higher opioid dose
    assert gap(c.phq8 >= 10) > 0.04  # more depressed
    assert gap(c.delivery == "in_person") > 0.02
    # MAR: the outcome's deviation from its expectation given baseline and arm is the
    # same among dropouts and completers (it would differ under outcome-dependent dropout)
    expected = np.where(
        complete.arm == "MBT", t.truth.expected_change_MBT, t.truth.expected_change_CBT
    )
    resid = complete.bpi_severity_m6 - complete.bpi_severity - expected
    diff = resid[miss].mean() - resid[~miss].mean()
    se = resid.std() * math.sqrt(1 / miss.sum() + 1 / (~miss).sum())
    assert abs(diff) < 4 * se


# ------------------------------------------------------------------------ the truth


@pytest.mark.parametrize("scenario", ["stamp", "optimum"])
def test_truth_matches_monte_carlo(scenario: str) -> None:
    """Redraw every patient's potential outcomes R times; the responder frequency under the
    shipped pipeline's definition and the mean change converge to the truth."""
    sc = get_scenario(scenario)
    drawn = simulate(scenario, 100, 5)
    base, truth = drawn.cohort, drawn.truth
    reps = 2000
    many = pd.concat([base] * reps, ignore_index=True)
    po = potential_outcomes(scenario, many, np.random.default_rng(99))
    b = many[sc.outcome_baseline].to_numpy()
    for arm in sc.arms:
        y = po[arm][sc.followup].to_numpy()
        responder = y <= 0.7 * b if scenario == "stamp" else y <= b - 1.0
        freq = responder.reshape(reps, -1).mean(axis=0)
        p = truth[f"p_response_{arm}"].to_numpy()
        se = np.sqrt(np.maximum(p * (1 - p), 0.01) / reps)
        assert np.all(np.abs(freq - p) < 4.5 * se), arm
        assert abs(freq.mean() - p.mean()) < 0.004
        change = (y - b).reshape(reps, -1).mean(axis=0)
        expected = truth[f"expected_change_{arm}"].to_numpy()
        assert np.all(np.abs(change - expected) < 4.5 * 2.2 / math.sqrt(reps)), arm
        assert abs(change.mean() - expected.mean()) < 0.01


@pytest.mark.parametrize(
    ("mean", "threshold"),
    [(-0.5, 0.0), (0.3, 0.2), (5.0, 3.5), (9.6, 7.0), (10.8, 9.99), (4.0, 10.0), (4.0, -0.1)],
)
def test_clipped_normal_formulas_at_the_edges(mean: float, threshold: float) -> None:
    sigma = 1.7
    y = np.clip(np.random.default_rng(3).normal(mean, sigma, 1_000_000), 0.0, 10.0)
    m = np.array([mean])
    assert abs(clipped_normal_mean(m, sigma, 0.0, 10.0)[0] - y.mean()) < 0.006
    p = clipped_normal_cdf(m, sigma, np.array([threshold]), 0.0, 10.0)[0]
    assert abs(p - (y <= threshold).mean()) < 0.002


def test_shipped_pipelines_define_the_truths_responder() -> None:
    """The truth is for the shipped pipeline's responder definition: keep them in step."""
    expected = {
        "stamp": ("bpi_severity", "bpi_severity_m6", {"relative_reduction": 0.3}),
        "stamp-null": ("bpi_severity", "bpi_severity_m6", {"relative_reduction": 0.3}),
        "optimum": ("peg", "peg_m6", {"absolute_reduction": 1}),
    }
    for scenario, (baseline, followup, responder) in expected.items():
        spec = yaml.safe_load((ROOT / "pipelines" / f"{scenario}.yaml").read_text())
        assert spec["outcome"]["baseline"] == baseline
        assert spec["outcome"]["followup"] == followup
        assert spec["outcome"]["responder"] == responder
        assert spec["cohort"]["simulate"]["scenario"] == scenario
        assert spec["synthetic"] is True
        sc = get_scenario(scenario)
        assert (sc.outcome_baseline, sc.followup) == (baseline, followup)


def test_stamp_null_has_nothing_to_personalize() -> None:
    null, stamp = simulate("stamp-null", 770, 1), simulate("stamp", 770, 1)
    t = null.truth
    assert (t.p_response_MBT == t.p_response_CBT).all()
    assert (t.expected_change_MBT == t.expected_change_CBT).all()
    # same cohort generator: identical covariates, allocation and dropout
    pd.testing.assert_frame_equal(null.cohort[STAMP_BASELINE], stamp.cohort[STAMP_BASELINE])
    for v in STAMP_VISITS:
        col = f"bpi_severity_{v}"
        assert (null.cohort[col].isna() == stamp.cohort[col].isna()).all()
    po = potential_outcomes("stamp-null", null.cohort, np.random.default_rng(1))
    pd.testing.assert_frame_equal(po["MBT"], po["CBT"])


def test_stamp_heterogeneity_is_strong_enough_and_average_small(
    stamp_big: tuple[SimulatedTrial, pd.DataFrame],
) -> None:
    t = stamp_big[0].truth
    b = benefit(t, "MBT", "CBT")
    assert 0.10 <= b.std() <= 0.16
    assert (b.abs() >= 0.10).mean() >= 1 / 3
    assert -0.06 <= b.mean() <= -0.015  # small average, favouring CBT as published
    assert 0.2 < (b > 0).mean() < 0.6  # a sizeable minority does better with MBT
    diff = (t.expected_change_MBT - t.expected_change_CBT).mean()
    assert abs(diff - 0.22) < 0.03  # published: -0.35 vs -0.57 at 6 months


def test_documented_moderators_drive_the_benefit_and_others_do_not() -> None:
    c = simulate("stamp", 2000, 4).cohort
    base = truth_for("stamp", c)
    b0 = benefit(base, "MBT", "CBT")
    sc = get_scenario("stamp")

    def effect(frame: pd.DataFrame) -> np.ndarray:
        """MBT minus CBT mean change on the BPI scale (negative favours MBT)."""
        return sc.mean_change(frame, "MBT", "m6") - sc.mean_change(frame, "CBT", "m6")

    def edited(**changes: Any) -> pd.DataFrame:
        return c.assign(**changes)

    # neither moderators nor prognostic: the truth does not move at all
    for frame in [
        edited(age=c.age + 10),
        edited(sex=np.where(c.sex == "female", "male", "female")),
        edited(bpi_interference=10 - c.bpi_interference),
        edited(odi=100 - c.odi),
        edited(sf12_mcs=c.sf12_mcs + 10, sf12_pcs=c.sf12_pcs - 5),
        edited(delivery=np.where(c.delivery == "remote", "in_person", "remote")),
        edited(site="S1"),
    ]:
        pd.testing.assert_frame_equal(truth_for("stamp", frame), base)
    # prognostic only: both arms shift equally, the effect on the change scale is unchanged
    for frame in [
        edited(gad7=np.minimum(c.gad7 + 8, 21)),
        edited(pcs=np.minimum(c.pcs + 15, 52)),
        edited(expectancy=np.minimum(c.expectancy + 3, 10)),
        edited(pain_duration_years=c.pain_duration_years * 3),
    ]:
        np.testing.assert_allclose(effect(frame), effect(c), atol=1e-12)
        assert not np.allclose(sc.mean_change(frame, "MBT", "m6"), sc.mean_change(c, "MBT", "m6"))
    # the documented moderators move the benefit, in the documented direction
    moves = {
        "preference MBT": edited(treatment_preference="MBT"),
        "preference CBT (negative)": edited(treatment_preference="CBT"),
        "higher MME": edited(mme=c.mme * 4),
        "higher PHQ-8": edited(phq8=np.minimum(c.phq8 + 8, 24)),
        "higher non-judging": edited(ffmq_nonjudging=np.minimum(c.ffmq_nonjudging + 5, 15)),
    }
    for name, frame in moves.items():
        shift = (benefit(truth_for("stamp", frame), "MBT", "CBT") - b0).mean()
        if "negative" in name:
            assert shift < -0.05, name
        else:
            assert shift > 0.05, name


def test_benefit_is_explained_by_the_moderators_alone(
    stamp_big: tuple[SimulatedTrial, pd.DataFrame],
) -> None:
    """A linear fit of the true benefit on all standardised covariates: the moderators carry
    large coefficients, everything else is (near) zero."""
    c, t = stamp_big[0].cohort, stamp_big[0].truth
    x = c[
        ["age", "bpi_severity", "bpi_interference", "odi", "pain_duration_years", "phq8",
         "gad7", "pcs", "ffmq_nonjudging", "expectancy", "sf12_mcs", "sf12_pcs"]
    ].astype(float)  # fmt: skip
    x = x.assign(
        log_mme=np.log(c.mme),
        pref_mbt=(c.treatment_preference == "MBT") * 1.0,
        pref_cbt=(c.treatment_preference == "CBT") * 1.0,
        female=(c.sex == "female") * 1.0,
        remote=(c.delivery == "remote") * 1.0,
    )
    z = (x - x.mean()) / x.std()
    design = np.column_stack([np.ones(len(z)), z.to_numpy()])
    y = benefit(t, "MBT", "CBT").to_numpy()
    coef = dict(zip(z.columns, np.linalg.lstsq(design, y, rcond=None)[0][1:], strict=True))
    moderators = {"log_mme", "pref_mbt", "pref_cbt", "phq8", "ffmq_nonjudging"}
    for name, value in coef.items():
        if name in moderators:
            assert abs(value) > 0.025, (name, value)
        else:
            assert abs(value) < 0.006, (name, value)
    assert coef["pref_cbt"] < 0 < coef["pref_mbt"]


# -------------------------------------------------------------------------- OPTIMUM


def test_optimum_shape_and_calibration() -> None:
    small = simulate("optimum", seed=1).cohort
    assert "arm" not in small.columns and "participant_id" not in small.columns
    assert {"patient_id", "group", "peg", "peg_m6", "sessions_attended"} <= set(small.columns)
    assert set(small.group) == {"group_visit", "usual_care"}
    assert abs((small.group == "group_visit").sum() - (small.group == "usual_care").sum()) <= 1
    assert small.peg.between(0, 10).all()

    t = simulate_full("optimum", BIG, seed=1)[0]
    c = t.cohort
    assert 5.7 < c.peg.mean() < 6.5
    diff = (t.truth.expected_change_usual_care - t.truth.expected_change_group_visit).mean()
    assert 0.6 <= diff <= 0.9  # published between-arm difference in PEG change
    sessions = c.sessions_attended
    assert (sessions[c.group == "usual_care"] == 0).all()
    treated = sessions[c.group == "group_visit"]
    assert treated.between(0, 8).all()
    assert abs((treated >= 6).mean() - 0.45) < 0.03  # SE 0.007
    for visit in ("w8", "m6", "m12"):
        assert c[f"peg_{visit}"].dropna().between(0, 10).all()
        assert 0.12 < c[f"peg_{visit}"].isna().mean() < 0.35
    b = benefit(t.truth, "group_visit", "usual_care")
    assert 0.04 < b.std() < 0.12  # modest heterogeneity
    assert 0.05 < b.mean() < 0.25


# ---------------------------------------------------------------------- determinism, IO


@pytest.mark.parametrize("ext", ["csv", "parquet"])
@pytest.mark.parametrize("scenario", ["stamp", "optimum"])
def test_same_seed_same_bytes(tmp_path: Path, ext: str, scenario: str) -> None:
    def digest(seed: int, part: str) -> str:
        t = simulate(scenario, n=200, seed=seed)
        path = tmp_path / f"{part}-{seed}-{len(list(tmp_path.iterdir()))}.{ext}"
        write_table(getattr(t, part), path)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    for part in ("cohort", "truth"):
        assert digest(7, part) == digest(7, part)
        assert digest(7, part) != digest(8, part)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_written_table_round_trips(tmp_path: Path, ext: str) -> None:
    t = simulate("stamp", 300, 3)
    path = tmp_path / "sub" / f"cohort.{ext}"
    write_table(t.cohort, path)
    back = pd.read_csv(path) if ext == "csv" else pd.read_parquet(path)
    assert list(back.columns) == list(t.cohort.columns)
    # follow-ups stay exact (unrounded) through the file, so the truth applies to them
    np.testing.assert_array_equal(
        back.bpi_severity_m6.to_numpy(dtype=float), t.cohort.bpi_severity_m6.to_numpy(dtype=float)
    )


def test_write_table_rejects_unknown_extension_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        write_table(simulate("stamp", 20, 0).cohort, tmp_path / "cohort.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "cohort.parquet"
    write_table(simulate("stamp", 20, 0).cohort, path)
    before = path.read_bytes()
    bad = pd.DataFrame({"x": [object(), object()]})  # pyarrow cannot serialise this
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises
        write_table(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cohort.parquet"]


@settings(max_examples=25, deadline=None)
@given(
    scenario=st.sampled_from(SCENARIOS),
    n=st.integers(min_value=2, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_size_and_seed_gives_a_coherent_trial(scenario: str, n: int, seed: int) -> None:
    t = simulate(scenario, n=n, seed=seed)
    sc = get_scenario(scenario)
    c = t.cohort
    assert len(c) == len(t.truth) == n
    counts = c[sc.arm_column].value_counts()
    assert set(counts.index) == set(sc.arms)
    assert abs(counts[sc.treatment] - counts[sc.control]) <= 1
    assert c[sc.id_column].is_unique
    assert c[sc.outcome_baseline].between(0, 10).all()
    follow = c[sc.followup].dropna()
    assert follow.between(0, 10).all()
    probs = t.truth.filter(like="p_response_").to_numpy()
    assert np.all((probs >= 0) & (probs <= 1))
