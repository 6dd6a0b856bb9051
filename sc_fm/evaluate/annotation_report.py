"""The annotation report: results and per-class CSVs, verdicts against the baselines, a
confusion matrix per method, and the cells per class."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from sc_fm.classify import ACCURACY, MACRO_F1, per_class_f1
from sc_fm.config import FinetuneConfig
from sc_fm.evaluate.annotation_split import AnnotationSplit
from sc_fm.evaluate.report import PER_SEED_CSV, REPORT_MD, RESULTS_CSV, markdown_table
from sc_fm.evaluate.seeds import BEATS, MATCHES, TRAILS, compare, spread_measured, spread_note

LOGREG, KNN_PCA, KNN_SCVI, SCANVI = "LogReg (HVG)", "kNN (PCA)", "kNN (scVI)", "scANVI"
ZERO_SHOT, PROBE = "{} (kNN zero-shot)", "{} (linear probe)"
FINETUNED, START_FINETUNED = "{} (fine-tuned)", "{} (untrained, same start, fine-tuned)"
PER_CLASS_CSV, CONFUSION_DIR = "per_class.csv", "confusion"
REFERENCE_CELLS, QUERY_CELLS, IN_REFERENCE = "reference cells", "query cells", "in reference"


def verdict_lines(table: pd.DataFrame, candidates: list[str], references: tuple[str, ...]) -> list[str]:
    """``"sc_fm-tiny (fine-tuned) vs LogReg (HVG): macro F1 0.81 vs 0.86, accuracy 0.85 vs 0.90;
    trails (spread 0.012 over 3 seeds)"``: the word as the integration report uses it, on macro-F1,
    against the larger of the two macro-F1 sds."""
    lines = []
    for name in candidates:
        for reference in references:
            row, ref = table.loc[name], table.loc[reference]
            word, spread = compare(table, name, reference, MACRO_F1)
            lines.append(f"{name} vs {reference}: macro F1 {row[MACRO_F1]:.3f} vs {ref[MACRO_F1]:.3f}, accuracy "
                         f"{row[ACCURACY]:.3f} vs {ref[ACCURACY]:.3f}; {word} "
                         f"({spread_note(table, name, reference, spread, MACRO_F1)})")
    return lines


def class_counts(split: AnnotationSplit) -> pd.DataFrame:
    """Reference and query cells of every class, and whether the reference holds it."""
    classes = sorted(set(split.classes) | set(split.query_classes))
    reference = pd.Series(split.reference_labels).value_counts()
    query = pd.Series([t for t in split.truth if t is not None], dtype=object).value_counts()
    table = pd.DataFrame({REFERENCE_CELLS: [int(reference.get(c, 0)) for c in classes],
                          QUERY_CELLS: [int(query.get(c, 0)) for c in classes],
                          IN_REFERENCE: [c in split.classes for c in classes]}, index=pd.Index(classes, name="class"))
    return table


def per_class_table(split: AnnotationSplit, predictions: dict[str, list[np.ndarray]]) -> pd.DataFrame:
    """One row per method and query class: the class's F1 (mean over seeds; empty for an unseen
    class, which no method can name) beside its cell counts."""
    scored = np.array([t is not None for t in split.truth])
    truth = split.truth[scored]
    counts = class_counts(split)
    rows = []
    for method, runs in predictions.items():
        f1 = pd.concat([per_class_f1(truth, p[scored], split.shared) for p in runs], axis=1).mean(axis=1)
        for name in split.query_classes:
            rows.append({"method": method, "class": name, "F1": f1.get(name, np.nan),
                         REFERENCE_CELLS: counts.loc[name, REFERENCE_CELLS],
                         QUERY_CELLS: counts.loc[name, QUERY_CELLS], IN_REFERENCE: name in split.classes})
    return pd.DataFrame(rows)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def confusion_figure(truth: np.ndarray, predicted: np.ndarray, split: AnnotationSplit, title: str,
                     path: Path) -> Path:
    """Query classes (rows, unseen ones marked) against the reference classes predicted (columns):
    the fraction of each row, with the cell count written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = split.query_classes, split.classes
    counts = np.array([[np.sum((truth == r) & (predicted == c)) for c in cols] for r in rows])
    fraction = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(cols), 1.0 + 0.6 * len(rows)))
    ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if fraction[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [r if r in cols else f"{r} (unseen)" for r in rows])
    ax.set_xlabel("predicted (reference classes)")
    ax.set_ylabel("query class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_annotation_report(result, split: AnnotationSplit, out_dir: str | Path,
                            finetune_config: FinetuneConfig) -> Path:
    """``results.csv``, ``results_per_seed.csv``, ``per_class.csv``, ``confusion/*.png`` and
    ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    (out / CONFUSION_DIR).mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / RESULTS_CSV)
    result.per_seed.to_csv(out / PER_SEED_CSV, index=False)
    result.per_class.to_csv(out / PER_CLASS_CSV, index=False)
    scored = np.array([t is not None for t in split.truth])
    truth = split.truth[scored].astype(str)
    figures = []
    for method, predicted in result.predictions.items():
        path = confusion_figure(truth, predicted[scored], split, method, out / CONFUSION_DIR / f"{_slug(method)}.png")
        figures += [f"### {method}", "", f"![confusion matrix of {method}]({CONFUSION_DIR}/{path.name})", ""]
    counts = class_counts(split)
    batches = split.cells.obs[split.batch_key].astype(str)
    query_batches = sorted(set(batches[split.query]))
    f1 = result.per_class.pivot(index="method", columns="class", values="F1").loc[list(result.table.index)]
    text = "\n".join([
        "# sc_fm annotation benchmark", "",
        f"Reference: {int(split.reference.sum())} cells of {split.batch_key} {', '.join(split.reference_values)}, "
        f"with their labels. Query: {int(split.query.sum())} cells of {', '.join(query_batches)}, labels hidden "
        f"from every method and used only for scoring ({int(scored.sum())} labelled query cells scored).", "",
        *_unseen_lines(split), *_finding_lines(result), "",
        "## Verdict", "", *(f"- {line}" for line in result.verdict or ["(no checkpoint to compare)"]), "",
        "## Scores", "",
        "Accuracy is over the query cells of classes the reference holds; Macro F1 averages the F1 of the "
        "classes of both reference and query over every query cell (a cell of an unseen class predicted as a "
        "known one is a false positive of that class). Seeded methods (kNN (scVI), scANVI, fine-tuning) ran with "
        f"seeds {', '.join(map(str, result.seeds))}: each score is the mean, `… sd` the sample sd over seeds "
        "(0 for a method without a seed, n/a for one seed). A verdict says \"beats\" only when the macro-F1 "
        "difference exceeds the larger of the two macro-F1 sds, \"matches\" within it, \"trails\" otherwise.", "",
        markdown_table(result.table), "", "### Every seed", "", f"Also in `{PER_SEED_CSV}`.", "",
        markdown_table(result.per_seed.set_index("method")), "",
        "## Cells per class", "", markdown_table(counts), "",
        "## F1 per class", "", f"Mean over seeds; n/a for a class the reference lacks. Also in `{PER_CLASS_CSV}`.",
        "", markdown_table(f1), "",
        "## Confusion matrices", "", f"First seed ({result.seeds[0]}); each cell counts query cells.", "", *figures,
        "## Methods", "",
        "- LogReg (HVG): logistic regression (C=1, max_iter=1000) on log1p(CP10k) of the reference's 2,000 highly "
        "variable genes, each gene scaled on the reference.",
        "- kNN (PCA), kNN (scVI), `<model> (kNN zero-shot)`: the majority label of the 15 nearest reference cells "
        "in the PCA of batch-aware HVGs, in scVI's latent space (fitted on reference and query without labels), "
        "in the checkpoint's frozen embedding.",
        "- scANVI: from that scVI model (`from_scvi_model`), the query unlabelled, scvi-tools' default epochs.",
        "- `<model> (linear probe)`: logistic regression on the standardised frozen embedding.",
        f"- `<model> (fine-tuned)`: `scfm finetune` on the reference ({finetune_config.mode} mode, "
        f"{_length(finetune_config)}, {finetune_config.batch_cells} cells a step, "
        f"encoder lr {_encoder_lr(finetune_config)}, head lr {finetune_config.head_lr:g}, a "
        f"{finetune_config.val_fraction:g} validation split of the reference"
        f"{', the epoch best on it kept' if finetune_config.select_epoch else ''}"
        f"{_averaging(finetune_config)}"
        f"{_panel(finetune_config)}); "
        "`(untrained, same start, fine-tuned)`: the same from the checkpoint's own untrained start, the "
        "control that shows what pretraining buys.", "",
    ])
    path = out / REPORT_MD
    path.write_text(text)
    return path


def _averaging(config: FinetuneConfig) -> str:
    if not config.weight_average:
        return ""
    return (f", the classifier an exponential moving average of its weights "
            f"(decay {config.weight_average:g} a step)")


def _panel(config: FinetuneConfig) -> str:
    if config.context_hvg is None:
        return ", each cell's context drawn from all its genes"
    return f", each cell's context drawn from the training cells' {config.context_hvg:,} most variable genes"


def _encoder_lr(config: FinetuneConfig) -> str:
    return f"{config.lr:g}" if config.lr is not None else "a tenth of the checkpoint's pretraining rate (train.lr)"


def _length(config: FinetuneConfig) -> str:
    return f"{config.max_steps} steps" if config.max_steps is not None else f"{config.epochs} epochs"


def _unseen_lines(split: AnnotationSplit) -> list[str]:
    if not split.unseen:
        return []
    return [f"Unseen query classes (absent from the reference, left out of macro-F1 and accuracy, their "
            f"predictions shown in the confusion matrices): {', '.join(split.unseen)}."]


def _finding_lines(result) -> list[str]:
    """Say it in words when fine-tuned sc_fm trails the logistic regression, and when it does not
    beat its own untrained start fine-tuned the same way: then pretraining bought the classifier
    nothing these seeds can measure. On one seed that comparison is left open, whichever row
    scored higher: seed-to-seed differences of fine-tuning are as large as pretraining's effect."""
    table = result.table
    lines = []
    for name in (n for n in table.index if n.endswith(FINETUNED.format(""))):
        if compare(table, name, LOGREG, MACRO_F1)[0] == TRAILS:
            lines.append(f"Finding: {name} trails {LOGREG} on macro F1 ({table.loc[name, MACRO_F1]:.3f} vs "
                         f"{table.loc[LOGREG, MACRO_F1]:.3f}).")
        start = START_FINETUNED.format(name[:-len(FINETUNED.format(""))])
        if start not in table.index:
            continue
        word, spread = compare(table, name, start, MACRO_F1)
        if not spread_measured(table, name, start, MACRO_F1):
            lines.append(f"Finding: {name} scores {table.loc[name, MACRO_F1]:.3f} against "
                         f"{table.loc[start, MACRO_F1]:.3f} for {start} on macro F1 with one seed, which "
                         "cannot tell what pretraining bought this classifier: rerun with --seeds 3 or more.")
        elif word != BEATS:
            note = spread_note(table, name, start, spread, MACRO_F1)
            meaning = ("pretraining bought this classifier nothing measurable" if word == MATCHES else
                       "the untrained start fine-tunes better than the pretrained checkpoint")
            lines.append(f"Finding: {name} {word} {start} on macro F1 ({table.loc[name, MACRO_F1]:.3f} vs "
                         f"{table.loc[start, MACRO_F1]:.3f}, {note}): {meaning}.")
    return lines
