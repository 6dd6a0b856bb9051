"""``scfm benchmark --task annotation``: the query's labels never reach a method, the split is
exact, the metrics are scikit-learn's, the report and MLflow hold every row, bad input is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from sc_fm.classify import ACCURACY, MACRO_F1, annotation_scores, hvg_features, per_class_f1
from sc_fm.cli import main
from sc_fm.config import EvalConfig, FinetuneConfig
from sc_fm.errors import InputDataError
from sc_fm.evaluate.annotation import annotation_methods, predict_all
from sc_fm.evaluate.annotation_split import require_scorable, split_reference

FAST_EVAL = EvalConfig(scvi_epochs=2, scvi_kl_warmup_epochs=1, n_pcs=10)
FAST_FINETUNE = FinetuneConfig(label_key="cell_type", max_steps=2)
ROWS = ["LogReg (HVG)", "kNN (PCA)", "kNN (scVI)", "scANVI", "sc_fm-tiny (kNN zero-shot)",
        "sc_fm-tiny (linear probe)", "sc_fm-tiny (fine-tuned)", "sc_fm-tiny (untrained, same start, fine-tuned)"]


@pytest.fixture(scope="module")
def cells(tiny_atlas):
    """100 cells of study_0 (the reference) and 100 of study_1 (the query) of the tiny atlas."""
    rows = [np.flatnonzero((tiny_atlas.obs["dataset"] == study).to_numpy())[:100] for study in ("study_0", "study_1")]
    return tiny_atlas[np.concatenate(rows)].copy()


def test_the_split_is_exact_and_the_query_labels_are_gone(cells):
    split = split_reference(cells, "dataset", "cell_type", ["study_0"], "cells")
    expected = (cells.obs["dataset"] == "study_0").to_numpy()
    np.testing.assert_array_equal(split.reference, expected)
    np.testing.assert_array_equal(split.reference_labels, cells.obs["cell_type"].astype(str)[expected])
    np.testing.assert_array_equal(split.truth.astype(str), cells.obs["cell_type"].astype(str)[~expected])
    assert "cell_type" not in split.cells.obs and "cell_type" in cells.obs
    assert list(split.labels()[~expected]) == [None] * int((~expected).sum())
    assert (split.cells.X != cells.X).nnz == 0
    assert split.shared == split.classes == ["type_0", "type_1", "type_2", "type_3"] and split.unseen == []


def test_metrics_equal_scikit_learn_on_a_hand_made_case():
    truth = np.array(["A", "A", "B", "B", "C"])  # C: a query class the reference lacks
    predicted = np.array(["A", "B", "B", "B", "A"])
    scores = annotation_scores(truth, predicted, ["A", "B"])
    # A: tp 1, fp 1 (the C cell), fn 1 -> F1 0.5; B: tp 2, fp 1 -> F1 0.8
    assert scores[MACRO_F1] == pytest.approx(0.65)
    assert scores[MACRO_F1] == pytest.approx(f1_score(truth, predicted, labels=["A", "B"], average="macro"))
    assert scores[ACCURACY] == pytest.approx(0.75) == accuracy_score(truth[:4], predicted[:4])
    assert per_class_f1(truth, predicted, ["B", "A"]).to_dict() == pytest.approx({"A": 0.5, "B": 0.8})
    assert annotation_scores(truth, predicted)[MACRO_F1] == pytest.approx(
        f1_score(truth, predicted, average="macro", zero_division=0))


def test_hvg_features_are_scaled_on_the_training_cells_only(cells):
    train = (cells.obs["dataset"] == "study_0").to_numpy()
    features = hvg_features(cells.X, train, n_hvg=50)
    assert features.shape == (cells.n_obs, 50)
    np.testing.assert_allclose(features[train].mean(axis=0), 0, atol=1e-4)
    assert not np.allclose(features[~train].mean(axis=0), 0, atol=1e-2)


@pytest.fixture(scope="module")
def started_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with a saved start of other weights, as every pretraining writes one."""
    from sc_fm.pretrained import Pretrained

    loaded = Pretrained.load(tiny_checkpoint)
    path = tmp_path_factory.mktemp("started") / "final"
    Pretrained(loaded.model, loaded.tokenizer, start=loaded.untrained(1).model).save(path)
    return path


def _predictions(cells, checkpoint, query_labels) -> dict[str, list[np.ndarray]]:
    adata = cells.copy()
    query = (adata.obs["dataset"] != "study_0").to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy().astype(object)
    labels[query] = query_labels
    adata.obs["cell_type"] = labels
    split = split_reference(adata, "dataset", "cell_type", ["study_0"], "cells")
    methods = annotation_methods(split, [checkpoint], FAST_EVAL, FAST_FINETUNE, progress=False)
    assert [m.name for m in methods] == ROWS
    return predict_all(methods, [0])


@pytest.mark.slow
def test_query_labels_never_reach_a_method(cells, started_checkpoint):
    original = _predictions(cells, started_checkpoint, cells.obs["cell_type"].astype(str)[
        (cells.obs["dataset"] != "study_0").to_numpy()].to_numpy())
    for replacement in ("type_0", "a label no reference cell has"):
        replaced = _predictions(cells, started_checkpoint, replacement)
        for name in ROWS:
            np.testing.assert_array_equal(replaced[name][0], original[name][0], err_msg=name)


@pytest.fixture(scope="module")
def annotation_cli(cells, started_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("annotation")
    path = tmp / "cells.h5ad"
    adata = cells.copy()
    labels = adata.obs["cell_type"].astype(str).to_numpy().astype(object)
    labels[np.flatnonzero((adata.obs["dataset"] == "study_1").to_numpy())[:5]] = "only in the query"
    adata.obs["cell_type"] = labels
    adata.write_h5ad(path)
    out = tmp / "report"
    uri = f"sqlite:///{tmp / 'elsewhere.db'}"
    code = main(["benchmark", str(path), "--task", "annotation", "--checkpoint", str(started_checkpoint),
                 "--label-key", "cell_type", "--batch-key", "dataset", "--reference", "study_0", "-o", str(out),
                 "--seeds", "2", "--finetune-steps", "2", "--scvi-epochs", "2", f"tracking.uri={uri}"])
    return code, out, uri


@pytest.mark.slow
def test_report_and_mlflow_hold_every_row(annotation_cli):
    import mlflow

    from sc_fm.tracking import metric_name

    code, out, uri = annotation_cli
    assert code == 0
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == ["method", "Accuracy", "Accuracy sd", "Macro F1", "Macro F1 sd", "Seeds"]
    assert list(table["method"]) == ROWS
    seeds = dict(zip(table["method"], table["Seeds"]))
    assert seeds["LogReg (HVG)"] == 1 and seeds["scANVI"] == 2 and seeds["sc_fm-tiny (fine-tuned)"] == 2
    per_seed = pd.read_csv(out / "results_per_seed.csv")
    assert len(per_seed) == sum(seeds.values()) and set(per_seed["method"]) == set(ROWS)
    per_class = pd.read_csv(out / "per_class.csv")
    assert set(per_class["method"]) == set(ROWS)
    unseen = per_class[per_class["class"] == "only in the query"]
    assert len(unseen) == len(ROWS) and unseen["F1"].isna().all() and (unseen["query cells"] == 5).all()
    report = (out / "report.md").read_text()
    for name in ROWS:
        assert f"| {name} |" in report
    for reference in ("LogReg (HVG)", "scANVI"):
        assert f"sc_fm-tiny (fine-tuned) vs {reference}: macro F1" in report
    assert "Unseen query classes" in report and "only in the query (unseen)" not in report
    assert len(list((out / "confusion").glob("*.png"))) == len(ROWS)
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = runs[0].data.metrics
    for name in ROWS:
        assert {metric_name("benchmark", name, MACRO_F1), metric_name("benchmark", name, ACCURACY)} <= set(metrics)


def _refused(argv: list[str], capsys, out) -> str:
    assert main(argv) == 2
    assert not out.exists()
    return capsys.readouterr().err


@pytest.mark.parametrize("change, flags, expected", [
    (None, ["--reference", "study_9"], "study_9 is not a value"),
    (None, ["--reference", "study_0,study_1"], "holds every cell"),
    ("rare", ["--reference", "study_0"], "fewer than 2 cells: 'rare' (1)"),
    ("nan", ["--reference", "study_0"], "missing values among the reference cells"),
    ("unseen", ["--reference", "study_0"], "no query class"),
    (None, ["--reference", "study_0", "--task", "annotate"], "'annotate' is not a benchmark task"),
])
def test_bad_annotation_input_is_refused_before_anything_is_written(cells, tmp_path, capsys, change, flags,
                                                                     expected):
    adata = cells.copy()
    labels = adata.obs["cell_type"].astype(str).to_numpy().astype(object)
    reference = (adata.obs["dataset"] == "study_0").to_numpy()
    if change == "rare":
        labels[np.flatnonzero(reference)[0]] = "rare"
    elif change == "nan":
        labels[np.flatnonzero(reference)[0]] = np.nan
    elif change == "unseen":
        labels[~reference] = "never in the reference"
    adata.obs["cell_type"] = labels
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "report"
    argv = ["benchmark", str(path), "--label-key", "cell_type", "--batch-key", "dataset", "-o", str(out),
            "--no-tracking", *flags]
    if "--task" not in flags:
        argv += ["--task", "annotation"]
    err = _refused(argv, capsys, out)
    assert expected in err and "Fix:" in err and len(err.strip().splitlines()) == 1


def _findings(tuned: float, sds: tuple[float, float], seeds: int) -> list[str]:
    """The report's finding lines for LogReg at 0.800, fine-tuned sc_fm-tiny at ``tuned`` and its
    untrained start at 0.869, the two fine-tuned rows with ``sds`` over ``seeds`` seeds."""
    from types import SimpleNamespace

    from sc_fm.evaluate.annotation_report import FINETUNED, LOGREG, START_FINETUNED, _finding_lines

    rows = [LOGREG, FINETUNED.format("sc_fm-tiny"), START_FINETUNED.format("sc_fm-tiny")]
    table = pd.DataFrame({"Macro F1": [0.800, tuned, 0.869], "Macro F1 sd": [0.0, *sds],
                          "Seeds": [1, seeds, seeds]}, index=rows)
    return _finding_lines(SimpleNamespace(table=table))


@pytest.mark.parametrize("tuned, sd, expected", [
    (0.900, 0.010, None),  # a lead beyond the spread: pretraining paid
    (0.875, 0.031, "matches"), (0.830, 0.010, "trails")])
def test_the_report_says_when_pretraining_bought_the_classifier_nothing(tuned, sd, expected):
    lines = _findings(tuned, (sd, 0.007), seeds=3)
    if expected is None:
        assert lines == []
        return
    meaning = {"matches": "pretraining bought this classifier nothing measurable",
               "trails": "the untrained start fine-tunes better than the pretrained checkpoint"}[expected]
    assert lines == [f"Finding: sc_fm-tiny (fine-tuned) {expected} sc_fm-tiny (untrained, same start, "
                     f"fine-tuned) on macro F1 ({tuned:.3f} vs 0.869, spread {sd:.3f} over 3 seeds): "
                     f"{meaning}."]


@pytest.mark.parametrize("tuned", [0.868, 0.900])
def test_one_seed_leaves_what_pretraining_bought_open_either_way(tuned):
    assert _findings(tuned, (np.nan, np.nan), seeds=1) == [
        f"Finding: sc_fm-tiny (fine-tuned) scores {tuned:.3f} against 0.869 for sc_fm-tiny (untrained, same "
        "start, fine-tuned) on macro F1 with one seed, which cannot tell what pretraining bought this "
        "classifier: rerun with --seeds 3 or more."]


def test_an_all_unseen_query_is_refused_by_the_library_too(cells):
    adata = cells.copy()
    query = (adata.obs["dataset"] != "study_0").to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy().astype(object)
    labels[query] = "new"
    adata.obs["cell_type"] = labels
    split = split_reference(adata, "dataset", "cell_type", ["study_0"], "cells")
    with pytest.raises(InputDataError, match="no query class"):
        require_scorable(split, "cells")


def test_finetune_steps_bound_the_optimiser_steps(tiny_checkpoint, cells, tmp_path):
    from sc_fm.finetune import finetune
    from sc_fm.pretrained import Pretrained

    adata = cells[:160].copy()
    # 128 training cells, 16 a step: 8 steps an epoch; 10 steps -> two epochs, the second of 2 steps
    result = finetune(Pretrained.load(tiny_checkpoint), adata, tmp_path / "ft",
                      FinetuneConfig(label_key="cell_type", max_steps=10), progress=False)
    assert len(result.history) == 2


def test_a_checkpoint_without_its_saved_start_is_refused(cells, tiny_checkpoint, tmp_path, capsys):
    from sc_fm.pretrained import Pretrained

    loaded = Pretrained.load(tiny_checkpoint)
    startless = tmp_path / "startless"
    Pretrained(loaded.model, loaded.tokenizer).save(startless)
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    out = tmp_path / "report"
    err = _refused(["benchmark", str(path), "--task", "annotation", "--checkpoint", str(startless),
                    "--label-key", "cell_type", "--batch-key", "dataset", "--reference", "study_0", "-o", str(out),
                    "--no-tracking"], capsys, out)
    assert "no saved start" in err


@pytest.mark.parametrize("setting", [["--min-genes-mapped", "100000"], ["benchmark.input.min_gene_overlap=1.0"]])
def test_the_gene_floors_of_benchmark_input_hold_for_the_annotation_task(cells, tiny_checkpoint, tmp_path, capsys,
                                                                        setting):
    adata = cells.copy()
    adata.var_names = [*adata.var_names[:-1], "NOT_A_GENE"]  # one unmapped gene: overlap below 1.0
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "report"
    err = _refused(["benchmark", str(path), "--task", "annotation", "--checkpoint", str(tiny_checkpoint),
                    "--label-key", "cell_type", "--batch-key", "dataset", "--reference", "study_0", "-o", str(out),
                    "--no-tracking", *setting], capsys, out)
    assert "are in the checkpoint's vocabulary" in err and "Fix:" in err
