"""``CellTokenizer``: raw counts + cell metadata + corpus statistics -> tokens.

A pure function of (cell row, cell metadata, normalisers, config, RNG), vectorised over
blocks of cells:

1. depth-normalise each cell to ``target_sum``;
2. divide each gene by its normaliser (nonzero median for the cell's dataset/assay, or the
   global one) -> ``score``;
3. ``rank``: genes ordered by descending score, value ``log1p(score)``;
   ``bin``: value = per-cell quantile bin of ``log1p(score)`` (1..n_bins-1), genes in random
   order (gene order without an RNG);
4. context: the top ``max_len - 1 - n_unexpressed`` genes (``top``), or that many sampled
   uniformly from the expressed ones (``sample``), plus ``n_unexpressed`` unexpressed genes
   (value 0), after ``<cls>``;
5. condition ids per ``condition_keys`` (0 = ``<unk>``), dropped at ``condition_dropout``
   during training; then masking and packing (``mask_and_pack``).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sc_fm.config import CP10K, TokenizerConfig, section_from_dict, to_dict
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.store import GLOBAL_GROUP, CorpusStore
from sc_fm.tokenize.cells import Ragged, TokenizedCells
from sc_fm.tokenize.encode import (_scratch, descending_positions, quantile_bins, random_positions,
                                   sample_unexpressed)
from sc_fm.batch import HIDDEN_VALUE
from sc_fm.tokenize.masking import mask_tokens, unmasked
from sc_fm.tokenize.normalisers import (GLOBAL_VALUE, NO_NORMALISERS, KeptStatistics, build_normalisers,
                                        is_group_normalised, load_normalisers, medians_by_group,
                                        normalisers_from_stats, save_normalisers)
from sc_fm.tokenize.packing import pack
from sc_fm.vocab import CLS_ID, N_SPECIAL, GeneVocab

TOKENIZER_FORMAT = "sc_fm.tokenizer"
TOKENIZER_VERSION = 1
ROWS_PER_PASS = 256


def check_median_scale(config: TokenizerConfig, scale: float, where: str) -> None:
    """Gene medians at ``scale`` counts per cell divide values depth-normalised to
    ``tokenizer.target_sum``: the two must be one scale, else every value is silently rescaled."""
    if config.target_sum != scale:
        raise ConfigError(f"tokenizer.target_sum={config.target_sum:g} but the gene medians are at {scale:g} "
                          f"counts per cell", where,
                          f"set tokenizer.target_sum={scale:g} (the scale the statistics were computed at)")


def _codes(values: Sequence[str | None], categories: pd.Index) -> np.ndarray:
    """Category position + 1 per value; 0 for None or an unknown value (the codes of
    ``pd.Categorical(values, categories)`` + 1, at a third of its cost per block)."""
    return categories.get_indexer(values).astype(np.int64) + 1


class CellTokenizer:
    """See the module docstring; ``normalisers[group][value]`` are float32 ``[n_genes]``."""

    def __init__(self, config: TokenizerConfig, vocab: GeneVocab,
                 normalisers: dict[str, dict[str, np.ndarray]], condition_vocabs: dict[str, list[str]]):
        self.config = config
        self.vocab = vocab
        self.normalisers = normalisers
        self.condition_vocabs = {key: list(values) for key, values in condition_vocabs.items()}
        if GLOBAL_VALUE not in normalisers.get(GLOBAL_GROUP, {}):
            raise InputDataError("normalisers lack the global group", "tokenizer",
                                 "build the tokenizer with CellTokenizer.from_stores")
        missing = [k for k in config.condition_keys if k not in self.condition_vocabs]
        if missing:
            raise ConfigError(f"no categories for condition key {missing[0]!r}", "tokenizer.condition_keys",
                              f"use keys among {sorted(self.condition_vocabs)} or pass their categories")
        self._group_values, table = self._normaliser_table()
        self._inverse_table = 1.0 / table
        self._group_index = pd.Index(self._group_values, dtype=object)
        self._condition_index = {k: pd.Index(v, dtype=object) for k, v in self.condition_vocabs.items()}

    def _normaliser_table(self) -> tuple[list[str], np.ndarray]:
        """Row 0: the fallback (global medians, or ones for "none"); row i: group value i - 1."""
        group = self.config.stats_group
        n_genes = self.vocab.n_genes
        fallback = self.normalisers[GLOBAL_GROUP][GLOBAL_VALUE]
        if group == NO_NORMALISERS:
            return [], np.ones((1, n_genes))
        if group != GLOBAL_GROUP and group not in self.normalisers:
            raise InputDataError(f"no normalisers for statistics group {group!r}", "tokenizer.stats_group",
                                 f"use one of {sorted(self.normalisers)} or 'none'")
        by_value = {} if group == GLOBAL_GROUP else self.normalisers[group]
        values = sorted(by_value)
        rows = [fallback] + [by_value[v] for v in values]
        for value, row in zip(["global"] + values, rows):
            if row.shape != (n_genes,):
                raise InputDataError(f"normaliser {group}/{value} has shape {row.shape}, vocabulary has "
                                     f"{n_genes} genes", "tokenizer", "rebuild the tokenizer from the store")
        return values, np.stack(rows).astype(np.float64)

    # ---- construction and persistence -------------------------------------------------
    @classmethod
    def from_stores(cls, config: TokenizerConfig, stores: Sequence[CorpusStore],
                    kept: KeptStatistics | None = None) -> "CellTokenizer":
        """Normalisers and condition categories from the stores (which must share a vocabulary).

        ``kept``: statistics and categories of the cells that train when a filter holds some
        out (``sc_fm.data.kept_cells``), used instead of the stores' own, which cover all cells."""
        if not stores:
            raise ConfigError("no corpus stores given", "data.stores", "list at least one store path")
        vocab = stores[0].vocab
        for store in stores:
            check_vocabulary(store, vocab)
            check_median_scale(config, store.stats_target_sum, str(store.path))
        if kept is None:
            normalisers = build_normalisers(stores, config.stats_group, config.min_group_cells)
        else:
            normalisers = normalisers_from_stats(kept.global_stats, kept.group_stats, config.stats_group,
                                                 config.min_group_cells)
        condition_vocabs = {}
        for key in config.condition_keys:
            if not any(key in s.categories for s in stores):
                raise ConfigError(f"condition key {key!r} is not a cell metadata column of any store",
                                  "tokenizer.condition_keys",
                                  f"use columns among {sorted({c for s in stores for c in s.categories})}")
            condition_vocabs[key] = (kept.categories[key] if kept is not None else
                                     sorted({c for s in stores for c in s.categories.get(key, [])}))
        return cls(config, vocab, normalisers, condition_vocabs)

    def save(self, directory: str | Path) -> None:
        """``tokenizer.json`` (config, categories, vocabulary hash), ``normalisers.npz``, ``vocab.tsv``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        index = save_normalisers(self.normalisers, directory / "normalisers.npz")
        meta = {"format": TOKENIZER_FORMAT, "version": TOKENIZER_VERSION, "config": to_dict(self.config),
                "vocab_hash": self.vocab.hash, "condition_vocabs": self.condition_vocabs,
                "normalisers": index}
        (directory / "tokenizer.json").write_text(json.dumps(meta, indent=1))
        self.vocab.save(directory / "vocab.tsv")

    @classmethod
    def load(cls, directory: str | Path) -> "CellTokenizer":
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise InputDataError(f"no tokenizer.json in {directory}", str(directory),
                                 "point at a tokenizer/ directory saved with CellTokenizer.save")
        damaged = "restore the checkpoint's tokenizer/ folder as pretraining wrote it"
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputDataError(f"tokenizer.json is not valid JSON ({err})", str(path), damaged) from err
        if not isinstance(meta, dict):
            raise InputDataError("tokenizer.json does not hold a mapping", str(path), damaged)
        if meta.get("format") != TOKENIZER_FORMAT or meta.get("version") != TOKENIZER_VERSION:
            raise InputDataError(f"unsupported tokenizer format {meta.get('format')!r} version "
                                 f"{meta.get('version')!r}", str(path), "re-save it with this sc_fm")
        missing = [key for key in ("vocab_hash", "config", "normalisers", "condition_vocabs") if key not in meta]
        if missing:
            raise InputDataError(f"tokenizer.json has no {missing[0]!r}", str(path), damaged)
        vocab = GeneVocab.load(directory / "vocab.tsv")
        if vocab.hash != meta["vocab_hash"]:
            raise InputDataError("vocab.tsv does not match the tokenizer's vocabulary hash", str(directory),
                                 "restore the vocab.tsv saved with this tokenizer")
        config = section_from_dict(TokenizerConfig, meta["config"])
        try:
            normalisers = load_normalisers(directory / "normalisers.npz", meta["normalisers"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:  # missing, truncated, not the listed arrays
            raise InputDataError(f"normalisers.npz is missing or damaged ({type(err).__name__}: {err})",
                                 str(directory), damaged) from err
        for group, by_value in normalisers.items():  # every count is divided by these
            for value, row in by_value.items():
                if not (np.isfinite(row).all() and (row > 0).all()):
                    raise InputDataError(f"normalisers.npz: normaliser {group}/{value} holds zero, negative or "
                                         f"non-finite values", str(directory), damaged)
        vocabs = meta["condition_vocabs"]
        if not isinstance(vocabs, dict) or not all(isinstance(v, list) for v in vocabs.values()):
            raise InputDataError(f"tokenizer.json: condition_vocabs must map each key to a list of categories "
                                 f"(got {type(vocabs).__name__})", str(path), damaged)
        return cls(config, vocab, normalisers, vocabs)

    @property
    def normalises_by_group(self) -> bool:
        """True when genes are divided by their dataset's/assay's own medians (``stats_group``)."""
        return is_group_normalised(self.config.stats_group)

    def with_group_normalisers(self, blocks: Iterable[tuple[sp.csr_matrix, np.ndarray]]) -> "CellTokenizer":
        """A copy whose ``stats_group`` normalisers are those of new cells' own groups (a new
        assay's capture bias is removed as it was for the training datasets); ``blocks`` yields
        (count rows in vocabulary space, each row's group value). Genes a group saw too rarely
        keep the global median, by the same rule as at pretraining."""
        check_median_scale(self.config, CP10K, "the input's own normalisers")
        fallback = self.normalisers[GLOBAL_GROUP][GLOBAL_VALUE]
        by_value = medians_by_group(blocks, self.vocab.n_genes, fallback, self.config.min_group_cells)
        normalisers = {GLOBAL_GROUP: self.normalisers[GLOBAL_GROUP], self.config.stats_group: by_value}
        return CellTokenizer(self.config, self.vocab, normalisers, self.condition_vocabs)

    def normalised_values(self, indptr, indices, data, group_values=None) -> np.ndarray:
        """log1p of each nonzero's depth- and median-normalised count: what the rank scheme's
        values are and the bins are cut from (one float64 per nonzero)."""
        return np.log1p(self._scores(indptr, indices, data, self._table_rows(group_values, len(indptr) - 1)))

    def adapted_to(self, stores: Sequence[CorpusStore]) -> "CellTokenizer":
        """The tokenizer for new cells that will train further (adaptation): normalisers from
        their stores, condition categories extended by theirs. New categories are appended, so
        every known category keeps its id (and the model its embedding row)."""
        fresh = CellTokenizer.from_stores(self.config, stores)
        categories = {key: values + [v for v in fresh.condition_vocabs.get(key, []) if v not in values]
                      for key, values in self.condition_vocabs.items()}
        return CellTokenizer(self.config, self.vocab, fresh.normalisers, categories)

    @property
    def model_inputs(self) -> dict:
        """What the model needs to size its embeddings (condition sizes include ``<unk>``)."""
        return {"n_tokens": self.vocab.n_tokens,
                "value_encoding": "bin" if self.config.scheme == "bin" else "continuous",
                "n_bins": self.config.n_bins,
                "condition_sizes": [len(self.condition_vocabs[k]) + 1 for k in self.config.condition_keys]}

    # ---- the cell -> tokens function ----------------------------------------------------
    def encode_rows(self, indptr, indices, data, conditions: dict[str, Sequence[str | None]],
                    normaliser_group_values: Sequence[str | None] | None = None,
                    rng: np.random.Generator | None = None, with_expression: bool = False) -> TokenizedCells:
        """Raw-count CSR rows (vocabulary space) -> unmasked cells.

        ``conditions[key][row]`` is the row's category (a key left out means ``<unk>``);
        ``normaliser_group_values[row]`` picks ``normalisers[stats_group][value]`` (None or an
        unseen value -> global). ``rng`` None: deterministic (``top`` context, gene order for
        ``bin``, no condition dropout, no down-sampling). ``with_expression``: the cells also
        carry their whole count row (before any down-sampling), the cell-level objective's target.
        """
        indptr, indices, data = self._expressed_csr(indptr, indices, data)
        expression = (Ragged(indptr.copy(), (indices.astype(np.int32), data.astype(np.float32)))
                      if with_expression else None)
        if rng is not None and self.config.downsample_prob > 0:
            indptr, indices, data = self._downsampled(indptr, indices, data, rng)
        n = len(indptr) - 1
        group_values = normaliser_group_values
        parts = []
        for lo in range(0, max(n, 1), ROWS_PER_PASS):  # bounds the padded sort matrices
            hi = min(lo + ROWS_PER_PASS, n)
            a, b = int(indptr[lo]), int(indptr[hi])
            parts.append(self._encode_block(
                indptr[lo: hi + 1] - a, indices[a:b], data[a:b],
                {key: values[lo:hi] for key, values in conditions.items()},
                None if group_values is None else group_values[lo:hi], rng))
        cells = parts[0] if len(parts) == 1 else TokenizedCells.concat(parts)
        return cells if expression is None else dataclasses.replace(cells, expression=expression)

    def _downsampled(self, indptr, indices, data, rng: np.random.Generator):
        """Binomial thinning of counts (cellarium's depth augmentation): each cell is, with
        probability ``downsample_prob``, kept at a fraction ~ U(``downsample_min_fraction``, 1) of
        its molecules, so the model sees the same cell at many depths. Non-integer values are kept.

        Only the thinned cells' counts are drawn, each by inverting the binomial CDF at a
        uniform of ``rng``, in one compiled pass that also drops the zeros it makes
        (``sc_fm.kernels.thin_rows``): numpy's binomial with a varying ``p`` costs ~65 ns a
        value, which made thinning the loader's largest cost."""
        from sc_fm.kernels import thin_rows, thinning_draws

        cfg = self.config
        n = len(indptr) - 1
        thinned = rng.random(n) < cfg.downsample_prob
        fraction = rng.uniform(cfg.downsample_min_fraction, 1.0, n)
        if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
            return indptr, indices, data
        uniforms = rng.random(thinning_draws(indptr, data, thinned))
        out_indptr = np.empty_like(indptr)
        out_indices, out_data = np.empty_like(indices), np.empty_like(data)
        written = thin_rows(indptr, indices, data, thinned, fraction, uniforms, out_indptr, out_indices, out_data)
        return out_indptr, out_indices[:written], out_data[:written]

    def _encode_block(self, indptr, indices, data, conditions, group_values, rng) -> TokenizedCells:
        """``encode_rows`` on validated rows, all at once."""
        cfg = self.config
        n = len(indptr) - 1
        lengths = np.diff(indptr)
        score = self._scores(indptr, indices, data, self._table_rows(group_values, n))
        budget = cfg.max_len - 1 - cfg.n_unexpressed
        eligible = None
        if cfg.context == "sample" and rng is not None:
            picked, _ = random_positions(indptr, rng, limit=budget)
            eligible = np.zeros(len(score), bool)
            eligible[picked] = True
        chosen, counts = descending_positions(indptr, score, eligible, limit=budget)  # by score
        if cfg.scheme == "bin":
            chosen_rows = np.repeat(np.arange(n), counts)
            rank = None  # ascending rank in the row: exact up to float32 ties of the score
            if eligible is None:
                rank = (lengths - 1 + np.cumsum(counts) - counts)[chosen_rows] - np.arange(len(chosen))
            bins = quantile_bins(indptr, np.log1p(score), cfg.n_bins, chosen, chosen_rows, rank)
            kept = np.zeros(len(score), bool)  # the chosen nonzeros in gene (column) order
            kept[chosen] = True
            by_position = _scratch("bins", (len(score),), np.float64)
            by_position[chosen] = bins
            chosen = np.flatnonzero(kept)
            values = by_position[chosen]
        else:
            values = np.log1p(score[chosen])
        genes = indices[chosen]
        if cfg.n_unexpressed:
            extra, extra_kept = sample_unexpressed(indptr, indices, self.vocab.n_genes,
                                                   cfg.n_unexpressed, rng)
            genes, values, counts = _append_per_row(genes, values, counts, extra, extra_kept)
        if cfg.scheme == "bin" and rng is not None:
            order, _ = random_positions(np.concatenate([[0], np.cumsum(counts)]), rng)
            genes, values = genes[order], values[order]
        return self._with_cls(genes, values, counts, self._condition_ids(conditions, n, rng))

    def _scores(self, indptr, indices, data, table_rows) -> np.ndarray:
        """Depth-normalised counts over their gene normalisers (float64, one per nonzero)."""
        lengths = np.diff(indptr)
        totals = np.zeros(len(lengths))
        nonempty = lengths > 0
        if data.size:  # reduceat over non-empty rows only: an empty row would read its neighbour
            starts = indptr[:-1] if nonempty.all() else indptr[:-1][nonempty]
            if data.dtype.kind == "i" or (data.dtype.kind == "u" and data.dtype.itemsize < 8):  # exact
                totals[nonempty] = np.add.reduceat(data, starts, dtype=np.int64)
            else:
                totals[nonempty] = np.add.reduceat(data, starts, dtype=np.float64)
        depth_scale = self.config.target_sum / np.where(nonempty, totals, 1.0)
        score = np.repeat(depth_scale, lengths)  # then (count * depth factor) * 1 / normaliser
        np.multiply(data, score, out=score)
        score *= self._inverse_normalisers(indices, table_rows, lengths)
        return score

    def _inverse_normalisers(self, indices: np.ndarray, table_rows: np.ndarray,
                             lengths: np.ndarray) -> np.ndarray:
        """1 / normaliser of each nonzero's gene in its cell's group."""
        if not len(table_rows) or np.all(table_rows == table_rows[0]):
            return self._inverse_table[table_rows[0] if len(table_rows) else 0][indices]
        return np.take(self._inverse_table, np.repeat(table_rows * self.vocab.n_genes, lengths) + indices)

    def _expressed_csr(self, indptr, indices, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validated CSR with explicit zeros removed."""
        indptr = np.asarray(indptr, np.int64)
        indices = np.asarray(indices)
        data = np.asarray(data)
        if indices.dtype.kind not in "iu":
            raise InputDataError(f"gene indices must be integers, not {indices.dtype}", "encode_rows")
        if len(indices) != len(data) or indptr[-1] != len(data):
            raise InputDataError("CSR arrays disagree (indptr[-1], indices, data lengths)", "encode_rows")
        if indices.size and (indices.min() < 0 or indices.max() >= self.vocab.n_genes):
            raise InputDataError(f"gene index outside the vocabulary of {self.vocab.n_genes} genes",
                                 "encode_rows", "map genes into the tokenizer's vocabulary first")
        if data.size and (data.min() < 0 or (data.dtype.kind == "f" and not np.isfinite(data).all())):
            raise InputDataError("counts must be finite and non-negative", "encode_rows",
                                 "pass raw counts, not log-normalised or scaled values")
        expressed = data > 0
        if expressed.all():
            return indptr, indices, data
        kept = np.concatenate([[0], np.cumsum(expressed)])
        return kept[indptr], indices[expressed], data[expressed]

    def _table_rows(self, group_values, n: int) -> np.ndarray:
        if group_values is None or not self._group_values:
            return np.zeros(n, np.int64)
        if len(group_values) != n:
            raise ValueError(f"{len(group_values)} normaliser group values for {n} cells")
        return _codes(group_values, self._group_index)

    def _condition_ids(self, conditions, n: int, rng) -> np.ndarray:
        keys = self.config.condition_keys
        ids = np.zeros((n, len(keys)), np.int64)
        for j, key in enumerate(keys):
            if key in conditions:
                if len(conditions[key]) != n:
                    raise ValueError(f"conditions[{key!r}] has {len(conditions[key])} values for {n} cells")
                ids[:, j] = _codes(conditions[key], self._condition_index[key])
        if rng is not None and self.config.condition_dropout > 0:
            ids[rng.random(ids.shape) < self.config.condition_dropout] = 0
        return ids

    @staticmethod
    def _with_cls(genes, values, counts, condition_ids) -> TokenizedCells:
        lengths = counts + 1
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(offsets[-1])
        gene_ids = np.full(total, CLS_ID, np.int32)
        token_values = np.full(total, HIDDEN_VALUE, np.float32)
        body = np.ones(total, bool)
        body[offsets[:-1]] = False
        gene_ids[body] = genes + N_SPECIAL
        token_values[body] = values
        return TokenizedCells(gene_ids, token_values, offsets, condition_ids)

    def mask_and_pack(self, cells: TokenizedCells | Sequence, rng: np.random.Generator | None,
                      cell_index: Sequence[int]) -> dict:
        """Masked (``rng`` given) or plain (``rng`` None, for embedding) packed batch."""
        if not isinstance(cells, TokenizedCells):
            cells = TokenizedCells.concat(list(cells))
        if rng is None:
            tokens = unmasked(cells.gene_ids, cells.values)
        else:
            tokens = mask_tokens(cells.gene_ids, cells.values, self.config.mask_mode,
                                 self.config.mask_ratio, self.vocab.n_tokens, rng)
        return pack(cells, tokens, cell_index)


def check_vocabulary(store: CorpusStore, vocab: GeneVocab) -> None:
    """A store's genes must mean the same tokens as the tokenizer's."""
    if store.vocab_hash != vocab.hash:
        raise InputDataError(f"store vocabulary {store.vocab_hash} differs from the tokenizer's "
                             f"{vocab.hash} ({vocab.name})", str(store.path),
                             "use stores prepared with one vocabulary (prepare.vocab) and the tokenizer "
                             "built from them")


def _append_per_row(genes, values, counts, extra, extra_kept):
    """Per row, the selected genes then the unexpressed ones (value 0), row-major and flat."""
    n = len(counts)
    rows = np.concatenate([np.repeat(np.arange(n), counts), np.nonzero(extra_kept)[0]])
    order = np.argsort(rows, kind="stable")
    merged_genes = np.concatenate([genes, extra[extra_kept]])[order]
    merged_values = np.concatenate([values, np.zeros(int(extra_kept.sum()))])[order]
    return merged_genes, merged_values, counts + extra_kept.sum(axis=1)
