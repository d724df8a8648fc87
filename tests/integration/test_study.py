"""The recovery study: its scoring is right, and a small study points the right way.

The full study (20+ replications, N = 770, peers) is a benchmark: benchmarks/recovery.py.
Here a fast version (2 replications, N = 400, small test set and bootstrap, the cheapest
peer) asserts the *direction* of every result, so a regression in the pipeline fails CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from personalize.cli import app
from personalize.config import load_pipeline
from personalize.data.simulate import simulate
from personalize.learners import learner_names
from personalize.study.peers import peer_recommendations
from personalize.study.run import OURS, StudyResult, run_study, study_seeds
from personalize.study.summary import diagnose_intervals, summarize
from personalize.study.truth import (
    Prediction,
    Truth,
    projected_target,
    score,
    truth_of,
    width_at_level,
)

# --------------------------------------------------------------------------- fast units


def toy_truth() -> Truth:
    control = np.array([0.2, 0.3, 0.4, 0.5])
    treatment = np.array([0.4, 0.2, 0.4, 0.7])
    return Truth(control, treatment)


def test_the_command_line_starts_without_the_study() -> None:
    # `personalize --help` stays instant: the study command imports its modules when it runs
    code = (
        "import sys, personalize.cli; "
        "heavy = [m for m in ('pandas', 'lightgbm', 'mlflow', 'sklearn', 'econml', 'causalml', "
        "'matplotlib', 'personalize.study.run') if m in sys.modules]; "
        "print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seeds_are_prefix_stable_and_disjoint() -> None:
    test3, train3 = study_seeds(0, 3)
    test5, train5 = study_seeds(0, 5)
    assert test3 == test5
    assert train5[:3] == train3
    assert test3 not in train5
    assert study_seeds(1, 3) != (test3, train3)


def test_oracle_prediction_scores_perfectly() -> None:
    truth = toy_truth()
    tau = truth.benefit
    pref = np.array(["none"] * 4, dtype=object)
    rec = np.sign(tau).astype(int)
    pred = Prediction(tau.copy(), tau - 0.01, tau + 0.01, rec, ate=float(tau.mean()))
    m = score(pred, truth, pref, "T", "C")
    assert m["pehe"] == pytest.approx(0.0)
    assert m["coverage"] == 1.0
    assert m["regret_plugin"] == pytest.approx(0.0, abs=1e-12)
    # patient 3 has no true difference: `either`, resolved by the average arm (treatment)
    assert m["share_either"] == pytest.approx(0.25)
    assert m["accuracy"] == 1.0
    assert m["regret"] == pytest.approx(0.0, abs=1e-12)
    assert m["gain"] == pytest.approx(truth.oracle_value - truth.best_arm_value)


def test_either_follows_the_stated_preference() -> None:
    truth = toy_truth()
    zero = np.zeros(4)
    pred = Prediction(zero, zero - 1, zero + 1, np.zeros(4, dtype=int), ate=-0.1)
    # prefers treatment, prefers control, none (-> control by the ate), prefers treatment
    pref = np.array(["T", "C", "none", "T"], dtype=object)
    m = score(pred, truth, pref, "T", "C")
    value = np.mean([0.4, 0.3, 0.4, 0.7])
    assert m["value"] == pytest.approx(value)
    assert m["regret"] == pytest.approx(truth.oracle_value - value)
    assert m["regret_avgarm"] == pytest.approx(truth.oracle_value - truth.control.mean())
    assert np.isnan(m["accuracy"])
    assert m["share_either"] == 1.0


def test_gain_capture_with_and_without_the_better_bet() -> None:
    """`either` follows a stated preference; without one, a coin (gain capture) or the arm
    the method's own estimate favours (gain capture with the better bet; a zero estimate
    stays a coin)."""
    truth = toy_truth()  # oracle 0.45, best single arm (treatment) 0.425
    benefit = np.array([0.1, -0.1, 0.0, 0.2])
    pred = Prediction(benefit, benefit - 1, benefit + 1, np.zeros(4, dtype=int), ate=0.05)
    pref = np.array(["none", "none", "none", "C"], dtype=object)
    m = score(pred, truth, pref, "T", "C")
    coin = np.mean([(0.4 + 0.2) / 2, (0.2 + 0.3) / 2, 0.4, 0.5])
    bet = np.mean([0.4, 0.3, 0.4, 0.5])  # T, C, coin (0.4 either way), the preference C
    assert m["gain_capture"] == pytest.approx((coin - 0.425) / 0.025)
    assert m["gain_capture_bet"] == pytest.approx((bet - 0.425) / 0.025)
    # a recommendation is followed either way, even against the estimate's side
    rec = np.array([-1, 0, 0, 0])
    m = score(Prediction(benefit, None, None, rec, ate=0.05), truth, pref, "T", "C")
    assert m["gain_capture_bet"] == pytest.approx((np.mean([0.2, 0.3, 0.4, 0.5]) - 0.425) / 0.025)


def test_gain_capture_with_the_products_own_bet_and_with_the_estimates_sign() -> None:
    """`gain_capture_bet` takes the bet only where the method offered one (a coin
    elsewhere); `gain_capture_sign` gives every patient without a preference the arm the
    point estimate favours, whatever the bet rule said."""
    truth = toy_truth()
    benefit = np.array([0.1, -0.1, 0.0, 0.2])
    offered = np.array([0, -1, 0, 0])  # no bet for patient 0 (below the rule's probability)
    pred = Prediction(benefit, None, None, np.zeros(4, dtype=int), ate=0.05, bet=offered)
    pref = np.array(["none", "none", "none", "C"], dtype=object)
    m = score(pred, truth, pref, "T", "C")
    with_bet = np.mean([(0.4 + 0.2) / 2, 0.3, 0.4, 0.5])
    with_sign = np.mean([0.4, 0.3, 0.4, 0.5])
    assert m["gain_capture_bet"] == pytest.approx((with_bet - 0.425) / 0.025)
    assert m["gain_capture_sign"] == pytest.approx((with_sign - 0.425) / 0.025)
    assert m["share_bet"] == 0.25


def test_constant_prediction_pehe_is_the_sd_of_the_truth() -> None:
    truth = toy_truth()
    tau = truth.benefit
    const = np.full(4, tau.mean())
    m = score(
        Prediction(const, None, None, np.zeros(4, dtype=int), 0.0),
        truth,
        np.array(["none"] * 4, dtype=object),
        "T",
        "C",
    )
    assert m["pehe"] == pytest.approx(tau.std())
    assert np.isnan(m["coverage"]) and np.isnan(m["corr"])


def test_peer_rule_needs_interval_and_margin() -> None:
    b = np.array([0.10, 0.03, 0.10, -0.10, -0.10])
    lo = np.array([0.01, 0.01, -0.01, -0.20, -0.20])
    hi = np.array([0.20, 0.05, 0.20, -0.01, 0.01])
    assert peer_recommendations(b, lo, hi, 0.05).tolist() == [1, 0, 0, -1, 0]
    assert peer_recommendations(b, None, None, 0.05).tolist() == [1, 0, 1, -1, -1]


def test_width_at_nominal_coverage_compares_sharpness_at_equal_coverage() -> None:
    rng = np.random.default_rng(0)
    tau = rng.normal(size=20_000)
    centre = np.zeros_like(tau)
    # twice too wide, or 30% too narrow: both are scaled to the same 90% width
    for half in (2 * 1.6449, 0.7 * 1.6449):
        lower, upper = centre - half, centre + half
        assert width_at_level(lower, upper, tau, 0.9) == pytest.approx(2 * 1.6449, rel=0.03)
    # a wider interval per patient where the error is larger is sharper than a flat one
    spread = np.where(rng.random(tau.size) < 0.6, 0.25, 2.0)
    noisy = spread * tau
    adaptive = width_at_level(-1.6449 * spread, 1.6449 * spread, noisy, 0.9)
    flat = width_at_level(np.full_like(tau, -1.0), np.full_like(tau, 1.0), noisy, 0.9)
    assert adaptive < 0.5 * flat
    # a zero-width interval that misses cannot be scaled to cover
    assert width_at_level(centre, centre, tau, 0.9) == np.inf


def test_projected_target_groups_identical_predictions() -> None:
    tau = np.arange(10, dtype=float)
    assert np.allclose(projected_target(np.zeros(10), tau), tau.mean())
    target = projected_target(np.arange(10, dtype=float), tau, groups=2)
    assert np.allclose(target, [2, 2, 2, 2, 2, 7, 7, 7, 7, 7])


def test_truth_on_the_continuous_scale_is_improvement() -> None:
    trial = simulate("stamp", 50, 3)
    spec = load_pipeline("pipelines/stamp-continuous.yaml")
    truth = truth_of(trial.truth, spec, "stamp")
    expected = -(trial.truth["expected_change_MBT"] - trial.truth["expected_change_CBT"])
    assert np.allclose(truth.benefit, expected.to_numpy())
    with pytest.raises(ValueError, match="cannot be scored"):
        other = spec.model_copy(
            update={"outcome": spec.outcome.model_copy(update={"followup": "bpi_severity_m12"})}
        )
        truth_of(trial.truth, other, "stamp")


# --------------------------------------------------------------------------- small study


def small(scenario: str, peers: tuple[str, ...] = (), replications: int = 2) -> StudyResult:
    """2 replications at N = 400, 1,500 test patients, a 10-member bootstrap."""
    return run_study(
        scenario,
        peers=peers,
        replications=replications,
        n=400,
        test_n=1500,
        training={"bootstrap": 10},
    )


@pytest.fixture(scope="module")
def stamp() -> StudyResult:
    return small("stamp", peers=("econml_dr",))


@pytest.fixture(scope="module")
def null() -> StudyResult:
    return small("stamp-null")


def ours(result: StudyResult) -> pd.DataFrame:
    return result.records[result.records["method"] == OURS]


@pytest.mark.slow
def test_stamp_recovers_the_direction_of_the_truth(stamp: StudyResult) -> None:
    r = ours(stamp)
    sd = r["sd_true"]
    # the predicted benefit ranks patients in the truth's order ...
    assert (r["corr"] > 0.2).all()
    # ... and its spread does not add error over a constant at the model's own average
    # effect (the PEHE such a constant would have is sqrt(sd^2 + bias^2))
    assert (r["pehe"] / np.sqrt(sd**2 + r["bias"] ** 2)).median() <= 1.05
    # recommendations beat treating everyone with the better arm, and are mostly right
    assert (r["regret"] < r["regret_best_arm"]).all()
    active = r["accuracy"].dropna()
    assert active.empty or active.median() > 0.5
    # the default learner's posterior intervals hold most patients' own benefit (the
    # recovery study measures the share at N = 770: 85-95% is the target)
    assert (r["coverage"] > 0.6).all()
    assert (r["group_coverage"] > 0.6).all()
    assert set(r["chosen"]) <= set(learner_names())


@pytest.mark.slow
def test_stamp_null_stays_quiet(null: StudyResult, stamp: StudyResult) -> None:
    r = ours(null)
    assert r["het_reject"].mean() <= 0.5
    assert r["share_either"].median() >= 0.9
    # without detected heterogeneity nobody gets an arm, whatever the average-effect test says
    assert (r.loc[r["het_reject"] == 0, "share_either"] == 1.0).all()
    # nothing to personalize: the predicted benefit spreads less than where there is
    # something, and the intervals hold every patient's true benefit (zero) for nearly all
    assert r["sd_pred"].median() < ours(stamp)["sd_pred"].median()
    assert r["coverage"].median() >= 0.9
    # regret is zero when both arms are identical, whatever is recommended
    assert np.allclose(r["regret"], 0.0)
    assert ours(stamp)["share_either"].median() <= r["share_either"].median()


@pytest.mark.slow
def test_summary_and_peer(stamp: StudyResult) -> None:
    summary = summarize(stamp.records, stamp.level)
    assert list(summary["method"]) == [OURS, "econml_dr"]
    row = summary.set_index("method").loc[OURS]
    assert row["pehe_best_peer"] == "econml_dr"
    assert row["pehe_ratio_to_best_peer"] > 0
    assert 0.0 <= row["het_reject_rate"] <= 1.0
    peer = stamp.records[stamp.records["method"] == "econml_dr"]
    assert np.isfinite(peer[["pehe", "regret", "coverage"]].to_numpy()).all()
    diagnosis = diagnose_intervals(stamp)
    assert diagnosis["mse"] == pytest.approx(
        diagnosis["bias_squared"] + diagnosis["sampling_variance"] * (1 - 1 / 2), rel=1e-6
    )


@pytest.mark.slow
def test_same_seed_same_numbers(stamp: StudyResult) -> None:
    again = small("stamp", replications=1)
    first = ours(stamp).iloc[0]
    redo = ours(again).iloc[0]
    for col in ("pehe", "regret", "coverage", "heterogeneity_p", "share_either"):
        assert redo[col] == first[col], col
    assert redo["chosen"] == first["chosen"]


@pytest.mark.slow
def test_the_study_command_writes_its_outputs_and_an_mlflow_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "results"
    args = ["study", "--scenario", "stamp-null", "--replications", "1", "--n", "400"]
    args += ["--test-n", "300", "--no-peers", "--bootstrap", "10", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    for name in ("records.csv", "summary.csv", "diagnosis.json", ".md", ".png"):
        assert any(p.name.endswith(name) for p in out.iterdir()), name
    summary = pd.read_csv(next(out.glob("*-summary.csv")))
    assert summary["method"].tolist() == [OURS]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("recovery-study")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["scenario"] == "stamp-null"
    assert "n400_ours_pehe" in run.data.metrics


def test_study_command_rejects_an_unknown_scenario() -> None:
    result = CliRunner().invoke(app, ["study", "--scenario", "nope", "--no-peers"])
    assert result.exit_code == 2
