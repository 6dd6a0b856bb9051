"""Embedding quality: a pretrained sc_fm checkpoint vs scVI and PCA on held-out real cells.

The evaluation set is the shipped sc_mixology singlets (real counts; batch = protocol, label =
cell line). Every method is scored in this one process on the same cells with the same pinned
scib-metrics 0.5.10 settings (total = 0.6 bio + 0.4 batch) and held-out kNN label transfer.
The checkpoint is ``--checkpoint DIR`` or, by default, one pretrained here on the demo
corpus with the real cells held out (``sc_fm.demo``; ``--quick``: the demo's smoke size).
The harness is first checked against the published anchor (PCA ~0.670, scVI ~0.868).

Ends with ``result: NAME ratio=X target=Y`` lines (ratio > 1: sc_fm is better).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ANCHORS = {"PCA (unintegrated)": 0.670, "scVI": 0.868}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-size pretraining (20 steps)")
    parser.add_argument("--checkpoint", default=None, help="pretrained directory to evaluate instead")
    parser.add_argument("--workdir", default=None, help="where to build the corpus and run (default: temp)")
    args = parser.parse_args()

    from sc_fm import demo
    from sc_fm.config import EvalConfig
    from sc_fm.datasets import load_sc_mixology
    from sc_fm.evaluate import run_benchmark
    from sc_fm.evaluate.metrics import BATCH, BIO, KNN_ACCURACY, TOTAL

    work = Path(args.workdir or tempfile.mkdtemp(prefix="scfm_quality_"))
    began = time.perf_counter()
    checkpoint = args.checkpoint
    if checkpoint is None:
        size = demo.QUICK if args.quick else demo.FULL
        checkpoint = demo.pretrain(work, demo.build_corpus(work, size, progress=False), size)
    pretrain_s = time.perf_counter() - began
    result = run_benchmark(load_sc_mixology(), "batch", "cell_type", work / "report", [checkpoint],
                           EvalConfig(), track=False, progress=False)
    table = result.table
    print(table[[BIO, BATCH, TOTAL, KNN_ACCURACY]].round(3).to_string())
    for method, anchor in ANCHORS.items():
        print(f"anchor {method}: total {table.loc[method, TOTAL]:.3f} (published {anchor:.3f})")
    print("\n".join(result.verdict))
    print(f"pretraining {pretrain_s:.0f} s, benchmark {time.perf_counter() - began - pretrain_s:.0f} s; "
          f"report {result.report}")
    model = table.index[0]
    figures = (("total_vs_scvi", "scVI", TOTAL), ("total_vs_pca", "PCA (unintegrated)", TOTAL),
               ("knn_accuracy_vs_scvi", "scVI", KNN_ACCURACY))
    for name, reference, column in figures:
        ratio = table.loc[model, column] / table.loc[reference, column]
        print(f"result: {name} ratio={ratio:.3f} target=1.0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
