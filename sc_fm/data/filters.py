"""Metadata filters: which cells may stream into training (``data.include``/``data.exclude``).

A cell is kept when, for every ``include`` column, its value is listed, and for no
``exclude`` column its value is listed; a missing value never matches. Held-out datasets or
donors go in ``exclude``, so evaluation cells never reach pretraining. Every named column and
value must exist in some store: a typo would otherwise silently hold out nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sc_fm.errors import ConfigError
from sc_fm.store import CorpusStore


@dataclass(frozen=True)
class CellFilter:
    include: dict[str, list[str]]
    exclude: dict[str, list[str]]

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)

    def check(self, stores: Sequence[CorpusStore]) -> None:
        """Every named column and value is known to at least one store."""
        known = {}
        for store in stores:
            for column, categories in store.categories.items():
                known.setdefault(column, set()).update(categories)
        for kind, rules in (("include", self.include), ("exclude", self.exclude)):
            for column, values in rules.items():
                if column not in known:
                    raise ConfigError(f"no store has a cell metadata column {column!r}", f"data.{kind}",
                                      f"filter on one of: {', '.join(sorted(known)) or '(none)'}")
                unknown = sorted(set(values) - known[column])
                if unknown:
                    raise ConfigError(f"{column} has no value {unknown[0]!r} in any store",
                                      f"data.{kind}.{column}",
                                      f"use values among: {', '.join(sorted(known[column])[:20])}")

    def keep(self, store: CorpusStore, shard: int, start: int, stop: int) -> np.ndarray:
        """Boolean mask over rows ``[start, stop)`` of one shard."""
        keep = np.ones(stop - start, bool)
        for rules, wanted in ((self.include, True), (self.exclude, False)):
            for column, values in rules.items():
                found = store.shard_obs(shard, column, start, stop)
                if found is None:
                    hit = np.zeros(stop - start, bool)
                else:
                    codes, categories = found
                    listed = np.flatnonzero(np.isin(np.asarray(categories, dtype=object), values))
                    hit = np.isin(codes, listed)
                keep &= hit if wanted else ~hit
        return keep
