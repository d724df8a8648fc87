"""Which posterior learner, and which mixture of them, on the DEVELOPMENT families only.

    .venv/bin/python benchmarks/components.py --kind binary --replications 6 \
        --families threshold interaction linear heavy-tails curved-prognosis

Direct fits on each simulated trial's observed patients (no training pipeline around
them: this compares the learners' posteriors alone), scored on 2,000 new simulated
patients against the truth: PEHE, coverage of the 90% posterior interval (mean and worst
trial), median width, seconds per fit. The mixtures are equal mixtures of the components'
posterior draws (100 from each). Refuses held-out families: nothing is chosen on them
(docs/scenarios.md). SYNTHETIC data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from personalize.config import load_pipeline
from personalize.data.families import DEVELOPMENT, scenario_of
from personalize.data.simulate import simulate
from personalize.data.validate import feature_frame, prepare
from personalize.learners import make_learner
from personalize.study.truth import truth_of

LEARNERS = ("bayes_linear", "bayes_basis", "bcf")
MIXTURES = {"mix_lin_bcf": ("bayes_linear", "bcf"), "mix_basis_bcf": ("bayes_basis", "bcf")}
PIPELINES = {"binary": "pipelines/stamp.yaml", "continuous": "pipelines/stamp-continuous.yaml"}


def thin(draws: np.ndarray, k: int) -> np.ndarray:
    return draws[:, np.linspace(0, draws.shape[1] - 1, k).round().astype(int)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=list(PIPELINES), default="binary")
    parser.add_argument("--replications", type=int, default=6)
    parser.add_argument("--families", nargs="+", default=[f for f in DEVELOPMENT if f != "null"])
    args = parser.parse_args()
    held_out = [f for f in args.families if f not in DEVELOPMENT]
    if held_out:
        raise SystemExit(f"not development families: {', '.join(held_out)}")
    pipe = load_pipeline(PIPELINES[args.kind])
    for family in args.families:
        scenario = scenario_of(family)
        test = simulate(scenario, n=2000, seed=999)
        Xt = feature_frame(test.cohort, pipe)
        tau = truth_of(test.truth, pipe, scenario).benefit
        rows: dict[str, list[tuple[float, float, float, float]]] = {
            k: [] for k in (*LEARNERS, *MIXTURES)
        }
        for r in range(args.replications):
            cohort = prepare(simulate(scenario, n=770, seed=200 + r).cohort, pipe)
            obs = ~np.isnan(cohort.y)
            X, t, y = cohort.X[obs].reset_index(drop=True), cohort.treated[obs], cohort.y[obs]
            draws, secs = {}, {}
            for name in LEARNERS:
                t0 = time.perf_counter()
                model = make_learner(name, args.kind, r).fit(X, t, y, np.ones(len(y)))  # type: ignore[arg-type]
                d0, d1 = model.arm_draws(Xt)
                draws[name], secs[name] = d1 - d0, time.perf_counter() - t0
            for mix, parts in MIXTURES.items():
                draws[mix] = np.hstack([thin(draws[p], 100) for p in parts])
            for name, b in draws.items():
                est = b.mean(axis=1)
                lo, hi = np.quantile(b, [0.05, 0.95], axis=1)
                rows[name].append(
                    (
                        float(np.sqrt(np.mean((est - tau) ** 2))),
                        float(np.mean((lo <= tau) & (tau <= hi))),
                        float(np.median(hi - lo)),
                        secs.get(name, 0.0),
                    )
                )
        print(f"## {args.kind}, {family} (sd of the true benefit {tau.std():.3f})\n")
        print(
            "| method | PEHE | coverage | worst trial | width | s/fit |\n|---|---|---|---|---|---|"
        )
        for name, got in rows.items():
            a = np.array(got)
            print(
                f"| {name} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.2f} | {a[:, 1].min():.2f} "
                f"| {a[:, 2].mean():.3f} | {a[:, 3].mean():.1f} |"
            )
        print(flush=True)


if __name__ == "__main__":
    main()
