"""Proof of perturbation: how many times each chosen layer/block ran the Sinkhorn attention in one call.

A perturbed pass that did not perturb (a block skipped by `skip_layers`, a cached block, a replaced forward,
an attention call the dispatcher could not take over) would give `cond - perturbed = 0` and still look like
ASAG ran. Every perturbation counts per chosen key; the adapter checks the count after the call and turns a
miss into a visible error, never into a silent zero term.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Iterable


class NotPerturbed(RuntimeError):
    """A chosen layer/block did not run the Sinkhorn attention in ASAG's perturbed call."""


@dataclass
class SinkhornCalls:
    """Sinkhorn calls per chosen key (LayerRef) during one model call, and the first problem seen."""

    counts: Counter = field(default_factory=Counter)
    error: str | None = None  # why some rows that should be perturbed were not

    def ran(self, key: Hashable) -> None:
        self.counts[key] += 1

    def fail(self, message: str) -> None:
        self.error = self.error or message

    def missing(self, keys: Iterable[Hashable]) -> list[Hashable]:
        return [key for key in keys if not self.counts[key]]

    def problem(self, keys: Iterable[Hashable]) -> str | None:
        """Why this call does not prove that every key was perturbed, or None."""
        if self.error:
            return self.error
        missing = self.missing(keys)
        if missing:
            names = ", ".join(map(str, missing))
            return (f"the chosen layer/block {names} ran no Sinkhorn attention in the perturbed call (skipped, "
                    "served from a cache or replaced by another extension?)")
        return None

    def check(self, keys: Iterable[Hashable]) -> None:
        """Raise NotPerturbed unless every key ran the Sinkhorn attention."""
        problem = self.problem(keys)
        if problem:
            raise NotPerturbed(problem)
