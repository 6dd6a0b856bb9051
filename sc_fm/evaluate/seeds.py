"""Repeating seeded methods over several seeds: the per-seed table, mean ± sd, and verdict words.

A method that depends on a seed (scVI, Harmony, the random control, any seeded sc_fm row)
is run with seeds ``seed, seed + 1, ..., seed + K - 1``; a method that does not (PCA, an
embedding read from a fixed checkpoint) is run once. The summary keeps one row per method:
the mean of each score in its usual column, and the sample standard deviation (``ddof=1``)
of ``Bio conservation``, ``Batch correction`` and ``Total`` in ``<column> sd`` beside it.

The sd is 0 for a method without a seed (nothing varies) and NaN ("n/a") for a seeded method
scored with one seed (its spread was not measured). A verdict treats an unmeasured spread
as 0, so with ``--seeds 1`` any difference decides, and says so.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sc_fm.errors import ConfigError
from sc_fm.evaluate.metrics import BATCH, BIO, TOTAL

SD_SUFFIX = " sd"
SPREAD_COLUMNS = (BIO, BATCH, TOTAL)
SEED, SEEDS, METHOD = "seed", "Seeds", "method"
BEATS, MATCHES, TRAILS = "beats", "matches", "trails"


def seed_list(seed: int, n_seeds: int, where: str = "benchmark") -> list[int]:
    """``[seed, seed + 1, ..., seed + n_seeds - 1]``; ``n_seeds`` must be at least 1."""
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, (int, np.integer)) or n_seeds < 1:
        raise ConfigError(f"the number of seeds must be a whole number of at least 1, got {n_seeds!r}", where,
                          "pass --seeds 1 (the default) or more, e.g. --seeds 5 to report mean and sd "
                          "over 5 seeds")
    return [int(seed) + i for i in range(int(n_seeds))]


def summarise(per_seed: pd.DataFrame, seeded: set[str] | list[str],
              spread_columns: tuple[str, ...] = SPREAD_COLUMNS) -> pd.DataFrame:
    """One row per method (first-appearance order): means, ``<col> sd`` beside each of
    ``spread_columns``, ``Seeds``.

    ``per_seed`` has a ``method`` and a ``seed`` column and one score per column; ``seeded``
    names the methods whose sd is measured (the others get sd 0).
    """
    scores = per_seed.drop(columns=[SEED]).groupby(METHOD, sort=False)
    mean = scores.mean()
    sd = scores.std(ddof=1)
    count = scores.size()
    table = pd.DataFrame(index=mean.index)
    for column in mean.columns:
        table[column] = mean[column]
        if column in spread_columns:
            spread = sd[column].copy()
            for method in spread.index:
                if method not in seeded:
                    spread[method] = 0.0  # deterministic: nothing to vary
                elif count[method] < 2:
                    spread[method] = np.nan  # seeded but one seed: spread not measured
            table[column + SD_SUFFIX] = spread
    table[SEEDS] = count.astype(int)
    table.index.name = METHOD
    return table


def _spread(row: pd.Series, column: str) -> float:
    value = row.get(column + SD_SUFFIX, 0.0)
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def verdict_word(candidate_total: float, reference_total: float, spread: float) -> str:
    """``beats`` when the difference exceeds ``spread``, ``matches`` within it, ``trails`` below it."""
    diff = candidate_total - reference_total
    if diff > spread:
        return BEATS
    if diff < -spread:
        return TRAILS
    return MATCHES


def compare(table: pd.DataFrame, name: str, reference: str, column: str = TOTAL) -> tuple[str, float]:
    """The verdict word of ``name`` against ``reference`` on ``column`` and the spread it used (the
    larger of the two sds of ``column``)."""
    row, ref = table.loc[name], table.loc[reference]
    spread = max(_spread(row, column), _spread(ref, column))
    return verdict_word(float(row[column]), float(ref[column]), spread), spread


def spread_measured(table: pd.DataFrame, name: str, reference: str, column: str = TOTAL) -> bool:
    """False when a seeded row of the two ran on one seed only (its sd is NaN): then a verdict
    compares single draws and cannot tell a difference from seed noise."""
    return not any(math.isnan(float(table.loc[m].get(column + SD_SUFFIX, 0.0))) for m in (name, reference))


def spread_note(table: pd.DataFrame, name: str, reference: str, spread: float, column: str = TOTAL) -> str:
    """``spread 0.012`` with the seeds behind it, or why there is none."""
    seeds = [int(table.loc[m, SEEDS]) for m in (name, reference) if SEEDS in table.columns]
    if not spread_measured(table, name, reference, column):
        return "1 seed, spread not measured"
    if not seeds or max(seeds) < 2:
        return "no seed dependence, spread 0"
    return f"spread {spread:.3f} over {max(seeds)} seeds"
