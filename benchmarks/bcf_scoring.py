"""BCF scoring benchmark: the posterior draws and the drivers, each against the path before.

    .venv/bin/python benchmarks/bcf_scoring.py [--rows 100000] [--repeat 3] [--threads 1]

Fits the `bcf` learner (served chain: 4 chains x 25 draws, 250 prognostic + 100 effect trees
per draw) to a SYNTHETIC STAMP cohort of 770 patients, then on --rows fresh simulated
patients times, in one process and alternating the two paths so that both see the same
machine load:

* `arm_draws` (both arms' posterior draws, what scoring calls) with the forests evaluated
  shape by shape (`TreeArrays.sums`) and tree by tree (`sums_by_tree`, the path before),
  and each forest's sums alone;
* `contributions` (the drivers) given the arms the model has, with the root splits looked
  up in their step functions (`TreeArrays.attributions`), against the path before: every
  row walked down every tree (`attributions_by_tree`) and the arms drawn again; and each
  posterior-mean forest's attributions alone.

Asserts the two paths agree; medians of --repeat.

Writes benchmarks/results/bcf-scoring.md (and prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from personalize import fast_trees
from personalize.config import load_pipeline
from personalize.data.simulate import simulate
from personalize.data.validate import prepare
from personalize.learners.bcf import BCFLearner, TreeArrays

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bcf-scoring.md"
COHORT, COHORT_SEED, ROWS_SEED = 770, 2, 1000


def paired_medians(
    old: Callable[[], Any], new: Callable[[], Any], repeat: int
) -> tuple[float, float]:
    """Median seconds of each, runs alternated (old, new, old, new, ...)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, into in ((old, times[0]), (new, times[1])):
            start = time.perf_counter()
            fn()
            into.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def by_tree() -> contextlib.AbstractContextManager[Any]:
    """Every forest evaluated tree by tree (the path before) while active."""
    return mock.patch.object(TreeArrays, "sums", TreeArrays.sums_by_tree)


def walked() -> contextlib.AbstractContextManager[Any]:
    """Every forest explained by walking every row down every tree (the path before)."""
    return mock.patch.object(TreeArrays, "attributions", TreeArrays.attributions_by_tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    fast_trees.set_threads(args.threads)

    spec = load_pipeline(ROOT / "pipelines" / "stamp.yaml")
    cohort = prepare(simulate("stamp", COHORT, COHORT_SEED).cohort, spec)
    obs = cohort.observed
    start = time.perf_counter()
    learner = BCFLearner("binary", seed=1).fit(
        cohort.X[obs], cohort.treated[obs], cohort.y[obs], np.ones(obs.sum())
    )
    fit_s = time.perf_counter() - start
    X = prepare(simulate("stamp", args.rows, ROWS_SEED).cohort, spec).X
    Z = learner._matrix(X)
    print(f"fitted in {fit_s:.1f} s; scoring {len(X):,} rows", flush=True)

    # agreement (and every kernel compiled before timing)
    new_c, new_e = learner.latent_draws(X)
    new_p0, new_p1 = learner.arm_draws(X)
    with by_tree():
        old_c, old_e = learner.latent_draws(X)
        old_p0, old_p1 = learner.arm_draws(X)
    latent_diff = max(float(np.abs(new_c - old_c).max()), float(np.abs(new_e - old_e).max()))
    arm_diff = max(float(np.abs(new_p0 - old_p0).max()), float(np.abs(new_p1 - old_p1).max()))
    for new, old in ((new_c, old_c), (new_e, old_e), (new_p0, old_p0), (new_p1, old_p1)):
        np.testing.assert_allclose(new, old, rtol=1e-12, atol=1e-12)

    # the drivers: the new path is given the arms (as the model now passes them)
    arms = learner.predict_arms(X)
    new_contrib = learner.contributions(X, arms=arms)
    with walked():
        old_contrib = learner.contributions(X)
    # the rescale rule divides each row's attributions by their latent sum, which nearly
    # cancels in some rows: there a rounding difference is amplified (but both paths add
    # up exactly to the arms)
    contrib_diff, contrib_rel = 0.0, 0.0
    for base, phi, arm in (("base0", "phi0", arms[0]), ("base1", "phi1", arms[1])):
        assert np.array_equal(getattr(new_contrib, base), getattr(old_contrib, base))
        new_a, old_a = getattr(new_contrib, phi), getattr(old_contrib, phi)
        for c in (new_contrib, old_contrib):
            np.testing.assert_allclose(getattr(c, base) + getattr(c, phi).sum(1), arm, atol=1e-10)
        diff = np.abs(new_a - old_a)
        contrib_diff = max(contrib_diff, float(diff.max()))
        largest = np.abs(old_a).max(axis=1, keepdims=True)
        contrib_rel = max(contrib_rel, float((diff / np.where(largest > 0, largest, 1)).max()))
    scale = learner.y_std_ / learner.mu_.draws
    attr_diff, attr_rel = 0.0, 0.0
    for merged in (learner.mu_mean_, learner.tau_mean_):
        new_phi, new_base = merged.attributions(Z, scale)
        old_phi, old_base = merged.attributions_by_tree(Z, scale)
        assert new_base == old_base
        np.testing.assert_allclose(new_phi, old_phi, rtol=1e-12, atol=1e-14)
        diff = np.abs(new_phi - old_phi)
        attr_diff = max(attr_diff, float(diff.max()))
        big = np.abs(old_phi) >= 1e-3
        attr_rel = max(attr_rel, float((diff[big] / np.abs(old_phi[big])).max()))

    def arm_draws_by_tree() -> None:
        with by_tree():
            learner.arm_draws(X)

    def contributions_before() -> None:
        with walked():
            learner.contributions(X)

    rows: list[tuple[str, str, float, float]] = []
    old_s, new_s = paired_medians(arm_draws_by_tree, lambda: learner.arm_draws(X), args.repeat)
    rows.append(("arm_draws (both arms, every draw)", "", old_s, new_s))
    for name, forest in (("prognostic", learner.mu_), ("effect", learner.tau_)):
        shared = forest.shared()
        detail = (
            f"{forest.draws} draws x {forest.trees} trees = {forest.draws * forest.trees:,}; "
            f"{len(shared.root) - 1:,} shapes, {len(shared.draw):,} (shape, draw) pairs"
        )
        old_s, new_s = paired_medians(
            functools.partial(forest.sums_by_tree, Z),
            functools.partial(forest.sums, Z),
            args.repeat,
        )
        rows.append((f"sums, {name} forest", detail, old_s, new_s))
    old_s, new_s = paired_medians(
        contributions_before, lambda: learner.contributions(X, arms=arms), args.repeat
    )
    rows.append(("contributions (both arms' drivers)", "", old_s, new_s))
    for name, forest, merged in (
        ("prognostic", learner.mu_, learner.mu_mean_),
        ("effect", learner.tau_, learner.tau_mean_),
    ):
        size = np.diff(np.append(merged.start, len(merged.feature)))
        splits = int((merged.feature >= 0).sum())
        roots = int((merged.feature[merged.start] >= 0).sum())
        detail = (
            f"posterior mean of {forest.draws * forest.trees:,} trees: {merged.trees:,} shapes, "
            f"{splits:,} splits, {roots:,} of them roots; {int((size == 5).sum()):,} trees "
            f"with one split below the root, {int((size > 5).sum()):,} with more"
        )
        old_s, new_s = paired_medians(
            functools.partial(merged.attributions_by_tree, Z, scale),
            functools.partial(merged.attributions, Z, scale),
            args.repeat,
        )
        rows.append((f"attributions, {name} forest", detail, old_s, new_s))

    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    n = len(X)
    lines = [
        "# BCF scoring benchmark",
        "",
        "Command (from the repository root):",
        "",
        "```",
        f".venv/bin/python benchmarks/bcf_scoring.py --rows {args.rows} --repeat {args.repeat}"
        f" --threads {args.threads}",
        "```",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; numpy {metadata.version('numpy')}, numba "
        f"{metadata.version('numba')}, stochtree {metadata.version('stochtree')}. Load "
        f"average at start {load_start}, at end {load_end} (the machine was shared: the "
        "ratios, from alternated runs in one process, are the figures to trust).",
        "",
        f"Model: `bcf` (BCFLearner('binary', seed=1), served chain) fitted in {fit_s:.1f} s to "
        f"a SYNTHETIC STAMP cohort of {COHORT} patients (seed {COHORT_SEED}, observed "
        f"outcomes: {int(obs.sum())}). Scored: {n:,} fresh simulated patients (seed "
        f"{ROWS_SEED}), {args.threads} thread(s) (fast_trees.set_threads); median of "
        f"{args.repeat}; 1M rows projected linearly.",
        "",
        "Posterior draws: `before` walks every tree of every draw "
        "(`TreeArrays.sums_by_tree`); `after` walks each distinct tree shape once per row and "
        "adds its leaf's value for every draw that has it (`TreeArrays.sums`).",
        "",
        "Drivers: `before` walks every row down every tree of the posterior-mean forests "
        "(`TreeArrays.attributions_by_tree`) and `contributions` draws the arms again "
        "(`predict_arms`); `after` looks each feature's root-split terms up in one step "
        "function per feature, walks only the splits below the roots, in blocks of rows with "
        "the features transposed (`TreeArrays.attributions`), and `contributions` is given "
        "the arms the model has (`arms=`).",
        "",
        "| what | before s | after s | before rows/s | after rows/s | speed-up "
        "| 1M rows before | 1M rows after | forest |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for what, detail, old_s, new_s in rows:
        lines.append(
            f"| {what} | {old_s:.2f} | {new_s:.3f} | {n / old_s:,.0f} | {n / new_s:,.0f} | "
            f"{old_s / new_s:.1f}x | {old_s * 1e6 / n:,.0f} s | {new_s * 1e6 / n:,.1f} s "
            f"| {detail} |"
        )
    sums_new = rows[1][3] + rows[2][3]
    attr_new = rows[4][3] + rows[5][3]
    lines += [
        "",
        f"Of the new arm_draws time, the two forests' sums are {sums_new:.2f} s "
        f"({sums_new / rows[0][3]:.0%}); the rest is the design matrix, the latent scale "
        "and the probit (ndtr) of rows x draws values per arm. Of the new contributions "
        f"time, the two forests' attributions are {attr_new:.2f} s "
        f"({attr_new / rows[3][3]:.0%}); the rest is the design matrix, the one-hot columns "
        "gathered to their features and the rescale rule.",
        "",
        f"Agreement on all {n:,} rows: latent draws differ by at most {latent_diff:.1e}, arm "
        f"probabilities by at most {arm_diff:.1e} (asserted: rtol 1e-12, atol 1e-12); the "
        f"forests' attributions by at most {attr_diff:.1e} ({attr_rel:.1e} relative where "
        "at least 1e-3; asserted: rtol 1e-12, atol 1e-14, as an attribution that nearly "
        "cancels to 0 has no relative precision in any order); only the order of the "
        "additions differs. The contributions (probability scale) have the same bases and "
        f"differ by at most {contrib_diff:.1e}, {contrib_rel:.1e} of the row's largest "
        "contribution: the rescale rule divides each row's attributions by their latent sum, "
        "which nearly cancels in a few rows and there amplifies the rounding; both add up "
        "to the arms (asserted: atol 1e-10).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
