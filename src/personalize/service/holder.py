"""Which model the service answers with: loading from the MLflow registry, a local cache for
when the registry is unreachable, and the hot swap.

`ModelHolder.current` is one reference to an immutable `LoadedModel`. A request reads it
once and uses that object to the end, so a swap (assigning a new, fully loaded object)
never changes the model under a request in flight, and no request waits for a load.

A background thread (one per worker process) does the first load, then polls the registry
every `poll_seconds` for the alias moving (every `retry_seconds` while nothing, or only the
cached copy, is loaded). `POST /v1/admin/reload` runs the same check at once in the process
that receives it and raises a reload signal in the shared database; every other worker or
replica reads that signal every `SIGNAL_SECONDS` and checks the registry too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from personalize import registry
from personalize.registry import ModelRef, RegistryError
from personalize.service.config import Settings
from personalize.service.contract import Contract
from personalize.service.schemas import SYNTHETIC_NOTICE, ModelBlock, TrainedOn

if TYPE_CHECKING:
    from personalize.model import PersonalizeModel

log = logging.getLogger("personalize.service.holder")

CACHE_FILE = "model.joblib"
META_FILE = "meta.json"
KEEP_CACHED_VERSIONS = 5
SIGNAL_SECONDS = 1.0  # how often each process looks for a reload asked of another
RELOAD = "model_reload"  # the signal a reload raises for the other workers and replicas


class ModelUnusable(Exception):
    """The registry's version loaded but cannot be served (e.g. its artifact is not a
    personalize model); the model being served stays."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to answer, with where it came from. Never mutated."""

    model: PersonalizeModel
    name: str
    version: str
    run_id: str | None
    source: Literal["registry", "cache"]
    model_uri: str
    loaded_at: datetime
    contract: Contract = field(repr=False)
    block: ModelBlock = field(repr=False)

    @classmethod
    def build(
        cls,
        model: PersonalizeModel,
        *,
        name: str,
        version: str,
        run_id: str | None,
        source: Literal["registry", "cache"],
        model_uri: str,
    ) -> LoadedModel:
        from personalize.model import PersonalizeModel

        if not isinstance(model, PersonalizeModel):
            raise TypeError(f"{model_uri} is not a personalize model ({type(model).__name__})")
        # compile the trees now, beside the serving model, not on the first request
        model.warm()
        pipeline = model.pipeline
        synthetic = pipeline.synthetic or model.info.synthetic
        block = ModelBlock(
            name=name,
            version=version,
            run_id=run_id,
            learner=model.info.learner,
            source=source,
            synthetic=synthetic,
            synthetic_notice=SYNTHETIC_NOTICE if synthetic else None,
            checks_passed=model.checks_passed,
            checks_warning=None if model.checks is None else model.checks.warning(),
            trained_on=TrainedOn(
                pipeline=pipeline.name,
                description=pipeline.description,
                cohort_sha256=model.info.cohort_sha256,
                n_patients=model.info.n_patients,
                synthetic=synthetic,
            ),
        )
        return cls(
            model=model,
            name=name,
            version=version,
            run_id=run_id,
            source=source,
            model_uri=model_uri,
            loaded_at=datetime.now(UTC),
            contract=Contract.of(model),
            block=block,
        )

    @property
    def arms(self) -> tuple[str, str]:
        return self.model.rule.treatment, self.model.rule.control

    def card(self) -> dict[str, Any]:
        """The model card with the registry's version and run id filled in (the card is
        written into the artifact before the version number exists)."""
        card = json.loads(json.dumps(self.model.info.card or {}))
        model = card.setdefault("model", {})
        model["name"] = self.name
        model["version"] = self.version
        if self.run_id:
            model["run_id"] = self.run_id
        card["serving"] = {
            "source": self.source,
            "model_uri": self.model_uri,
            "loaded_at": self.loaded_at.isoformat(),
        }
        return card


@dataclass(frozen=True)
class RefreshResult:
    changed: bool
    previous: LoadedModel | None
    current: LoadedModel


SwapHook = Callable[[LoadedModel | None, LoadedModel], None]


class ModelHolder:
    """The current model of this process, its loader and its poller."""

    def __init__(
        self,
        settings: Settings,
        on_swap: SwapHook | None = None,
        reload_signal: Callable[[], datetime | None] | None = None,
    ) -> None:
        """`reload_signal`: when a reload was last requested of any replica (checked every
        `SIGNAL_SECONDS`; a newer one makes this process check the registry at once)."""
        self.settings = settings
        self._reload_signal = reload_signal
        self.model_uri = settings.resolved_model_uri()
        self.ref = ModelRef.parse(self.model_uri)
        self.tracking_uri = settings.resolved_tracking_uri()
        self.cache_dir = Path(settings.cache_dir).resolve()
        self._current: LoadedModel | None = None
        self._on_swap = on_swap
        self._swap_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._initial_done = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = "loading"

    # ------------------------------------------------------------------ reading

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)
        self._thread.start()

    def wait_initial(self, timeout: float) -> bool:
        """Wait until the first load attempt has finished (success or not)."""
        return self._initial_done.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        seen = self._reload_requested()  # reloads asked for before this process started
        try:
            self._initial()
        finally:
            self._initial_done.set()
        checked = time.monotonic()
        while True:
            current = self._current
            if current is None or current.source == "cache":
                interval = self.settings.retry_seconds
            elif self.settings.poll_seconds > 0:
                interval = self.settings.poll_seconds
            else:
                interval = math.inf
            tick = min(interval, SIGNAL_SECONDS) if self._reload_signal else interval
            if self._stop.wait(None if math.isinf(tick) else tick):
                return
            requested = self._reload_requested()
            asked = requested is not None and (seen is None or requested > seen)
            seen = requested if requested is not None else seen
            if not asked and time.monotonic() - checked < interval:
                continue
            checked = time.monotonic()
            try:
                self.refresh()
            except Exception as exc:
                self._note_failure(exc)

    def _reload_requested(self) -> datetime | None:
        if self._reload_signal is None:
            return None
        try:
            return self._reload_signal()
        except Exception as exc:  # the audit database is down: polling goes on
            log.warning("could not read the reload signal: %s", type(exc).__name__)
            return None

    def _initial(self) -> None:
        """Registry first; if it has not answered within registry_timeout, the local cache
        (the registry attempt keeps going and swaps in if it succeeds later)."""
        done = threading.Event()
        failure: list[BaseException] = []

        def attempt() -> None:
            try:
                self.refresh()
            except Exception as exc:
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=attempt, name="model-initial-load", daemon=True).start()
        done.wait(self.settings.registry_timeout)
        if self._current is not None:
            return
        reason = (
            f"{failure[0]}" if failure else f"no answer in {self.settings.registry_timeout:g} s"
        )
        log.warning("registry unavailable at startup (%s); trying the local cache", reason)
        cached = self.load_cached()
        if cached is not None:
            self._swap(cached)
            self.status = f"serving the locally cached copy: registry unavailable ({reason})"
            log.warning(
                "serving cached %s version %s; will keep trying the registry",
                cached.name,
                cached.version,
            )
        else:
            self.status = (
                f"not ready: registry unavailable ({reason}) and no cached copy of "
                f"{self.model_uri}; retrying every {self.settings.retry_seconds:g} s"
            )
            log.error("%s", self.status)

    def _note_failure(self, exc: Exception) -> None:
        current = self._current
        if current is None:
            self.status = f"not ready: {exc}; retrying every {self.settings.retry_seconds:g} s"
        log.warning("registry check failed: %s", exc)

    # ------------------------------------------------------------------ loading

    def refresh(self) -> RefreshResult:
        """Check the registry; when it points elsewhere than the current model (or only the
        cached copy is loaded), load the new version beside the current one and swap."""
        with self._refresh_lock:
            found = registry.resolve(self.ref, self.tracking_uri)
            name, version = found.name, found.version
            previous = self._current
            if (
                previous is not None
                and previous.source == "registry"
                and previous.name == name
                and previous.version == version
            ):
                return RefreshResult(False, previous, previous)
            try:
                model = registry.load_model(found.uri, self.tracking_uri)
            except Exception as exc:
                raise RegistryError(
                    f"could not load {name} version {version}: {type(exc).__name__}: {exc}"
                ) from None
            try:
                loaded = LoadedModel.build(
                    model,
                    name=name,
                    version=version,
                    run_id=found.run_id,
                    source="registry",
                    model_uri=self.model_uri,
                )
            except Exception as exc:
                serving = (
                    f"still serving {previous.name} version {previous.version}"
                    if previous is not None
                    else "no model is served"
                )
                raise ModelUnusable(
                    f"{name} version {version} cannot be served: {exc}; {serving}"
                ) from None
            self._swap(loaded)
            self.status = "ready"
            try:
                self.write_cache(loaded)
            except OSError as exc:
                log.warning("could not cache the model locally: %s", exc)
            changed = (
                previous is None
                or previous.source != "registry"
                or (previous.name, previous.version) != (name, version)
            )
            return RefreshResult(changed, previous, loaded)

    def _swap(self, loaded: LoadedModel) -> None:
        with self._swap_lock:
            previous = self._current
            self._current = loaded  # one reference assignment: atomic for readers
        if previous is None or previous.version != loaded.version:
            log.info(
                "now serving %s version %s (from the %s)",
                loaded.name,
                loaded.version,
                loaded.source,
            )
        if self._on_swap is not None:
            try:
                self._on_swap(previous, loaded)
            except Exception:  # metrics must never break a swap
                log.exception("swap hook failed")

    # ------------------------------------------------------------------ local cache

    def _model_dir(self, name: str) -> Path:
        return self.cache_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", name)

    def _pointer(self, base: Path) -> Path:
        """The file naming the version last loaded for this URI's alias or version."""
        ref = self.ref
        return base / (f"alias-{ref.alias}.json" if ref.alias else f"version-{ref.version}.json")

    def write_cache(self, loaded: LoadedModel) -> None:
        """Keep a copy of the model and point this URI's entry at it (atomic renames, so
        concurrent workers and a crash mid-write never leave a half-written cache)."""
        import joblib

        base = self._model_dir(loaded.name)
        target = base / f"v{loaded.version}"
        base.mkdir(parents=True, exist_ok=True)
        if not (target / CACHE_FILE).exists():
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
            try:
                joblib.dump(loaded.model, tmp / CACHE_FILE)
                (tmp / META_FILE).write_text(
                    json.dumps({"name": loaded.name, "version": loaded.version})
                )
                with contextlib.suppress(OSError):  # another worker won the race
                    os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        pointer = {
            "name": loaded.name,
            "version": loaded.version,
            "run_id": loaded.run_id,
            "model_uri": self.model_uri,
            "cached_at": datetime.now(UTC).isoformat(),
        }
        fd, tmp_pointer = tempfile.mkstemp(prefix=".tmp-", dir=base)
        with os.fdopen(fd, "w") as fh:
            json.dump(pointer, fh)
        os.replace(tmp_pointer, self._pointer(base))
        self._prune(base)

    def _prune(self, base: Path) -> None:
        keep = set()
        for pointer in base.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                keep.add(f"v{json.loads(pointer.read_text())['version']}")
        versions = sorted(
            (p for p in base.glob("v*") if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in versions[KEEP_CACHED_VERSIONS:]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def load_cached(self) -> LoadedModel | None:
        """The last model cached for this URI, or None."""
        import joblib

        pointer = self._pointer(self._model_dir(self.ref.name))
        try:
            meta = json.loads(pointer.read_text())
            path = self._model_dir(self.ref.name) / f"v{meta['version']}" / CACHE_FILE
            model = joblib.load(path)
            return LoadedModel.build(
                model,
                name=str(meta["name"]),
                version=str(meta["version"]),
                run_id=meta.get("run_id"),
                source="cache",
                model_uri=self.model_uri,
            )
        except FileNotFoundError:
            return None
        except Exception as exc:
            log.error("local model cache at %s is unusable: %s", pointer, exc)
            return None
