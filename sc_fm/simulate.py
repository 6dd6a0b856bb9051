"""A simulated multi-study atlas: negative-binomial counts with real-looking nuisance structure.

Each study has its own assay, sequencing depth and donors; each assay multiplies genes by its
own capture efficiency (log-normal), which is exactly the batch effect the batch-aware
tokeniser must remove. Cells carry a latent state (cell-type centroid + within-type
variation) that drives expression, saved as ``obsm["X_latent"]`` so evaluations can use it
as an oracle embedding. A few empty and low-quality (shallow, mitochondria-heavy) cells
exercise QC. Generation is blockwise so atlases larger than memory can be streamed to disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ASSAYS = ("10x_3p_v3", "10x_3p_v2", "drop-seq", "smart-seq2", "cel-seq2")
N_MITO = 13


@dataclass
class AtlasSpec:
    """What to simulate; the defaults make a small atlas for tests and the demo."""

    n_cells: int = 2000
    n_genes: int = 2000
    n_studies: int = 3
    n_cell_types: int = 5
    latent_dim: int = 8
    mean_depth: float = 3000.0
    depth_spread: float = 3.0  # ratio between the deepest and shallowest study
    capture_sd: float = 0.5  # log-sd of per-assay gene capture factors
    dispersion: float = 5.0  # NB theta
    empty_fraction: float = 0.01
    low_quality_fraction: float = 0.03
    seed: int = 0
    gene_ids: list[str] | None = None  # default: synthetic Ensembl-style IDs
    study_names: list[str] = field(default_factory=list)


class AtlasSimulator:
    """Holds the fixed parameters (genes, types, studies) and draws cells in blocks."""

    def __init__(self, spec: AtlasSpec):
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        g = spec.n_genes
        if spec.gene_ids is not None:
            if len(spec.gene_ids) != g:
                raise ValueError("AtlasSpec.gene_ids must have n_genes entries")
            self.gene_ids = list(spec.gene_ids)
        else:
            self.gene_ids = [f"ENSG99{i:09d}" for i in range(g)]
        self.symbols = [f"MT-SIM{i}" if i < N_MITO else f"SIMG{i}" for i in range(g)]
        self.base_log = rng.normal(0.0, 1.6, g)
        self.base_log[:N_MITO] += 3.0  # mitochondrial genes are highly expressed
        self.loadings = rng.normal(0.0, 0.6, (g, spec.latent_dim)) * (rng.random((g, spec.latent_dim)) < 0.15)
        self.centroids = rng.normal(0.0, 1.5, (spec.n_cell_types, spec.latent_dim))
        self.type_names = [f"type_{k}" for k in range(spec.n_cell_types)]
        names = spec.study_names or [f"study_{s}" for s in range(spec.n_studies)]
        self.studies = names[: spec.n_studies]
        self.study_assay = [ASSAYS[s % len(ASSAYS)] for s in range(spec.n_studies)]
        depth_factors = np.geomspace(1.0 / np.sqrt(spec.depth_spread), np.sqrt(spec.depth_spread),
                                     spec.n_studies)
        self.study_depth = spec.mean_depth * rng.permutation(depth_factors)
        self.assay_capture = {a: rng.normal(0.0, spec.capture_sd, g) for a in sorted(set(self.study_assay))}
        self.type_mix = rng.dirichlet(np.full(spec.n_cell_types, 3.0), spec.n_studies)

    def block(self, start: int, n: int) -> tuple[sp.csr_matrix, pd.DataFrame, np.ndarray]:
        """Cells ``[start, start + n)``: counts (CSR int32), obs, latent state. Deterministic per start."""
        spec = self.spec
        rng = np.random.default_rng([spec.seed, start])
        study = (np.arange(start, start + n) * spec.n_studies) // max(spec.n_cells, 1)
        study = np.minimum(study, spec.n_studies - 1)
        types = np.array([rng.choice(spec.n_cell_types, p=self.type_mix[s]) for s in study])
        latent = self.centroids[types] + rng.normal(0.0, 0.3, (n, spec.latent_dim))
        log_mu = self.base_log[None, :] + latent @ self.loadings.T
        log_mu += np.stack([self.assay_capture[self.study_assay[s]] for s in study])
        prob = np.exp(log_mu - log_mu.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        depth = self.study_depth[study] * rng.lognormal(0.0, 0.35, n)
        kind = rng.random(n)
        empty = kind < spec.empty_fraction
        low = (kind >= spec.empty_fraction) & (kind < spec.empty_fraction + spec.low_quality_fraction)
        depth[low] = rng.uniform(40, 250, low.sum())
        prob[low, :N_MITO] *= 30.0
        prob[low] /= prob[low].sum(axis=1, keepdims=True)
        mu = prob * depth[:, None]
        theta = spec.dispersion
        counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.int32)
        counts[empty] = 0
        donors_per_study = 2
        obs = pd.DataFrame({
            "dataset": [self.studies[s] for s in study],
            "assay": [self.study_assay[s] for s in study],
            "donor": [f"{self.studies[s]}_donor{(i % donors_per_study)}" for i, s in zip(range(start, start + n), study)],
            "cell_type": [self.type_names[t] for t in types],
        }, index=[f"cell{i}" for i in range(start, start + n)])
        return sp.csr_matrix(counts), obs, latent.astype(np.float32)

    def blocks(self, block_cells: int = 4096) -> Iterator[tuple[sp.csr_matrix, pd.DataFrame, np.ndarray]]:
        for start in range(0, self.spec.n_cells, block_cells):
            yield self.block(start, min(block_cells, self.spec.n_cells - start))

    def resampled_blocks(self, block_cells: int = 4096, templates_per_study: int = 512
                         ) -> Iterator[tuple[sp.csr_matrix, pd.DataFrame, np.ndarray]]:
        """Like ``blocks``, much faster for large atlases (throughput benchmarks, not biology).

        Each cell is a simulated template cell of its study, thinned to 50-100% of its depth: studies, assays, types and capture effects carry over, cells stay distinct,
        and only sparse rows are touched per cell.
        """
        spec = self.spec
        parts = []
        for s in range(spec.n_studies):
            first = -(-s * spec.n_cells // spec.n_studies)  # first cell position of study s
            last = -(-(s + 1) * spec.n_cells // spec.n_studies)
            parts.append(self.block(first, max(1, min(templates_per_study, last - first))))
        templates = sp.vstack([p[0] for p in parts]).tocsr()
        template_obs = pd.concat([p[1] for p in parts])
        template_latent = np.concatenate([p[2] for p in parts])
        sizes = np.array([p[0].shape[0] for p in parts])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        for start in range(0, spec.n_cells, block_cells):
            n = min(block_cells, spec.n_cells - start)
            rng = np.random.default_rng([spec.seed, start, 1])
            study = np.minimum((np.arange(start, start + n) * spec.n_studies) // spec.n_cells, spec.n_studies - 1)
            rows = offsets[study] + rng.integers(0, sizes[study])
            counts = templates[rows]
            keep = np.repeat(rng.uniform(0.5, 1.0, n), np.diff(counts.indptr))
            # thinning by stochastic rounding: the binomial's mean, at a fraction of its cost
            counts.data = np.floor(counts.data * keep + rng.random(counts.nnz)).astype(np.int32)
            counts.eliminate_zeros()
            obs = template_obs.iloc[rows].set_axis([f"cell{i}" for i in range(start, start + n)])
            yield counts, obs, template_latent[rows]

    def var(self) -> pd.DataFrame:
        return pd.DataFrame({"symbol": self.symbols}, index=pd.Index(self.gene_ids, name="gene_id"))


def simulate_atlas(spec: AtlasSpec | None = None, **kwargs) -> "anndata.AnnData":  # noqa: F821
    """The whole atlas in memory as AnnData (counts in X, latent in ``obsm["X_latent"]``)."""
    import anndata

    sim = AtlasSimulator(spec or AtlasSpec(**kwargs))
    parts = list(sim.blocks())
    adata = anndata.AnnData(X=sp.vstack([p[0] for p in parts]).tocsr(),
                            obs=pd.concat([p[1] for p in parts]), var=sim.var())
    adata.obsm["X_latent"] = np.concatenate([p[2] for p in parts])
    return adata


def write_atlas_h5ad(path: str | Path, spec: AtlasSpec, block_cells: int = 4096,
                     resampled: bool = False) -> Path:
    """Stream a simulated atlas to an h5ad file without holding it in memory
    (``resampled``: the fast ``AtlasSimulator.resampled_blocks`` generator)."""
    import anndata
    import h5py
    from anndata.io import sparse_dataset, write_elem

    sim = AtlasSimulator(spec)
    path = Path(path)
    obs_parts = []
    with h5py.File(path, "w") as f:
        x = None
        for counts, obs, _ in (sim.resampled_blocks if resampled else sim.blocks)(block_cells):
            if x is None:
                write_elem(f, "X", counts)
                x = sparse_dataset(f["X"])
            else:
                x.append(counts)
            obs_parts.append(obs)
        obs = pd.concat(obs_parts)
        for col in obs.columns:
            obs[col] = obs[col].astype("category")
        write_elem(f, "obs", obs)
        write_elem(f, "var", sim.var())
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
    anndata.read_h5ad(path, backed="r").file.close()  # validates the file
    return path
