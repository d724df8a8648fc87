"""Candidate effect learners, all behind `EffectLearner`.

Every concrete subclass of `EffectLearner` with a `name`, defined in a module of this
package, is a candidate: adding a learner is adding one file here. Its name, title,
description and traits are class attributes, so nothing outside this package names one.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil

from personalize.learners.base import ARM_DRIVER, ArmContributions, EffectLearner, Kind


@functools.cache
def learners() -> dict[str, type[EffectLearner]]:
    """Every learner of this package by name, simplest first (the one-SE rule's order)."""
    found: dict[str, type[EffectLearner]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, EffectLearner) and cls.name and not inspect.isabstract(cls):
                if found.get(cls.name, cls) is not cls:
                    raise RuntimeError(f"two learners are named {cls.name!r}")
                found[cls.name] = cls
    return dict(sorted(found.items(), key=lambda kv: (kv[1].complexity, kv[0])))


def learner_names() -> list[str]:
    return list(learners())


def default_learner_names(kind: Kind) -> list[str]:
    """The pre-specified candidates when a pipeline file lists none: the learners whose
    `default_for` has the outcome's kind (docs/training.md, "Choosing a learner")."""
    return [name for name, cls in learners().items() if kind in cls.default_for]


def learner_class(name: str) -> type[EffectLearner]:
    known = learners()
    if name not in known:
        raise ValueError(f"unknown learner {name!r}; choose from {sorted(known)}")
    return known[name]


def make_learner(name: str, kind: Kind, seed: int) -> EffectLearner:
    return learner_class(name)(kind=kind, seed=seed)


def outcome_learner(kind: Kind, seed: int) -> EffectLearner:
    """The per-arm outcome model behind the doubly-robust scores (nuisance, not a candidate
    choice): flexible, and unbiased for each arm's mean."""
    from personalize.learners.t_learner import TLearner  # LightGBM: only when needed

    return TLearner(kind=kind, seed=seed)


__all__ = [
    "ARM_DRIVER",
    "ArmContributions",
    "EffectLearner",
    "Kind",
    "default_learner_names",
    "learner_class",
    "learner_names",
    "learners",
    "make_learner",
    "outcome_learner",
]
