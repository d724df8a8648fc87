"""Is the heterogeneity test calibrated for one pre-specified learner? Null trials, no peers.

    .venv/bin/python benchmarks/null_heterogeneity.py --learners bcf effect_linear
        [--pipeline pipelines/stamp-null.yaml] [--replications 50] [--permutations 400]

On the recovery study's null cohorts (the same seeds, `personalize.study.run.study_seeds`),
each learner is cross-fitted exactly as training does (the same folds and outcome model),
and the BLP differential test (`stats.blp.blp_test`) is run on its out-of-fold benefit
without any adjustment for a choice among learners: grf's HC3 test, and the test training
runs (its standard error widened for the cross-fitting). Beside it, grf's test on
`--permutations` random permutations of that benefit across patients: a predictor unrelated
to the patients, for which the test should reject at its nominal 5%. If the permuted
benefits reject at 5% but the learner's own more often, the learner's out-of-fold benefit
tracks held-out outcome contrasts beyond chance on a null trial, and the test is not at
fault. Writes a Markdown report (SYNTHETIC data).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.model_selection import StratifiedKFold

from personalize.config import load_pipeline
from personalize.data.simulate import simulate
from personalize.data.validate import Cohort, prepare
from personalize.learners import make_learner, outcome_learner
from personalize.stats.blp import BLPResult, blp_test
from personalize.stats.missingness import ipcw_weights
from personalize.study.run import study_seeds
from personalize.training import cross_fit, strata

ROOT = Path(__file__).resolve().parents[1]
ALPHA = 0.05
T_CRIT = 1.645  # one-sided 5% (the residual degrees of freedom are in the hundreds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="pipelines/stamp-null.yaml")
    parser.add_argument("--learners", nargs="+", default=["bcf", "effect_linear"])
    parser.add_argument("--replications", type=int, default=50)
    parser.add_argument("--permutations", type=int, default=400)
    parser.add_argument("--n", type=int, default=770, help="patients per trial")
    parser.add_argument("--seed", type=int, default=0, help="the recovery study's --seed")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/null-heterogeneity.md"
    )
    args = parser.parse_args(argv)
    spec = load_pipeline(ROOT / args.pipeline)
    sim = spec.cohort.simulate
    if sim is None:
        raise SystemExit(f"{args.pipeline}: no cohort.simulate scenario")
    cfg = spec.training
    _, seeds = study_seeds(args.seed, args.replications)
    rows: list[dict[str, float]] = []
    start = time.perf_counter()
    with Progress(
        TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task("null trials", total=len(seeds))
        for r, seed in enumerate(seeds):
            cohort = prepare(simulate(sim.scenario, args.n, seed).cohort, spec)
            weight = ipcw_weights(
                cohort.X, cohort.treated, cohort.observed, spec.outcome.missing, cfg.ipcw_clip
            ).weights
            e = float(cohort.treated.mean())
            splitter = StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
            folds = list(splitter.split(cohort.X, strata(cohort)))
            nuisance = cross_fit(
                outcome_learner(spec.outcome.kind, cfg.seed), cohort, weight, folds
            )
            rng = np.random.default_rng(r)
            row: dict[str, float] = {"replication": r}
            for name in args.learners:
                mu0, mu1 = cross_fit(
                    make_learner(name, spec.outcome.kind, cfg.seed), cohort, weight, folds
                )
                tau = mu1 - mu0
                own = differential(cohort, e, nuisance, weight, tau)
                diff = own.differential_forest_prediction
                perm = np.array(
                    [
                        differential(
                            cohort, e, nuisance, weight, rng.permutation(tau)
                        ).differential_forest_prediction.t
                        for _ in range(args.permutations)
                    ]
                )
                row[f"{name}_p"] = diff.p_value
                row[f"{name}_bound_p"] = own.heterogeneity.p_value
                row[f"{name}_perm_p"] = (1 + np.sum(perm >= diff.t)) / (1 + len(perm))
                row[f"{name}_perm_reject"] = float(np.mean(perm > T_CRIT))
                row[f"{name}_sd"] = float(tau.std())
            rows.append(row)
            bar.advance(task)
    minutes = (time.perf_counter() - start) / 60
    command = "python benchmarks/null_heterogeneity.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    args.out.write_text(report(rows, args, command, minutes))
    print(args.out.read_text())
    return 0


def differential(
    cohort: Cohort,
    e: float,
    nuisance: tuple[np.ndarray, np.ndarray],
    weight: np.ndarray,
    benefit: np.ndarray,
) -> BLPResult:
    """The BLP test of `benefit` as training runs it, before the choice among learners."""
    return blp_test(cohort.y, cohort.treated, e, *nuisance, benefit, weight)


def report(
    rows: list[dict[str, float]], args: argparse.Namespace, command: str, minutes: float
) -> str:
    n = len(rows)
    lines = [
        "# Heterogeneity test on null trials, one learner, no adjustment (SYNTHETIC data)",
        "",
        f"Command: `{command}` ({minutes:.1f} min). Pipeline `{args.pipeline}`; the recovery "
        f"study's null cohorts (seed {args.seed}, {n} replications of {args.n} patients); "
        f"{args.permutations} permutations of each learner's out-of-fold benefit per trial.",
        "",
        "| learner | rejects at 5% (own benefit, HC3) | ... with the cross-fitting bound | "
        "rejects at 5% (permutation p) | permuted benefits rejecting (mean) | "
        "SD of the out-of-fold benefit (median) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in args.learners:
        own = sum(r[f"{name}_p"] < ALPHA for r in rows)
        bound = sum(r[f"{name}_bound_p"] < ALPHA for r in rows)
        perm_p = sum(r[f"{name}_perm_p"] < ALPHA for r in rows)
        perm = float(np.mean([r[f"{name}_perm_reject"] for r in rows]))
        sd = float(np.median([r[f"{name}_sd"] for r in rows]))
        lines.append(
            f"| `{name}` | {own} of {n} ({own / n:.0%}) | {bound} of {n} ({bound / n:.0%}) | "
            f"{perm_p} of {n} | {perm:.3f} | {sd:.3f} |"
        )
    lines += [
        "",
        "A calibrated test rejects in about 5% of null trials; the permuted benefits (a",
        "predictor unrelated to the patients) show what the test itself does.",
        "",
        "| replication | " + " | ".join(f"`{name}` p | perm p" for name in args.learners) + " |",
        "| --- | " + " | ".join("--- | ---" for _ in args.learners) + " |",
    ]
    for r in rows:
        cells = " | ".join(f"{r[f'{k}_p']:.4f} | {r[f'{k}_perm_p']:.4f}" for k in args.learners)
        lines.append(f"| {int(r['replication'])} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
