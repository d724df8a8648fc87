"""Compiled trees against LightGBM itself: raw scores bit for bit, TreeSHAP to 1e-9.

Boosters are trained to produce every kind of split LightGBM writes (numeric with missing
type None / NaN / Zero, categorical bitsets longer than one 32-bit word) and are then fed
random and adversarial rows: missing values, +-inf, values exactly at and next to every
threshold, LightGBM's zero threshold, unseen and fractional category codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from personalize import fast_trees
from personalize.learners.boosting import TRIAL_PARAMS, raw_score, tree_contributions

pytestmark = pytest.mark.skipif(not fast_trees.HAVE_NUMBA, reason="numba is not installed")

N_CAT = 40  # more than 32 levels: bitsets of two words


def training_data(seed: int, n: int = 700) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.normal(size=n),
            rng.integers(0, 5, n).astype(float),  # few distinct values: exact thresholds
            rng.uniform(-1, 1, n),
            rng.integers(0, N_CAT, n).astype(float),  # categorical
            rng.integers(0, 3, n).astype(float),  # categorical, few levels
            np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)),  # many zeros
        ]
    )
    X[rng.random(n) < 0.15, 0] = np.nan  # missing in training: NaN-type splits
    X[rng.random(n) < 0.1, 3] = np.nan
    logit = X[:, 1] - 2 * np.nan_to_num(X[:, 0]) + (X[:, 3] % 3 == 0) + X[:, 5] * X[:, 2]
    y_class = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    y_reg = logit + rng.normal(size=n)
    return X, y_class, y_reg


def boosters() -> Iterator[tuple[str, Any, np.ndarray]]:
    X, yc, yr = training_data(0)
    variants: list[tuple[str, dict[str, Any]]] = [
        ("trial", {}),
        ("no-missing", {"use_missing": False}),
        ("zero-as-missing", {"zero_as_missing": True}),
        ("stumps", {"num_leaves": 2, "n_estimators": 30}),
        ("deep", {"num_leaves": 9, "max_depth": -1, "n_estimators": 40}),
    ]
    for name, extra in variants:
        params = {**TRIAL_PARAMS, **extra, "min_data_per_group": 5, "cat_smooth": 1.0}
        for cls, y in ((lgb.LGBMClassifier, yc), (lgb.LGBMRegressor, yr)):
            model = cls(random_state=1, **params).fit(X, y, categorical_feature=[3, 4])
            yield f"{name}-{cls.__name__}", model, X


def adversarial(model: Any, X: np.ndarray, seed: int) -> np.ndarray:
    """Rows at, just below and just above every threshold of every tree, plus missing,
    infinite, tiny and odd categorical values, mixed into random rows."""
    rng = np.random.default_rng(seed)
    parsed = fast_trees.parse_model_string(model.booster_.model_to_string())
    rows = [X[rng.integers(0, len(X), 400)]]
    zero = fast_trees.ZERO_THRESHOLD
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, zero, -zero, 2 * zero, -2 * zero, 1e-300]
    for tree in parsed.trees:
        for j in range(tree.k):
            f = int(tree.split_feature[j])
            thr = float(tree.threshold[j])
            if int(tree.decision_type[j]) & 1:
                continue
            for v in (thr, np.nextafter(thr, -np.inf), np.nextafter(thr, np.inf)):
                row = X[rng.integers(0, len(X))].copy()
                row[f] = v
                rows.append(row[None, :])
    block = np.vstack(rows)
    n = len(block)
    for f in range(X.shape[1]):
        pick = rng.random(n) < 0.12
        block[pick, f] = rng.choice(specials, pick.sum())
    codes = [-1.0, -0.5, 0.5, 1.5, 31.0, 32.0, 39.0, 40.0, 63.0, 64.0, 1e10, 2**31, 2**31 - 1]
    for f in (3, 4):
        pick = rng.random(n) < 0.3
        block[pick, f] = rng.choice([*codes, np.nan], pick.sum())
    return block


@pytest.fixture(scope="module")
def cases() -> list[tuple[str, Any, np.ndarray]]:
    return [
        (name, model, adversarial(model, X, i)) for i, (name, model, X) in enumerate(boosters())
    ]


def test_parsing_covers_every_split_kind(cases: list[tuple[str, Any, np.ndarray]]) -> None:
    kinds: set[tuple[int, int]] = set()
    widest = 0
    for _, model, _ in cases:
        for tree in fast_trees.parse_model_string(model.booster_.model_to_string()).trees:
            for j in range(tree.k):
                dt = int(tree.decision_type[j])
                kinds.add((dt & 1, (dt >> 2) & 3))
                if dt & 1:
                    lo, hi = tree.cat_boundaries[
                        int(tree.threshold[j]) : int(tree.threshold[j]) + 2
                    ]
                    widest = max(widest, int(hi - lo))
    # (categorical?, missing type): numeric None / Zero / NaN, categorical None / NaN
    assert {(0, 0), (0, 1), (0, 2), (1, 0), (1, 2)} <= kinds
    assert widest >= 2, "no categorical bitset spans two words"
    assert max(t.k for _, m, _ in cases for t in _trees(m)) == fast_trees.MAX_NODES


def _trees(model: Any) -> list[fast_trees.Tree]:
    return fast_trees.parse_model_string(model.booster_.model_to_string()).trees


def test_raw_scores_are_bit_identical_to_lightgbm(cases: list[tuple[str, Any, np.ndarray]]) -> None:
    for name, model, rows in cases:
        forest = fast_trees.single_forest(model)
        assert forest is not None, name
        xt = forest.matrix(rows)
        assert xt is not None
        ours = forest.raw_scores(xt)[0]
        theirs = model.predict(rows, raw_score=True)
        assert np.array_equal(ours, theirs), (name, np.abs(ours - theirs).max())


def test_contributions_equal_pred_contrib(cases: list[tuple[str, Any, np.ndarray]]) -> None:
    for name, model, rows in cases:
        ours = fast_trees.contributions(model, rows)
        assert ours is not None, name
        phi, base = ours
        theirs = model.predict(rows, pred_contrib=True)
        assert np.abs(phi - theirs[:, :-1]).max() <= 1e-9, name
        assert np.abs(base - theirs[:, -1]).max() <= 1e-9, name
        # and they add up to the prediction, as TreeSHAP's do
        raw = model.predict(rows, raw_score=True)
        assert np.abs(base + phi.sum(axis=1) - raw).max() <= 1e-9, name


def _xt(forest: fast_trees.Forest, rows: np.ndarray) -> np.ndarray:
    xt = forest.matrix(rows)
    assert xt is not None
    return xt


def test_a_row_gets_the_same_bits_alone_in_any_batch_and_thread_count() -> None:
    _, model, X = next(boosters())
    rows = adversarial(model, X, 7)[:600]
    forest = fast_trees.single_forest(model)
    assert forest is not None
    whole_phi, _ = forest.contributions(_xt(forest, rows))
    whole_raw = forest.raw_scores(_xt(forest, rows))[0]
    for i in (0, 1, 255, 256, 257, 599):
        one = _xt(forest, rows[i : i + 1])
        assert np.array_equal(forest.contributions(one)[0][0], whole_phi[i])
        assert forest.raw_scores(one)[0][0] == whole_raw[i]
    big = _xt(forest, np.tile(rows, (120, 1)))  # enough rows to split between threads
    before = fast_trees.threads()
    try:
        fast_trees.set_threads(1)
        serial, serial_phi = forest.raw_scores(big), forest.contributions(big)[0]
        fast_trees.set_threads(3)
        assert np.array_equal(forest.raw_scores(big), serial)
        assert np.array_equal(forest.contributions(big)[0], serial_phi)
    finally:
        fast_trees.set_threads(before)


def test_pandas_categoricals_including_unseen_and_missing_levels() -> None:
    rng = np.random.default_rng(3)
    n = 800
    levels = [f"L{i}" for i in range(36)]
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "c": pd.Categorical(rng.choice(levels[:30], n), categories=levels),
            "d": pd.Categorical(rng.choice(["a", "b", None], n), categories=["a", "b", "z"]),
        }
    )
    y = (frame["x"] + frame["c"].cat.codes % 4 + rng.normal(size=n) > 1.5).astype(int)
    model = lgb.LGBMClassifier(random_state=0, **{**TRIAL_PARAMS, "min_data_per_group": 5}).fit(
        frame, y
    )
    test = pd.DataFrame(
        {
            "x": np.r_[rng.normal(size=300), np.nan, np.inf],
            # levels 30..35 were declared but never seen in training; some missing
            "c": pd.Categorical(rng.choice([*levels, None], 302), categories=levels),
            "d": pd.Categorical(rng.choice(["a", "b", "z", None], 302), categories=["a", "b", "z"]),
        }
    )
    many = pd.concat([test] * 3, ignore_index=True)  # enough rows for the compiled path
    assert np.array_equal(raw_score(model, many), model.predict(many, raw_score=True))
    phi, base = tree_contributions(model, test)
    theirs = model.predict(test, pred_contrib=True)
    assert np.abs(phi - theirs[:, :-1]).max() <= 1e-9
    assert np.abs(base - theirs[:, -1]).max() <= 1e-9


def test_batch_evaluates_many_boosters_at_once_with_the_same_bits() -> None:
    models = [model for _, model, _ in boosters()][:6]
    X = training_data(1, 2000)[0]
    frame = pd.DataFrame(X)
    expected = [m.predict(frame, raw_score=True) for m in models]
    with fast_trees.batch(models):
        got = [raw_score(m, frame) for m in models]
        again = raw_score(models[0], frame.copy())  # an equal frame: answered from the pass
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert np.array_equal(again, expected[0])


def test_models_outside_the_envelope_fall_back_to_lightgbm() -> None:
    X, _, yr = training_data(2)
    big = lgb.LGBMRegressor(num_leaves=31, n_estimators=5, verbose=-1).fit(X, yr)
    assert fast_trees.single_forest(big) is None
    assert np.array_equal(raw_score(big, X), big.predict(X, raw_score=True))
    phi, base = tree_contributions(big, X[:50])
    assert np.allclose(base + phi.sum(axis=1), big.predict(X[:50], raw_score=True))


def test_float32_frames_are_left_to_lightgbm() -> None:
    _, model, X = next(boosters())
    frame = pd.DataFrame(X).astype(np.float32)  # LightGBM would read float32 values
    forest = fast_trees.single_forest(model)
    assert forest is not None
    assert forest.matrix(frame) is None
    assert forest.matrix(pd.DataFrame(X)) is not None
    assert np.array_equal(raw_score(model, frame), model.predict(frame, raw_score=True))
