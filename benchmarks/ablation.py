"""Zero-shot ablation: which pretraining settings make the checkpoint beat its own untrained start.

Builds the demo corpus once (``sc_fm.demo``), then for each ``--variant NAME=KEY=VALUE;...`` and
each pretraining seed runs the demo's pretraining with those overrides and scores, on each
evaluation set (the PBMC cross-chemistry cells and the cell-line singlets, both held out of the
corpus): the zero-shot embedding, the checkpoint's same start (untrained), and the zero-shot
embedding with global gene normalisers (no per-batch normalisation at embedding time), beside
unintegrated PCA. scIB settings as in ``scfm benchmark``. Every seed's row is appended to
``WORKDIR/ablation.csv`` as soon as it is scored, so a long run keeps what it measured.

Usage: ``python benchmarks/ablation.py --workdir /tmp/abl --seeds 2 --variant default= \\
--variant long=train.max_steps=600``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd


def evaluation_sets() -> dict[str, tuple]:
    """``{name: (adata, batch_key, label_key)}`` of the two held-out sets."""
    from sc_fm.datasets import PBMC_BATCH, PBMC_LABEL, load_pbmc_cross_chemistry, load_sc_mixology

    return {"pbmc": (load_pbmc_cross_chemistry(), PBMC_BATCH, PBMC_LABEL),
            "mixology": (load_sc_mixology(), "batch", "cell_type")}


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    if not name:
        raise SystemExit(f"--variant {text!r}: write NAME=KEY=VALUE;KEY=VALUE (or NAME= for the defaults)")
    return name, [o for o in overrides.split(";") if o]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=2, help="pretraining seeds per variant (train.seed)")
    parser.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE;... (repeatable)")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the demo's)")
    args = parser.parse_args()

    from sc_fm import demo
    from sc_fm.config import EvalConfig
    from sc_fm.evaluate.baselines import baseline_view, pca_embedding
    from sc_fm.evaluate.metrics import BATCH, BIO, TOTAL, scib_scores
    from sc_fm.pretrained import Pretrained

    variants = [parse_variant(v) for v in args.variant] or [("default", [])]
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    store = work / "corpus.zarr"
    if not store.exists():
        demo.build_corpus(work, demo.FULL, progress=False)
    config = EvalConfig()
    sets = evaluation_sets()
    pca = {name: pca_embedding(baseline_view(a, b, config.n_hvg), config.n_pcs, config.seed)
           for name, (a, b, _) in sets.items()}
    out = work / "ablation.csv"
    for name, overrides in variants:
        for seed in range(args.seeds):
            began = time.perf_counter()
            size = demo.FULL if args.steps is None else demo.DemoSize(**{**demo.FULL.__dict__, "max_steps": args.steps})
            checkpoint = demo.pretrain(work / name / f"seed{seed}", store, size, [f"train.seed={seed}", *overrides])
            pretrain_s = time.perf_counter() - began
            model = Pretrained.load(checkpoint)
            start = model.same_start()
            for set_name, (adata, batch_key, label_key) in sets.items():
                embeddings = {
                    "zero-shot": model.embed(adata, batch_key, key_added=None, progress=False),
                    "same start": start.embed(adata, batch_key, key_added=None, progress=False),
                    "zero-shot, global normalisers": model.embed(adata, None, key_added=None, progress=False),
                    "PCA": pca[set_name]}
                scores = scib_scores(embeddings, adata.obs, batch_key, label_key, pca[set_name])
                rows = scores[[BIO, BATCH, TOTAL]].reset_index(names="embedding")
                rows.insert(0, "dataset", set_name)
                rows.insert(0, "seed", seed)
                rows.insert(0, "variant", name)
                rows["overrides"] = " ".join(overrides)
                rows["pretrain_s"] = round(pretrain_s)
                rows.to_csv(out, mode="a", header=not out.exists(), index=False)
                print(rows.round(3).to_string(index=False), flush=True)
    table = pd.read_csv(out)
    summary = table.groupby(["dataset", "variant", "embedding"])[TOTAL].agg(["mean", "std", "count"]).round(3)
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
