"""BCF scoring benchmark: each distinct tree shape once per row vs every tree of every draw.

    .venv/bin/python benchmarks/bcf_scoring.py [--rows 100000] [--repeat 3] [--threads 1]

Fits the `bcf` learner (served chain: 4 chains x 25 draws, 250 prognostic + 100 effect trees
per draw) to a SYNTHETIC STAMP cohort of 770 patients, then on --rows fresh simulated
patients times, in one process and alternating the two paths so that both see the same
machine load: `arm_draws` (both arms' posterior draws, what scoring calls) with the forests
evaluated shape by shape (`TreeArrays.sums`) and tree by tree (`sums_by_tree`, the path
before), and each forest's sums alone. Asserts the two paths agree; medians of --repeat.

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

    def arm_draws_by_tree() -> None:
        with by_tree():
            learner.arm_draws(X)

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
        "`by tree` walks every tree of every draw (`TreeArrays.sums_by_tree`, the path "
        "before); `by shape` walks each distinct tree shape once per row and adds its leaf's "
        "value for every draw that has it (`TreeArrays.sums`).",
        "",
        "| what | by tree s | by shape s | by tree rows/s | by shape rows/s | speed-up "
        "| 1M rows by tree | 1M rows by shape | forest |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for what, detail, old_s, new_s in rows:
        lines.append(
            f"| {what} | {old_s:.2f} | {new_s:.3f} | {n / old_s:,.0f} | {n / new_s:,.0f} | "
            f"{old_s / new_s:.1f}x | {old_s * 1e6 / n:,.0f} s | {new_s * 1e6 / n:,.1f} s "
            f"| {detail} |"
        )
    sums_new = rows[1][3] + rows[2][3]
    lines += [
        "",
        f"Of the new arm_draws time, the two forests' sums are {sums_new:.2f} s "
        f"({sums_new / rows[0][3]:.0%}); the rest is the design matrix, the latent scale "
        "and the probit (ndtr) of rows x draws values per arm.",
        "",
        f"Agreement on all {n:,} rows: latent draws differ by at most {latent_diff:.1e}, arm "
        f"probabilities by at most {arm_diff:.1e} (asserted: rtol 1e-12, atol 1e-12; only "
        "the order of the additions differs).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
