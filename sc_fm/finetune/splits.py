"""Train/validation splits that hold out whole donors or batches, so accuracy means transfer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sc_fm.errors import InputDataError


def group_split(obs: pd.DataFrame, split_key: str | None, label_key: str, val_fraction: float,
                seed: int) -> np.ndarray:
    """Boolean mask of validation cells.

    With ``split_key``: whole groups (donors/batches) go to validation, drawn in a seeded
    order until about ``val_fraction`` of the cells are held out (at least one group stays in
    training). Without: a seeded per-label random split of the same fraction.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputDataError(f"validation fraction {val_fraction} is not in (0, 1)", "--val-fraction",
                             "use e.g. 0.2")
    rng = np.random.default_rng(seed)
    if split_key is None:
        val = np.zeros(len(obs), bool)
        for _, rows in obs.groupby(label_key, observed=True).indices.items():
            chosen = rng.permutation(rows)[: int(round(val_fraction * len(rows)))]
            val[chosen] = True
        return val
    groups = obs[split_key].astype(str).to_numpy()
    names = np.unique(groups)
    if len(names) < 2:
        raise InputDataError(f".obs[{split_key!r}] has a single value, so no group can be held out",
                             "--split-key",
                             "split by a column with several donors or batches, or leave it out")
    sizes = pd.Series(groups).value_counts()
    held: list[str] = []
    for name in rng.permutation(names)[:-1]:
        if sizes[held].sum() >= val_fraction * len(obs):
            break
        held.append(name)
    return np.isin(groups, held)
