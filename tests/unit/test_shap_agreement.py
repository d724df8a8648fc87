"""The compiled trees against SHAP itself, and the model's explanation as a shap.Explanation.

`fast_trees` computes raw scores and path-dependent TreeSHAP from its own tables; here they
are held to ``shap.TreeExplainer`` (raw output, tree_path_dependent) and to
``Booster.predict(raw_score=True)`` at 1e-9, on random boosters over number-valued and text
categoricals with missing values (scored on frames whose categories are listed in another
order, with unseen levels, or as other types than in training), and on the boosters the
project's own learners fit. `PersonalizeModel.explain` must add up to the benefit `predict`
reports, with the drivers `predict` reports.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import matplotlib
import numpy as np
import pandas as pd
import pytest
import shap

from personalize import fast_trees, training
from personalize.data.simulate import simulate
from personalize.learners import ARM_DRIVER, learner_class, learner_names, make_learner
from personalize.learners.boosting import TRIAL_PARAMS, raw_score, tree_contributions
from personalize.learners.s_learner import with_arm
from personalize.model import PersonalizeModel
from support.registry import small

pytestmark = [
    pytest.mark.skipif(not fast_trees.HAVE_NUMBA, reason="numba is not installed"),
    pytest.mark.filterwarnings("ignore:LightGBM binary classifier"),
]

TOL = 1e-9
ROWS = 700  # above fast_trees.MIN_ROWS: `raw_score` takes the compiled path
NUMBER_LEVELS = [3, 7, 11, 20, 42, 64, 100]
TEXT_LEVELS = ["low", "mid", "high", "very high"]


def treeshap(model: Any, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """SHAP's own answer: (values rows x features, base rows) on the raw scale."""
    explainer = shap.TreeExplainer(
        model, feature_perturbation="tree_path_dependent", model_output="raw"
    )
    explanation = explainer(frame)
    return np.asarray(explanation.values), np.asarray(explanation.base_values)


def assert_agree(model: Any, frame: pd.DataFrame, what: str) -> None:
    """Compiled raw scores and TreeSHAP equal LightGBM's and SHAP's to 1e-9, and the
    compiled path (not a fallback to LightGBM) produced them."""
    assert fast_trees.single_forest(model) is not None, what
    ours = fast_trees.raw_score(model, frame)
    assert ours is not None, what
    theirs = model.booster_.predict(frame, raw_score=True)
    assert np.abs(ours - theirs).max() <= TOL, (what, np.abs(ours - theirs).max())
    compiled = fast_trees.contributions(model, frame)
    assert compiled is not None, what
    phi, base = compiled
    values, base_values = treeshap(model, frame)
    assert phi.shape == values.shape, what
    assert np.abs(phi - values).max() <= TOL, (what, np.abs(phi - values).max())
    assert np.abs(base - base_values).max() <= TOL, what


def cohort(rng: np.random.Generator, n: int, numbers: list[Any]) -> pd.DataFrame:
    """Numeric columns with missing values and zeros, a categorical whose levels are
    numbers and one whose levels are text, both with missing values."""
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "steps": rng.integers(0, 5, n).astype(float),
            "zeros": np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)),
            "grade": pd.Categorical(rng.choice(numbers, n), categories=numbers),
            "band": pd.Categorical(rng.choice(TEXT_LEVELS, n), categories=TEXT_LEVELS),
        }
    )
    frame.loc[rng.random(n) < 0.15, "x"] = np.nan
    frame.loc[rng.random(n) < 0.1, "steps"] = np.nan
    frame.loc[rng.random(n) < 0.1, "grade"] = np.nan
    frame.loc[rng.random(n) < 0.1, "band"] = np.nan
    return frame


def outcome(frame: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    grade = frame["grade"].cat.codes.to_numpy()
    band = frame["band"].cat.codes.to_numpy()
    signal = (
        np.nan_to_num(frame["x"].to_numpy())
        + 0.5 * np.nan_to_num(frame["steps"].to_numpy())
        + (grade % 2 == 1)
        - 0.8 * (band == 2)
        + frame["zeros"].to_numpy()
    )
    return np.asarray(signal + rng.normal(size=len(frame)))


def retyped(frame: pd.DataFrame, how: str, rng: np.random.Generator) -> pd.DataFrame:
    """The same patients with the number-valued categorical listed another way: the same
    numbers, its levels in another order with one never seen, as floats, or as text."""
    out = frame.copy()
    values = out["grade"].astype(object).where(out["grade"].notna(), None)
    if how == "shuffled":
        levels = [*rng.permutation(NUMBER_LEVELS).tolist(), 999]
        out["grade"] = pd.Categorical(values, categories=levels)
    elif how == "floats":
        levels = [float(v) for v in NUMBER_LEVELS]
        out["grade"] = pd.Categorical(
            [None if v is None else float(v) for v in values], categories=levels
        )
    elif how == "text":  # "3" is not the level 3: LightGBM reads every value as missing
        levels = [str(v) for v in NUMBER_LEVELS]
        out["grade"] = pd.Categorical(
            [None if v is None else str(v) for v in values], categories=levels
        )
    return out


RETYPINGS = ["same", "shuffled", "floats", "text"]


def random_booster(seed: int) -> tuple[Any, pd.DataFrame]:
    """A random small booster (within the compiled envelope) and fresh rows to score."""
    rng = np.random.default_rng(seed)
    train = cohort(rng, 900, NUMBER_LEVELS)
    y = outcome(train, rng)
    params = {
        **TRIAL_PARAMS,
        "num_leaves": int(rng.integers(2, fast_trees.MAX_NODES + 2)),
        "max_depth": int(rng.choice([-1, 3, 4])),
        "n_estimators": int(rng.integers(10, 60)),
        "learning_rate": 0.1,
        "min_child_samples": 10,
        "min_data_per_group": 5,
        "cat_smooth": 1.0,
        "use_missing": bool(rng.random() < 0.8),
        "zero_as_missing": bool(rng.random() < 0.3),
    }
    if rng.random() < 0.5:
        model: Any = lgb.LGBMClassifier(random_state=seed, **params)
        model.fit(train, (y > np.median(y)).astype(int))
    else:
        model = lgb.LGBMRegressor(random_state=seed, **params).fit(train, y)
    rows = retyped(cohort(rng, ROWS, NUMBER_LEVELS), RETYPINGS[seed % len(RETYPINGS)], rng)
    return model, rows


@pytest.mark.parametrize("seed", range(12))
def test_random_boosters_agree_with_shap_and_lightgbm(seed: int) -> None:
    model, rows = random_booster(seed)
    trees = fast_trees.parse_model_string(model.booster_.model_to_string()).trees
    categorical = {
        int(t.split_feature[j]) for t in trees for j in range(t.k) if t.decision_type[j] & 1
    }
    assert 3 in categorical, "the number-valued categorical is never split on"
    assert_agree(model, rows, f"seed {seed}")


def test_number_valued_levels_are_matched_by_value() -> None:
    """The levels 1, 2, 5, 7 against LightGBM's own mapping: as stored, reordered, as
    floats, and as text (which LightGBM reads as missing, so must the compiled trees)."""
    rng = np.random.default_rng(5)
    numbers = [1, 2, 5, 7]
    frame = pd.DataFrame(
        {"x": rng.normal(size=ROWS), "c": pd.Categorical(rng.choice(numbers, ROWS))}
    )
    y = frame["x"] + 2 * (frame["c"].astype(int) % 2) + rng.normal(size=ROWS)
    model = lgb.LGBMRegressor(random_state=0, **{**TRIAL_PARAMS, "min_data_per_group": 5})
    model.fit(frame, y)
    values = frame["c"].astype(int)
    variants = {
        "stored": frame,
        "reordered": frame.assign(c=pd.Categorical(values, categories=[7, 5, 2, 1, 9])),
        "floats": frame.assign(c=pd.Categorical(values.astype(float))),
        "text": frame.assign(c=pd.Categorical(values.astype(str))),
    }
    for name, rows in variants.items():
        assert_agree(model, rows, name)
    # the level, not its text, decides: reordering changes nothing, text is all missing
    ours = fast_trees.raw_score(model, variants["reordered"])
    assert ours is not None
    assert np.array_equal(ours, model.predict(frame, raw_score=True))
    text = fast_trees.raw_score(model, variants["text"])
    assert text is not None
    nothing = frame.assign(c=pd.Categorical([None] * ROWS, categories=numbers))
    assert np.array_equal(text, model.predict(nothing, raw_score=True))
    assert not np.allclose(text, ours)


def learners_trial(kind: str, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A randomized trial whose benefit grows with `mod` and with grade 3."""
    rng = np.random.default_rng(seed)
    n = 1200
    X = cohort(rng, n, [1, 2, 3])
    treated = (rng.random(n) < 0.5).astype(np.int8)
    grade3 = (X["grade"] == 3).to_numpy()
    low = (X["band"] == "low").to_numpy()
    tau = 0.8 * np.nan_to_num(X["x"].to_numpy()) + 0.6 * grade3
    lin = -0.3 + 0.5 * np.nan_to_num(X["steps"].to_numpy()) - 0.4 * low + treated * tau
    if kind == "binary":
        y = (rng.random(n) < 1 / (1 + np.exp(-lin))).astype(float)
    else:
        y = lin + rng.normal(size=n)
    return X, treated, y


BOOSTED = [
    name
    for name in learner_names()
    if not learner_class(name).posterior and not learner_class(name).linear
]


@pytest.mark.parametrize("kind", ["binary", "continuous"])
@pytest.mark.parametrize("name", BOOSTED)
def test_the_learners_boosters_agree_with_shap_and_lightgbm(name: str, kind: str) -> None:
    X, treated, y = learners_trial(kind)
    learner = make_learner(name, kind, seed=0).fit(X, treated, y, np.ones(len(X)))
    boosters = learner.boosters()
    assert boosters, f"{name} fits no boosters"
    names = {f for b in boosters for f in b.booster_.feature_name()}
    # each booster reads the frames the learner gives it: the S-learner adds the arm
    frames = [with_arm(X, 0), with_arm(X, 1)] if "__treated__" in names else [X]
    for model in boosters:
        for frame in frames:
            assert_agree(model, frame, f"{name}-{kind}")
            # the learners' own entry points give the same numbers
            phi, base = tree_contributions(model, frame)
            values, base_values = treeshap(model, frame)
            assert np.abs(phi - values).max() <= TOL
            assert np.abs(base - base_values).max() <= TOL
            lightgbm = model.predict(frame, raw_score=True)
            assert np.abs(raw_score(model, frame) - lightgbm).max() <= TOL


def test_every_boosted_learner_is_covered() -> None:
    assert {"t", "s", "x", "dr"} <= set(BOOSTED)


# --------------------------------------------------------------------------- explanation


@pytest.fixture(scope="module")
def trained() -> list[tuple[PersonalizeModel, pd.DataFrame]]:
    """Small trained models: a T-learner on a binary outcome, an S-learner (whose arm is
    a driver of its own) on a continuous one; with the cohorts they were trained on."""
    out = []
    for pipeline, learner in (("stamp", "t"), ("stamp-continuous", "s")):
        frame = simulate("stamp", 400, 3).cohort
        model = training.fit(small(pipeline, [learner]), frame).model
        assert model.learner.name == learner
        out.append((model, frame))
    return out


def with_missing(frame: pd.DataFrame, model: PersonalizeModel) -> pd.DataFrame:
    """The cohort with some feature values blanked out (as incoming patients may have)."""
    rng = np.random.default_rng(11)
    out = frame.copy()
    for name in list(model.pipeline.features)[:4]:
        out[name] = out[name].astype(object).where(rng.random(len(out)) > 0.2, None)
    return out


def test_explanation_adds_up_to_the_benefit(
    trained: list[tuple[PersonalizeModel, pd.DataFrame]],
) -> None:
    for model, frame in trained:
        rows = with_missing(frame, model)
        explanation = model.explain(rows)
        predicted = model.predict_arrays(rows, explain=len(model.pipeline.features) + 1)
        assert isinstance(explanation, shap.Explanation)
        n = len(rows)
        names = [*model.pipeline.features, ARM_DRIVER]
        assert explanation.feature_names == names
        assert explanation.values.shape == (n, len(names))
        assert np.shape(explanation.base_values) == (n,)
        total = explanation.values.sum(axis=1) + explanation.base_values
        assert np.abs(total - predicted.benefit).max() <= TOL
        # the values are the drivers predict reports, feature by feature
        index, contribution = predicted.driver_index, predicted.driver_contribution
        shown = index >= 0
        rows_i = np.nonzero(shown)[0]
        picked = explanation.values[rows_i, index[shown]]
        assert np.abs(picked - contribution[shown]).max() <= TOL
        assert shown.any()


def test_explanation_carries_the_patients_values(
    trained: list[tuple[PersonalizeModel, pd.DataFrame]],
) -> None:
    model, frame = trained[0]
    rows = with_missing(frame, model).iloc[:50]
    explanation = model.explain(rows)
    names = explanation.feature_names
    age = names.index("age")
    expected_age = pd.to_numeric(rows["age"], errors="coerce").to_numpy(dtype=float)
    np.testing.assert_array_equal(explanation.data[:, age], expected_age)
    sex = names.index("sex")
    shown = [None if pd.isna(v) else str(v) for v in rows["sex"]]
    assert explanation.display_data[:, sex].tolist() == shown
    levels = model.pipeline.features["sex"].levels
    codes = [np.nan if v is None else float(levels.index(v)) for v in shown]
    np.testing.assert_array_equal(explanation.data[:, sex], codes)
    assert np.isnan(explanation.data[:, names.index(ARM_DRIVER)]).all()
    # one patient's explanation is the same numbers as in the whole batch
    alone = model.explain(rows.iloc[[7]])
    np.testing.assert_allclose(alone.values[0], explanation.values[7], rtol=0, atol=TOL)


def test_shap_plots_take_the_explanation(
    trained: list[tuple[PersonalizeModel, pd.DataFrame]],
) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, frame = trained[0]
    explanation = model.explain(frame.iloc[:40])
    shap.plots.waterfall(explanation[0], show=False)
    plt.close("all")
    shap.plots.beeswarm(explanation, show=False)
    plt.close("all")
    shap.plots.bar(explanation, show=False)
    plt.close("all")
