"""Baseline embeddings on the same cells: PCA on HVGs, scVI, Harmony, and a random control.

All baselines start from one view: raw counts in ``layers["counts"]`` and log-normalised
values in ``X`` restricted to batch-aware (seurat_v3) highly variable genes, as in the scIB
benchmarks. The PCA of that view is also the "unintegrated" reference of the PCR metric.
"""

from __future__ import annotations

import numpy as np

from sc_fm.config import CP10K, EvalConfig


def baseline_view(adata, batch_key: str | None, n_hvg: int):
    """Counts layer + log1p(normalised) ``X`` over ``n_hvg`` batch-aware HVGs (a copy)."""
    import scanpy as sc

    view = adata.copy()
    view.X = view.X.astype(np.float32)
    view.layers["counts"] = view.X.copy()
    sc.pp.normalize_total(view, target_sum=CP10K)
    sc.pp.log1p(view)
    sc.pp.highly_variable_genes(view, n_top_genes=min(n_hvg, view.n_vars), flavor="seurat_v3",
                                layer="counts", batch_key=batch_key)
    return view[:, view.var["highly_variable"]].copy()


def pca_embedding(view, n_pcs: int, seed: int) -> np.ndarray:
    """Unintegrated PCA of the HVG view (arpack, as scib-metrics uses)."""
    import scanpy as sc

    n_comps = min(n_pcs, view.n_vars - 1, view.n_obs - 1)
    return sc.pp.pca(view.X, n_comps=n_comps, svd_solver="arpack", random_state=seed).astype(np.float32)


def train_scvi(view, batch_key: str | None, config: EvalConfig, seed: int | None = None):
    """An scVI model (NB likelihood, CPU) trained on the HVG counts of a copy of ``view``; ``seed``
    (default ``config.seed``) fixes initialisation and minibatch order."""
    import scvi

    scvi.settings.seed = config.seed if seed is None else seed
    data = view.copy()
    scvi.model.SCVI.setup_anndata(data, layer="counts", batch_key=batch_key)
    model = scvi.model.SCVI(data, n_layers=config.scvi_layers, n_latent=config.scvi_latent,
                            gene_likelihood="nb")
    model.train(max_epochs=config.scvi_epochs, accelerator="cpu", enable_progress_bar=False,
                plan_kwargs={"n_epochs_kl_warmup": config.scvi_kl_warmup_epochs})
    return model


def scvi_embedding(view, batch_key: str | None, config: EvalConfig, seed: int | None = None) -> np.ndarray:
    """scVI latent mean of ``train_scvi``'s model."""
    model = train_scvi(view, batch_key, config, seed)
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def harmony_embedding(pca: np.ndarray, obs, batch_key: str, seed: int) -> np.ndarray:
    """Harmony (harmonypy) on the unintegrated PCA, ``batch_key`` as the covariate; ``seed`` fixes its
    k-means initialisation. Classic Harmony settings (theta 2, sigma 0.1, 10 iterations, ridge
    lambda 1, the default of R harmony 1.x and harmonypy < 2, as in the scIB benchmarks) rather than
    harmonypy 2's estimated lambda, which scores about 0.006 lower on the shipped singlets."""
    import harmonypy

    meta = obs[[batch_key]].astype(str).reset_index(drop=True)
    result = harmonypy.run_harmony(np.asarray(pca, np.float64), meta, [batch_key], lamb=1.0,
                                   random_state=seed, verbose=False)
    corrected = np.asarray(result.Z_corr)
    if corrected.shape[0] != len(meta):  # harmonypy < 2 returns PCs x cells
        corrected = corrected.T
    return np.ascontiguousarray(corrected, dtype=np.float32)


def random_embedding(n_cells: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian noise: the control showing how far batch metrics alone can be gamed."""
    return np.random.default_rng(seed).normal(size=(n_cells, dim)).astype(np.float32)
