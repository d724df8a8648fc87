"""MLflow: one experiment per pipeline, one run per training, the model as a pyfunc
registered with alias `candidate`; `promote` moves `champion` only through the gates.

`ModelRef` is the one reader of `models:/<name>@<alias>` and `models:/<name>/<version>`
references, and `resolve` the one place that asks the registry which version (and run) a
reference points at; the service and the batch scorer both go through them.

A run that fails (invalid cohort, exception mid-way) is marked FAILED and registers nothing:
registration is the last step, after every artifact has been written, and a version is
created with all its tags (gate metrics included) in one step. Trainings of one registered
model on one registry take turns (`training_lock`), so the version a training reports as
`candidate` is the candidate. A training killed outright (kill -9, a lost machine) cannot
end its own run: each run records its process (host, pid, process start), and the next
training marks such runs KILLED and any version registered without its gate metrics
incomplete (never left as `candidate`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import re
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from personalize.config import Pipeline
from personalize.data.validate import CohortError, validate
from personalize.model import PersonalizeModel
from personalize.portable import (  # PersonalizePyfunc: registered models name it here
    PersonalizePyfunc,
    package_copy,
    requirements,
    signature,
    typical_patient,
)
from personalize.stats.checks import ModelChecks

CANDIDATE = "candidate"
CHAMPION = "champion"
MODEL_FILE = "personalize_model.joblib"
# run tags naming the process that trains (to tell a dead run from a live one)
RUN_MODEL = "personalize.model_name"
RUN_HOST = "personalize.host"
RUN_PID = "personalize.pid"
RUN_PROCESS = "personalize.process"  # boot id and start time: a reused pid is another process
RUN_ENDED = "personalize.ended"
CHECK_TAG = "check."  # a version tag per model check: check.<name>.fired / .reason
CHECK_WARNING = "model check fired, promoted under `checks: warn`: "
INCOMPLETE = "personalize.incomplete"  # a version tag: registered without its gate metrics
PACKAGES = [
    "personalize",
    "lightgbm",
    "scikit-learn",
    "numpy",
    "pandas",
    "scipy",
    "mlflow",
    "pydantic",
]


def quiet_mlflow() -> None:
    """MLflow's own chatter (table creation, progress bars, pickling notices) is not for
    our users' terminals; warnings and errors still come through."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # the CloudPickle notice
    logging.getLogger("alembic").setLevel(logging.WARNING)


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded SQLite store under ./models."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store = Path("models").resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    """Local stores keep artifacts beside the database; servers use their own root."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def experiment_id(client: MlflowClient, pipeline: Pipeline, uri: str) -> str:
    exp = client.get_experiment_by_name(pipeline.name)
    if exp is not None:
        return str(exp.experiment_id)
    root = _artifact_root(uri)
    location = f"{root}/{pipeline.name}" if root else None
    return str(client.create_experiment(pipeline.name, artifact_location=location))


def cohort_dataset(pipeline: Pipeline, frame: pd.DataFrame) -> Any:
    """The cohort as MLflow's dataset (source, digest, schema; no values)."""
    from mlflow.data.pandas_dataset import from_pandas

    with warnings.catch_warnings():  # its hint on integer columns is about signatures
        warnings.simplefilter("ignore", UserWarning)
        if pipeline.cohort.path:
            return from_pandas(frame, source=pipeline.cohort.path, name=pipeline.name)
        return from_pandas(frame, name=pipeline.name)  # a frame handed over in code


def learner_params(learner: Any, name: str) -> dict[str, str]:
    """The chosen learner's hyperparameters as run params: its own settings and its trees'
    LightGBM parameters (learners keep configuration in plain attributes)."""
    out = {"learner/name": name}
    for key, value in vars(learner).items():
        if (
            not key.startswith("_")
            and not key.endswith("_")
            and isinstance(value, str | int | float | bool)
        ):
            out[f"learner/{key}"] = str(value)
    boosters = learner.boosters()
    if boosters:
        for key, value in (getattr(boosters[0], "params", None) or {}).items():
            if isinstance(value, str | int | float | bool):
                out[f"learner/lightgbm/{key}"] = str(value)[:500]
    return out


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


@dataclass(frozen=True)
class Registered:
    run_id: str
    model_name: str
    version: str
    summary: dict[str, Any]


# --------------------------------------------------------------------------- one training at a time

_held: dict[str, tuple[int, bool]] = {}  # lock key -> (depth in this process, global)
_held_guard = threading.Lock()


def _lock_key(model_name: str) -> str:
    return hashlib.sha256(model_name.encode()).hexdigest()[:16]


@contextlib.contextmanager
def training_lock(
    tracking_uri: str, model_name: str, on_wait: Callable[[], None] | None = None
) -> Iterator[bool]:
    """Hold the lock that trainings of `model_name` on this registry take in turn (the
    same process may enter it again: the CLI holds it around `train` and its report).
    `on_wait` is called once if another training holds it. Yields whether the lock is
    shared by every process that writes the registry (an SQLite file's lock file beside
    it, a PostgreSQL advisory lock) or only by this machine's (any other store)."""
    key = f"{tracking_uri}\0{model_name}"
    with _held_guard:
        depth, shared = _held.get(key, (0, False))
        if depth:
            _held[key] = (depth + 1, shared)
    if depth:
        try:
            yield shared
        finally:
            with _held_guard:
                d, g = _held[key]
                _held[key] = (d - 1, g)
        return
    with _acquire(tracking_uri, model_name, on_wait) as shared:
        with _held_guard:
            _held[key] = (1, shared)
        try:
            yield shared
        finally:
            with _held_guard:
                del _held[key]


@contextlib.contextmanager
def _acquire(uri: str, model_name: str, on_wait: Callable[[], None] | None) -> Iterator[bool]:
    if uri.startswith(("postgresql:", "postgresql+")):
        with _advisory_lock(uri, model_name, on_wait):
            yield True
        return
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        path, shared = db.with_name(f".{db.name}.{_lock_key(model_name)}.train.lock"), True
    else:  # a tracking server: this machine's trainings take turns, not every machine's
        where = Path(tempfile.gettempdir()) / "personalize-train-locks"
        where.mkdir(exist_ok=True)
        path = where / f"{_lock_key(uri + chr(0) + model_name)}.lock"
        shared = False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield shared
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(uri: str, model_name: str, on_wait: Callable[[], None] | None) -> Iterator[None]:
    """A session-level PostgreSQL advisory lock on the tracking database (released when
    the connection ends, so a killed training never leaves it held)."""
    import sqlalchemy

    key = int.from_bytes(
        hashlib.sha256(f"personalize-train:{model_name}".encode()).digest()[:8], "big", signed=True
    )
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
            if not got.scalar():
                if on_wait is not None:
                    on_wait()
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def _process_identity(pid: int) -> str | None:
    """'boot id:start time' of a live process (Linux), '' where /proc cannot tell, None
    when there is no such process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's live process
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        start = stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command name
    except (OSError, IndexError):
        return ""
    return f"{boot}:{start}"


def _process_tags(model_name: str) -> dict[str, str]:
    return {
        RUN_MODEL: model_name,
        RUN_HOST: socket.gethostname(),
        RUN_PID: str(os.getpid()),
        RUN_PROCESS: _process_identity(os.getpid()) or "",
    }


def _gone(tags: dict[str, str], shared_lock: bool) -> bool:
    """Whether the process that started a RUNNING run is gone. Called with the training
    lock held: when every process takes that lock, no other training of the model is
    running, wherever it started; otherwise only this machine's processes can be told."""
    if tags.get(RUN_HOST) != socket.gethostname():
        return shared_lock
    try:
        pid = int(tags[RUN_PID])
    except (KeyError, ValueError):
        return shared_lock
    identity = _process_identity(pid)
    if identity is None:
        return True
    recorded = tags.get(RUN_PROCESS, "")
    return bool(recorded and identity and recorded != identity)  # the pid was reused


def close_orphans(
    client: MlflowClient, experiment: str, model_name: str, shared_lock: bool
) -> tuple[list[str], list[str]]:
    """Tidy what killed trainings of `model_name` left (call with the training lock
    held): RUNNING runs whose process is gone are ended KILLED, versions registered
    without gate metrics are tagged incomplete and lose the `candidate` alias. Returns
    the runs and versions marked."""
    runs = []
    for run in client.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(RUN_MODEL) != model_name or not _gone(tags, shared_lock):
            continue
        client.set_tag(
            run.info.run_id, RUN_ENDED, "its process was gone; marked by a later training"
        )
        client.set_terminated(run.info.run_id, "KILLED")
        runs.append(run.info.run_id)
    versions = []
    registered: list[ModelVersion] = []
    with contextlib.suppress(MlflowException):  # no such model yet
        registered = list(client.search_model_versions(f"name = '{model_name}'"))
    candidate = None
    with contextlib.suppress(MlflowException):
        candidate = str(client.get_model_version_by_alias(model_name, CANDIDATE).version)
    for mv in registered:
        if INCOMPLETE in mv.tags or any(k.startswith("gate.") for k in mv.tags):
            continue
        client.set_model_version_tag(
            model_name,
            mv.version,
            INCOMPLETE,
            "registered without its gate metrics (its training was interrupted); never promoted",
        )
        if candidate == str(mv.version):
            client.delete_registered_model_alias(model_name, CANDIDATE)
        versions.append(str(mv.version))
    return runs, versions


def train(
    pipeline: Pipeline,
    frame: pd.DataFrame,
    tracking_uri: str | None = None,
    step: Callable[[str], None] | None = None,
) -> Registered:
    """Validate, train, log everything, register a version with alias `candidate`; one
    training of a model at a time per registry (`training_lock`)."""
    quiet_mlflow()
    uri = tracking_uri or default_tracking_uri()
    name = pipeline.registry.model_name
    with training_lock(uri, name) as shared_lock:
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        exp = experiment_id(client, pipeline, uri)
        runs, versions = close_orphans(client, exp, name, shared_lock)
        if runs or versions:
            log.warning(
                "ended %d run(s) of dead trainings as KILLED; marked %d version(s) without "
                "gate metrics incomplete",
                len(runs),
                len(versions),
            )
        return _train(pipeline, frame, client, exp, step)


log = logging.getLogger("personalize.registry")


def _train(
    pipeline: Pipeline,
    frame: pd.DataFrame,
    client: MlflowClient,
    exp: str,
    step: Callable[[str], None] | None,
) -> Registered:
    from personalize import report, training

    tags = {
        "pipeline": pipeline.name,
        "synthetic": str(pipeline.synthetic).lower(),
        "missing": pipeline.outcome.missing,
        "outcome_kind": pipeline.outcome.kind,
        **_process_tags(pipeline.registry.model_name),
    }
    if pipeline.outcome.missing == "complete_case":
        tags["complete_case"] = "true"
    with mlflow.start_run(experiment_id=exp, tags=tags) as run:
        params: dict[str, str] = {}
        _flatten("", pipeline.model_dump(mode="json", exclude={"description"}), params)
        mlflow.log_params({k[:250]: v[:6000] for k, v in params.items()})
        mlflow.log_dict(pipeline.model_dump(mode="json"), "pipeline.json")
        mlflow.log_dict(package_versions(), "package_versions.json")
        mlflow.log_input(cohort_dataset(pipeline, frame), context="training")
        report_ = validate(frame, pipeline)
        mlflow.log_dict(report_.to_dict(), "validation_report.json")
        if not report_.ok:
            raise CohortError(report_)  # the run context marks the run FAILED
        result = training.fit(pipeline, frame, step=step)
        mlflow.set_tag("cohort_sha256", result.model.info.cohort_sha256)
        mlflow.set_tag("learner", result.chosen)
        mlflow.set_tag("checks_passed", str(result.checks.passed).lower())
        mlflow.log_params(learner_params(result.model.learner, result.chosen))
        mlflow.log_metrics(_finite(result.metrics()))
        mlflow.log_dict(result.ipcw.summary(), "ipcw.json")
        mlflow.log_dict(
            {
                "blp": result.blp.to_dict(),
                "autoc": result.autoc.to_dict(),
                "qini": result.qini.to_dict(),
                "groups": result.groups.to_dict(),
                "policy": result.policy.to_dict(),
                "decision_rule": result.model.rule.to_dict(),
                "checks": result.checks.to_dict(),
            },
            "evidence.json",
        )
        mlflow.log_dict(
            {"subgroups": result.subgroups, "importance": result.importance}, "subgroups.json"
        )
        for name, fig in report.figures(result).items():
            mlflow.log_figure(fig, f"plots/{name}")
        name = pipeline.registry.model_name
        card = report.model_card_dict(result, model_name=name, version=None, run_id=run.info.run_id)
        result.model.info = dataclasses.replace(result.model.info, card=card)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILE
            joblib.dump(result.model, path)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=PersonalizePyfunc(),
                artifacts={"model": str(path)},
                code_paths=[str(package_copy(Path(tmp)))],  # the model travels with its code
                signature=signature(pipeline),
                input_example=typical_patient(result.model),
                pip_requirements=requirements(),
            )
        summary = result.summary()
        version_tags = {
            "synthetic": str(pipeline.synthetic).lower(),
            "learner": result.chosen,
            "run_id": run.info.run_id,
            **{key: str(value) for key, value in _gate_metrics(result).items()},
            **_check_tags(result.checks),
        }
        with contextlib.redirect_stderr(io.StringIO()):  # "Created version ..." chatter
            # the version row and all its tags, gate metrics included, in one step
            mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
        client.update_model_version(name, mv.version, description=report.card_summary(card))
        client.set_registered_model_alias(name, CANDIDATE, mv.version)
        version = str(mv.version)
        mlflow.log_dict(
            report.model_card_dict(
                result, model_name=name, version=version, run_id=run.info.run_id
            ),
            "model_card.json",
        )
        mlflow.log_text(
            report.model_card(result, model_name=name, version=version, run_id=run.info.run_id),
            "model_card.md",
        )
    return Registered(run.info.run_id, name, str(mv.version), summary)


def _gate_metrics(result: Any) -> dict[str, float]:
    out = {}
    for arm, cal in result.calibration.items():
        out[f"gate.calibration_slope.{arm}"] = cal.slope
        out[f"gate.calibration_slope_se.{arm}"] = cal.slope_se
        if cal.ece is not None:
            out[f"gate.ece.{arm}"] = cal.ece
    return out


def _check_tags(checks: ModelChecks) -> dict[str, str]:
    """Each model check's verdict and reason as version tags: what `promote` reads."""
    out = {}
    for check in checks.checks:
        out[f"{CHECK_TAG}{check.name}.fired"] = str(check.fired).lower()
        out[f"{CHECK_TAG}{check.name}.reason"] = f"{check.title}: {check.reason}"[:5000]
    return out


# --------------------------------------------------------------------------- model references

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class RegistryError(Exception):
    """The registry could not be reached, or has no such model, version or alias."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model's name with an alias (which can move to another version) or a
    version number (which cannot). Names never contain '/' or ':' (MLflow refuses them)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """`models:/<name>@<alias>` or `models:/<name>/<version>`; ValueError otherwise."""
        match = MODEL_URI.match(uri)
        if not match:
            raise ValueError(
                f"model URI {uri!r} is not models:/<name>@<alias> or models:/<name>/<version>"
            )
        return cls(match["name"], match["alias"], match["version"])

    @classmethod
    def champion(cls, pipeline: Pipeline) -> ModelRef:
        """The pipeline's registered model as promoted: what `serve` and `score` use unless
        told otherwise."""
        return cls(pipeline.registry.model_name, alias=CHAMPION)

    @property
    def uri(self) -> str:
        if self.alias is not None:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class RegisteredVersion:
    """The version a reference pointed at when it was resolved."""

    name: str
    version: str
    run_id: str | None

    @property
    def uri(self) -> str:
        """`models:/<name>/<version>`: this version's artifact, wherever the aliases move."""
        return ModelRef(self.name, version=self.version).uri


def lookup(client: MlflowClient, ref: ModelRef) -> ModelVersion:
    """The registry's entry for a reference now (MlflowException when there is none)."""
    if ref.alias is not None:
        return client.get_model_version_by_alias(ref.name, ref.alias)
    return client.get_model_version(ref.name, str(ref.version))


def resolve(ref: ModelRef, tracking_uri: str | None = None) -> RegisteredVersion:
    """Name, version and run an alias or version points at now. Load `.uri` of the answer,
    not the alias, and a move of the alias meanwhile cannot change what is loaded."""
    client = MlflowClient(tracking_uri or default_tracking_uri())
    try:
        mv = lookup(client, ref)
    except MlflowException as exc:
        raise RegistryError(f"{ref.uri}: {exc.message}") from None
    except Exception as exc:  # network, database
        raise RegistryError(f"{ref.uri}: {type(exc).__name__}: {exc}") from None
    return RegisteredVersion(str(mv.name), str(mv.version), mv.run_id)


# --------------------------------------------------------------------------- promotion


class GateError(Exception):
    """A version that does not meet its pipeline's promotion gates."""


def promote(name: str, version: str, tracking_uri: str | None = None) -> tuple[str, list[str]]:
    """Move `champion` to NAME/VERSION (a number or an alias such as `candidate`) if every
    gate passes; return the version promoted and the checks made."""
    quiet_mlflow()
    client = MlflowClient(tracking_uri or default_tracking_uri())
    ref = ModelRef(name, version=version) if version.isdigit() else ModelRef(name, alias=version)
    try:
        mv = lookup(client, ref)
    except MlflowException:
        raise GateError(f"no model version {name}/{version} in the registry") from None
    version = str(mv.version)
    if INCOMPLETE in mv.tags:
        raise GateError(f"{name}/{version} is incomplete: {mv.tags[INCOMPLETE]}; retrain it")
    if not mv.run_id:
        raise GateError(f"{name}/{version} has no training run to check gates against")
    try:
        client.get_run(mv.run_id)
        pipe = Pipeline.model_validate(
            json.loads(
                Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=mv.run_id,
                        artifact_path="pipeline.json",
                        tracking_uri=client.tracking_uri,
                    )
                ).read_text()
            )
        )
    except (MlflowException, OSError, ValueError):
        raise GateError(
            f"{name}/{version}: its training run has no readable pipeline.json to check gates "
            "against"
        ) from None
    gates = pipe.gates
    failed: list[str] = []
    checked: list[str] = []
    for key, raw in mv.tags.items():
        if not key.startswith("gate.") or key.startswith("gate.calibration_slope_se."):
            continue
        value = float(raw)
        _, metric, arm = key.split(".", 2)
        if metric == "calibration_slope":
            # a version registered before slopes carried their error is judged on the point
            se = float(mv.tags.get(f"gate.calibration_slope_se.{arm}", "nan"))
            ok = gates.slope_passes(value, se)
            rule = gates.slope_rule(arm, value, se)
        else:
            ok = value <= pipe.gates.max_ece
            rule = f"ECE {arm} = {value:.3f} <= {pipe.gates.max_ece:g}"
        (checked if ok else failed).append(rule)
    if not checked and not failed:
        raise GateError(f"{name}/{version} carries no gate metrics; retrain it")
    if failed:
        raise GateError("gates failed: " + "; ".join(failed))
    fired = [
        mv.tags.get(f"{key[: -len('.fired')]}.reason", key[len(CHECK_TAG) : -len(".fired")])
        for key, raw in sorted(mv.tags.items())
        if key.startswith(CHECK_TAG) and key.endswith(".fired") and raw == "true"
    ]
    if fired and pipe.checks == "block":
        raise GateError(
            "model checks fired (set `checks: warn` in the pipeline to promote anyway): "
            + "; ".join(fired)
        )
    checked += [f"{CHECK_WARNING}{reason}" for reason in fired]
    client.set_registered_model_alias(name, CHAMPION, version)
    return version, checked


def load_model(model_uri: str, tracking_uri: str | None = None) -> PersonalizeModel:
    """The registered PersonalizeModel itself (what the service and the scorer call); give
    a resolved version's `uri` to load exactly that version."""
    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri}/artifacts")
    model: PersonalizeModel = joblib.load(Path(local) / MODEL_FILE)
    return model
