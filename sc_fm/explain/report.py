"""The explanation report, in the style of ``scfm benchmark``'s: CSV tables, a dot plot of the
top genes per group, Markdown with the marker check, the perturbation table and the settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sc_fm.evaluate.report import markdown_table
from sc_fm.explain.explanation import Explanation
from sc_fm.tracking import metric_name

GENES_CSV, MARKERS_CSV, PERTURBATION_CSV = "genes.csv", "markers.csv", "perturbation.csv"
DOTPLOT_PNG, REPORT_MD = "dotplot.png", "report.md"


def dot_plot(genes: pd.DataFrame, n_top: int, path: Path) -> Path:
    """scanpy's dot plot of each group's ``n_top`` genes: colour the mean attribution toward the
    group (of the cells of the row's group), size the fraction with the gene in their top k."""
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    groups = list(dict.fromkeys(genes["group"]))
    top = genes.groupby("group", sort=False).head(n_top)
    labels = list(dict.fromkeys(top["symbol"]))
    wide = genes[genes["symbol"].isin(labels)].drop_duplicates(["group", "symbol"])
    colour = wide.pivot(index="group", columns="symbol", values="mean_attribution").reindex(groups)[labels]
    size = wide.pivot(index="group", columns="symbol", values="top_k_fraction").reindex(groups)[labels]
    holder = anndata.AnnData(np.zeros((len(groups), len(labels)), np.float32),
                             obs=pd.DataFrame({"group": pd.Categorical(groups, categories=groups)},
                                              index=[str(i) for i in range(len(groups))]),
                             var=pd.DataFrame(index=labels))
    colour = colour.fillna(0.0)
    signed = bool((colour.to_numpy() < 0).any())  # a diverging scale centred on 0 only when needed
    plot = sc.pl.DotPlot(holder, labels, "group", dot_color_df=colour, dot_size_df=size.fillna(0.0),
                         title="top attributed genes per group", **({"vcenter": 0.0} if signed else {}))
    plot.legend(colorbar_title="mean attribution", size_title="fraction of cells\nwith it in their top k")
    plot.style(cmap="RdBu_r" if signed else "Reds", dot_min=0.0, dot_max=1.0).make_figure()
    plot.fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(plot.fig)
    return path


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """Whole numbers as such and small figures (cosine shifts) to three significant digits."""
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_integer_dtype(out[column]):
            out[column] = out[column].astype(str)
        elif pd.api.types.is_float_dtype(out[column]):
            out[column] = [("" if pd.isna(v) else f"{v:.3g}") for v in out[column]]
    return out


BASELINES = {"masked": "every gene token as <mask> with its value hidden (one reference for all cells)",
             "hidden_value": "the cell's own genes with every value hidden (the hidden-value embedding)"}


def _mean_overlaps(markers: pd.DataFrame) -> pd.DataFrame:
    table = markers.groupby("k")[["overlap", "random_overlap", "spearman"]].mean()
    table.index = [f"k = {k}" for k in table.index]
    table.index.name = "mean over groups"
    return table


def _text(e: Explanation, checkpoint: str, n_top: int) -> str:
    """The Markdown of ``report.md``."""
    settings = e.settings
    top = e.genes.groupby("group", sort=False).head(n_top)
    listing = [f"- **{group}**: " + ", ".join(f"{symbol} ({value:.3g})" for symbol, value
                                              in zip(part["symbol"], part["mean_attribution"]))
               for group, part in top.groupby("group", sort=False)]
    return "\n".join([
        "# sc_fm explain", "",
        f"Checkpoint `{checkpoint}`; {settings['cells']} cells (of {settings['cells_in_input']}) grouped by "
        f"`{e.groupby}`; {settings['genes_mapped']} input genes in the vocabulary.", "",
        "## Top attributed genes", "",
        "Integrated gradients on the token input embeddings, from "
        f"{BASELINES[settings['explain.baseline']]} "
        "to the cell: how much each gene moves the cell's embedding along its group's direction (the unit "
        "vector from the centroid of all cells to the group's). Dot colour: mean attribution over the "
        "group's cells; size: fraction of its cells with the gene among their "
        f"{settings['explain.top_k']} most attributed. Full table: `{GENES_CSV}`.", "",
        f"![top attributed genes per group]({DOTPLOT_PNG})", "", *listing, "",
        "## Against differential-expression markers", "",
        "Overlap of each group's top-k attributed genes with the top-k up-regulated genes of "
        f"`scanpy.tl.rank_genes_groups` ({settings['explain.de_method']}, one group against the rest) on the "
        f"same cells; `random_overlap` is the mean over {settings['explain.random_draws']} random draws of k "
        "genes from those the group's cells hold in their contexts (sd beside it); `spearman` is the rank "
        f"correlation of attribution and DE score over those genes. Also in `{MARKERS_CSV}`.", "",
        markdown_table(_mean_overlaps(e.markers)), "",
        markdown_table(_shown(e.markers).set_index("group")), "",
        "## In-silico perturbation", "",
        "Each gene deleted from, or set to the top of the range of, every cell that holds it in its context. "
        "`cosine_shift`: mean cosine distance of the embedding before and after; `own_group_change` / "
        "`toward_change`: mean change of the cosine to the cell's own group centroid / to the centroid it "
        "moves toward most (`toward`), centroids taken from the centroid of all cells. Also in "
        f"`{PERTURBATION_CSV}`.", "",
        markdown_table(_shown(e.perturbation).set_index("gene_id")), "",
        "## Settings", "", *[f"- {key}: {value}" for key, value in settings.items()], "",
    ])


def write_report(explanation: Explanation, out_dir: str | Path, checkpoint: str, n_top: int = 5) -> Path:
    """``genes.csv``, ``markers.csv``, ``perturbation.csv``, ``dotplot.png``, ``report.md`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    explanation.genes.to_csv(out / GENES_CSV, index=False)
    explanation.markers.to_csv(out / MARKERS_CSV, index=False)
    explanation.perturbation.to_csv(out / PERTURBATION_CSV, index=False)
    dot_plot(explanation.genes, n_top, out / DOTPLOT_PNG)
    path = out / REPORT_MD
    path.write_text(_text(explanation, checkpoint, n_top))
    return path


def explain_metrics(markers: pd.DataFrame) -> dict[str, float]:
    """``explain/<group>/overlap_at_<k>`` (and ``random_at_<k>``, ``spearman``), plus group means:
    what ``scfm explain`` logs to MLflow."""
    metrics = {}
    for row in markers.itertuples():
        metrics[metric_name("explain", row.group, f"overlap_at_{row.k}")] = row.overlap
        metrics[metric_name("explain", row.group, f"random_at_{row.k}")] = row.random_overlap
        if pd.notna(row.spearman):
            metrics[metric_name("explain", row.group, "spearman")] = row.spearman
    for k, part in markers.groupby("k"):
        metrics[f"explain/mean/overlap_at_{k}"] = float(part["overlap"].mean())
        metrics[f"explain/mean/random_at_{k}"] = float(part["random_overlap"].mean())
    return metrics
