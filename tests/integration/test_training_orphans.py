"""What killed and concurrent trainings leave in the registry: a run killed with -9 is
ended KILLED by the next training, a version without its gate metrics is marked
incomplete and never left as `candidate`, and two trainings at once take turns so that
each one's reported candidate is true. Real SQLite registry, real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from personalize import registry
from personalize.config import load_pipeline
from personalize.data.simulate import simulate
from personalize.data.table import write_table

pytestmark = pytest.mark.slow

NAME = "personalize-stamp"
QUICK = "training: {bootstrap: 10, learners: [effect_linear]}\n"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, str]:
    """A quick pipeline file, its cohort and an empty registry of the test's own."""
    pipeline = tmp_path / "stamp-quick.yaml"
    pipeline.write_text(Path("pipelines/stamp.yaml").read_text() + QUICK)
    cohort = tmp_path / "cohort.parquet"
    write_table(simulate("stamp", 400, 3).cohort, cohort)
    return pipeline, cohort, f"sqlite:///{tmp_path / 'mlflow.db'}"


def start_training(pipeline: Path, cohort: Path, uri: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "personalize.cli",
            "train",
            str(pipeline),
            "--cohort",
            str(cohort),
            "--tracking-uri",
            uri,
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_the_next_training_ends_dead_runs_and_marks_versions_without_gates(
    setup: tuple[Path, Path, str],
) -> None:
    pipeline, cohort, uri = setup
    spec = load_pipeline(pipeline)
    proc = start_training(pipeline, cohort, uri)
    deadline = time.monotonic() + 180
    while not runs(uri, spec.name):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the training never started its run"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # no chance to end its run
    proc.communicate(timeout=60)
    (dead,) = runs(uri, spec.name)
    assert dead.info.status == "RUNNING"

    # what a training killed right after creating its version used to leave: a version
    # without gate metrics, holding `candidate`
    client = MlflowClient(uri)
    client.create_registered_model(NAME)
    orphan = client.create_model_version(
        NAME, source=f"{dead.info.artifact_uri}/model", run_id=dead.info.run_id
    )
    client.set_registered_model_alias(NAME, registry.CANDIDATE, orphan.version)

    reg = registry.train(spec, simulate("stamp", 400, 3).cohort, uri)
    ended = client.get_run(dead.info.run_id)
    assert ended.info.status == "KILLED"
    assert registry.RUN_ENDED in ended.data.tags
    marked = client.get_model_version(NAME, orphan.version)
    assert registry.INCOMPLETE in marked.tags
    assert str(client.get_model_version_by_alias(NAME, registry.CANDIDATE).version) == reg.version
    with pytest.raises(registry.GateError, match="incomplete"):
        registry.promote(NAME, str(orphan.version), uri)
    # the new version was registered with its gate metrics and its process recorded
    new = client.get_model_version(NAME, reg.version)
    assert any(key.startswith("gate.calibration_slope.") for key in new.tags)
    tags = client.get_run(reg.run_id).data.tags
    assert tags[registry.RUN_MODEL] == NAME and tags[registry.RUN_PID].isdigit()
    # a live training's run is never touched: this one is FINISHED, and stays so
    registry.train(spec, simulate("stamp", 400, 4).cohort, uri)
    assert client.get_run(reg.run_id).info.status == "FINISHED"


def test_two_trainings_at_once_take_turns_and_report_the_true_candidate(
    setup: tuple[Path, Path, str],
) -> None:
    pipeline, cohort, uri = setup
    procs = [start_training(pipeline, cohort, uri) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr
    reported = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert {r["version"] for r in reported} == {"1", "2"}
    assert sum("waiting" in stderr for _, stderr in outputs) == 1
    by_run = {r["run_id"]: r["version"] for r in reported}
    first, second = sorted(runs(uri, load_pipeline(pipeline).name), key=lambda r: r.info.start_time)
    assert first.info.end_time <= second.info.start_time  # one after the other
    candidate = MlflowClient(uri).get_model_version_by_alias(NAME, registry.CANDIDATE)
    assert str(candidate.version) == by_run[second.info.run_id]


def test_a_run_is_dead_when_its_process_is_gone_or_its_pid_was_reused() -> None:
    own = registry._process_tags(NAME)
    assert not registry._gone(own, shared_lock=True)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = {**own, registry.RUN_PID: str(child.pid)}
    assert registry._gone(gone, shared_lock=False)
    reused = {**own, registry.RUN_PROCESS: "another-boot:123"}
    assert registry._gone(reused, shared_lock=False)
    elsewhere = {**own, registry.RUN_HOST: "another-host"}
    assert registry._gone(elsewhere, shared_lock=True)  # the lock says no one else trains
    assert not registry._gone(elsewhere, shared_lock=False)  # cannot tell: leave it


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    waited: list[bool] = []
    with registry.training_lock(uri, NAME) as shared:
        assert shared
        with registry.training_lock(uri, NAME, on_wait=lambda: waited.append(True)):
            pass
        # another process cannot take it meanwhile
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fcntl, sys; fh = open(sys.argv[1], 'a+b');"
                "fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)",
                str(next(tmp_path.glob(".mlflow.db.*.train.lock"))),
            ],
            capture_output=True,
            text=True,
        )
        assert probe.returncode != 0 and "BlockingIOError" in probe.stderr
    assert waited == []
