"""Benchmark: wall time of `personalize train` on the simulated 770-patient STAMP cohort.

    .venv/bin/python benchmarks/train.py --repeats 5

Each repeat is a fresh `personalize train pipelines/stamp.yaml --json` process (import,
validation, cross-fitting, calibration, evidence, bootstrap, MLflow logging and
registration) against a throw-away SQLite tracking store; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pipeline", default="pipelines/stamp.yaml")
    args = parser.parse_args()
    exe = Path(sys.executable).parent / "personalize"
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort.parquet"
        subprocess.run(
            [
                str(exe),
                "simulate",
                "--scenario",
                "stamp",
                "--n",
                "770",
                "--seed",
                "1",
                "--out",
                str(cohort),
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        times, summary = [], {}
        for i in range(args.repeats):
            uri = f"sqlite:///{tmp}/mlflow-{i}.db"
            start = time.perf_counter()
            done = subprocess.run(
                [
                    str(exe),
                    "train",
                    args.pipeline,
                    "--cohort",
                    str(cohort),
                    "--tracking-uri",
                    uri,
                    "--json",
                ],
                check=True,
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - start)
            summary = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"repeat {i + 1}: {times[-1]:.1f} s", flush=True)
    print(
        f"personalize train {args.pipeline} (N=770): median {statistics.median(times):.1f} s "
        f"over {len(times)} runs (min {min(times):.1f}, max {max(times):.1f}); "
        f"learner {summary.get('learner')}"
    )


if __name__ == "__main__":
    main()
