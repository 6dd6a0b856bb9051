"""The benchmark report: results CSV + Markdown table, UMAP figures, verdict line, settings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from sc_fm.evaluate.metrics import BATCH, BIO, TOTAL, ScibSettings
from sc_fm.evaluate.seeds import SEED, SEEDS, compare, spread_note

RESULTS_CSV, RESULTS_MD, REPORT_MD, UMAP_PNG = "results.csv", "results.md", "report.md", "umap.png"
PER_SEED_CSV = "results_per_seed.csv"
_WHOLE_COLUMNS = (SEED, SEEDS)


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``table`` (3 decimals; NaN shown as "n/a")."""
    def cell(value, column) -> str:
        if column in _WHOLE_COLUMNS:
            return "" if pd.isna(value) else str(int(value))
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        lines.append("| " + " | ".join([str(name)] + [cell(v, c) for c, v in row.items()]) + " |")
    return "\n".join(lines) + "\n"


def verdict(table: pd.DataFrame, reference: str, candidates: list[str]) -> list[str]:
    """``"sc_fm-tiny vs scVI: total 0.61 vs 0.58, bio +0.05, batch -0.01; beats (spread 0.012 over 3 seeds)"``
    per candidate: ``beats`` when the Total difference exceeds the larger of the two Total sds,
    ``matches`` within it, ``trails`` below it (see ``sc_fm.evaluate.seeds``)."""
    if reference not in table.index:
        return []
    ref = table.loc[reference]
    lines = []
    for name in candidates:
        row = table.loc[name]
        batch = ("n/a" if math.isnan(row[BATCH]) or math.isnan(ref[BATCH])
                 else f"{row[BATCH] - ref[BATCH]:+.2f}")
        word, spread = compare(table, name, reference)
        lines.append(f"{name} vs {reference}: total {row[TOTAL]:.2f} vs {ref[TOTAL]:.2f}, "
                     f"bio {row[BIO] - ref[BIO]:+.2f}, batch {batch}; "
                     f"{word} ({spread_note(table, name, reference, spread)})")
    return lines


def verdicts(table: pd.DataFrame, candidates: list[str], references: tuple[str, ...]) -> list[str]:
    """Each candidate against each reference present in ``table`` (scVI first, the random control last)."""
    return [line for name in candidates for reference in references
            for line in verdict(table, reference, [name])]


def umap_figure(embeddings: dict[str, np.ndarray], obs: pd.DataFrame, keys: list[str], path: Path,
                seed: int) -> Path:
    """One row per method, one column per ``keys`` colouring (batch, label), side by side."""
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    fig, axes = plt.subplots(len(embeddings), len(keys), figsize=(4.2 * len(keys), 3.6 * len(embeddings)),
                             squeeze=False)
    for row, (name, emb) in enumerate(embeddings.items()):
        holder = anndata.AnnData(np.zeros((len(obs), 1), np.float32), obs=obs[keys].copy())
        holder.obsm["X_emb"] = np.asarray(emb, np.float32)
        sc.pp.neighbors(holder, use_rep="X_emb", random_state=seed)
        sc.tl.umap(holder, random_state=seed)
        for col, key in enumerate(keys):
            ax = axes[row, col]
            sc.pl.umap(holder, color=key, ax=ax, show=False, frameon=False, size=12,
                       title=f"{name}: {key}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(table: pd.DataFrame, embeddings: dict[str, np.ndarray], obs: pd.DataFrame,
                 batch_key: str | None, label_key: str, out_dir: str | Path, verdict_lines: list[str],
                 settings: ScibSettings, seed: int, per_seed: pd.DataFrame | None = None,
                 notes: list[str] = (), seeds: list[int] | None = None, model_lines: list[str] = ()) -> Path:
    """Write ``results.csv``, ``results.md``, ``umap.png`` and ``report.md`` (and, given ``per_seed``,
    ``results_per_seed.csv``) into ``out_dir``. ``embeddings`` are drawn in the UMAP (one per method)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / RESULTS_CSV)
    (out / RESULTS_MD).write_text(markdown_table(table))
    if per_seed is not None:
        per_seed.to_csv(out / PER_SEED_CSV, index=False)
    keys = [k for k in (batch_key, label_key) if k]
    umap_figure(embeddings, obs, keys, out / UMAP_PNG, seed)
    settings_lines = [f"- {k}: {v}" for k, v in settings.describe().items()]
    batch_note = "" if batch_key else "\nNo batch column was given: batch metrics are not applicable.\n"
    seeds = seeds or [seed]
    seed_text = (f"Seeded methods (scVI, Harmony, the random control, seeded sc_fm rows) ran with seeds "
                 f"{', '.join(map(str, seeds))}: each score is the mean, `<score> sd` the sample sd over "
                 f"seeds "
                 f"(0 for a method without a seed, n/a for one seed). A verdict says \"beats\" only when the "
                 f"Total difference exceeds the larger of the two Total sds, \"matches\" within it, "
                 f"\"trails\" otherwise.")
    per_seed_part = []
    if per_seed is not None and len(seeds) > 1:
        shown = per_seed.set_index(per_seed.columns[0])
        per_seed_part = ["### Every seed", "", f"Also in `{PER_SEED_CSV}`.", "", markdown_table(shown)]
    text = "\n".join([
        "# sc_fm benchmark", "",
        f"{len(obs)} cells; batch key `{batch_key}`, label key `{label_key}`.", batch_note,
        *[f"Note: {n}" for n in notes], *([""] if notes else []),
        "## Verdict", "", *(verdict_lines or ["(no sc_fm embedding to compare)"]), "",
        "## Scores", "", "scIB metrics (higher is better); total = 0.6 bio + 0.4 batch; label transfer is "
        "accuracy on held-out cells.", "", seed_text, "", markdown_table(table), *per_seed_part,
        "## UMAP", "", f"![UMAP by batch and label]({UMAP_PNG})" + (f" (seed {seeds[0]})" if len(seeds) > 1
                                                                     else ""), "",
        "## Settings", "", *settings_lines, "",
        *(["How each checkpoint embeds:", "", *[f"- {line}" for line in model_lines], ""] if model_lines else []),
    ])
    path = out / REPORT_MD
    path.write_text(text)
    return path
