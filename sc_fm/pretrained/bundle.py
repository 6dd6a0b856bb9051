"""``Pretrained``: a model with the tokenizer (and so the vocabulary) it was trained with.

The user-facing object, as scvi-tools puts its model class over its module: saved once and
loaded once, and the one way every command (``embed``, ``benchmark``, ``finetune``, ``explain``)
reaches a checkpoint, with one input contract (``InputSettings``); the verbs (``adapt``,
``explain``, ``finetune``) are free functions that take it. ``embed`` follows scanpy's
habit: the result goes into ``adata.obsm`` in place and is also returned. The directory holds
the model's own files (``model.safetensors``, ``model_config.json``) and ``tokenizer/``
(config, normalisers, ``vocab.tsv``), and after ``scfm adapt`` the embedding's axes
(``axes.py``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from sc_fm.config import InputSettings
from sc_fm.errors import InputDataError
from sc_fm.model import MaskedGeneTransformer
from sc_fm.model.io import START_FILE, load_weights, recorded_vocab_hash, required_file, write_weights
from sc_fm.pretrained.axes import EmbeddingAxes
from sc_fm.pretrained.batches import embed_cells
from sc_fm.pretrained.cells import InputCells
from sc_fm.pretrained.genes import GeneMapping, map_genes
from sc_fm.pretrained.inputs import require_obs_column
from sc_fm.rundir import run_config_of
from sc_fm.tokenize import CellTokenizer
from sc_fm.vocab import GeneVocab

EMBEDDING_KEY = "X_scfm"
TOKENIZER_DIR = "tokenizer"


class Pretrained:
    """``model`` (a ``MaskedGeneTransformer``) + ``tokenizer``; ``path`` where it was loaded from;
    ``start``: the untrained model its training began from (read from ``path`` when not given);
    ``axes``: the principal axes every embedding is read on (adapted checkpoints; ``axes.py``)."""

    def __init__(self, model: MaskedGeneTransformer, tokenizer: CellTokenizer, path: Path | None = None,
                 start: MaskedGeneTransformer | None = None, axes: EmbeddingAxes | None = None):
        n_tokens = model.init_args["n_tokens"]
        if tokenizer.vocab.n_tokens != n_tokens or tokenizer.model_inputs != model.init_args:
            raise InputDataError(f"the tokenizer ({tokenizer.vocab.n_tokens} tokens, {tokenizer.model_inputs}) "
                                 f"does not fit the model ({model.init_args})", str(path or "Pretrained"),
                                 "use a directory written by one pretraining run (RUN_DIR/final)")
        if axes is not None and len(axes.mean) != model.embedding_dim:
            raise InputDataError(f"the embedding's axes were fitted on {len(axes.mean)}-wide embeddings, the "
                                 f"model's are {model.embedding_dim} wide", str(path or "Pretrained"),
                                 "keep the embedding_axes.safetensors that scfm adapt saved with the weights")
        self.model = model
        self.axes = axes
        self.tokenizer = tokenizer
        self.path = path
        self._start = start

    @property
    def vocab(self) -> GeneVocab:
        return self.tokenizer.vocab

    @property
    def name(self) -> str:
        """Display name in reports: ``sc_fm-<size>``."""
        return f"sc_fm-{self.model.config.size}"

    @property
    def embedding_dim(self) -> int:
        """Width of what ``embed`` returns: the axes' count where the checkpoint has them."""
        return self.axes.n_axes if self.axes is not None else self.model.embedding_dim

    @property
    def run_config(self) -> Path | None:
        """The run config saved beside this checkpoint (its ``config.yaml``), if any: the settings
        adaptation continues with and the pretraining rate fine-tuning starts from."""
        return run_config_of(self.path) if self.path is not None else None

    @property
    def has_start(self) -> bool:
        return self._start is not None or (self.path is not None and (self.path / START_FILE).is_file())

    def start_model(self) -> MaskedGeneTransformer:
        """The exact weights the first optimiser step of this model's pretraining was applied to
        (its gene start included, before any training), saved by the trainer in every checkpoint
        directory; an adapted checkpoint carries its base's. Eval mode, CPU."""
        if self._start is None:
            if not self.has_start:
                raise InputDataError(f"no saved start ({START_FILE})", str(self.path or "Pretrained"),
                                     "pretrain again with this version of sc_fm, which saves the start "
                                     "beside the weights of every checkpoint")
            start = MaskedGeneTransformer(self.model.config, **self.model.init_args)
            load_weights(start, self.path, START_FILE)
            self._start = start.eval()
        return self._start

    def same_start(self) -> "Pretrained":
        """This checkpoint before pretraining (``start_model``) with the same tokenizer: the honest
        control, which shows what pretraining added to its start."""
        start = copy.deepcopy(self.start_model()).eval()
        return Pretrained(start, self.tokenizer, start=self.start_model())

    def untrained(self, seed: int) -> "Pretrained":
        """The same architecture and tokenizer at random initialisation (seeded): a random gene
        table instead of the checkpoint's own start, and the start of a from-scratch control."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MaskedGeneTransformer(self.model.config, **self.model.init_args).eval()
        return Pretrained(model, self.tokenizer)

    # ---- persistence ---------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> "Pretrained":
        """A run's ``final/``, a ``checkpoints/step_N/`` or any directory ``save`` wrote (CPU, eval mode)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise InputDataError(f"{directory} is not a directory", str(directory),
                                 "pass a run's final/ or checkpoints/step_N/ directory")
        model = MaskedGeneTransformer.from_pretrained(directory)
        tokenizer = CellTokenizer.load(required_file(directory, TOKENIZER_DIR))
        recorded = recorded_vocab_hash(directory)
        if recorded is not None and recorded != tokenizer.vocab.hash:
            raise InputDataError(f"the model was trained on vocabulary {recorded[:12]}, its tokenizer/ holds "
                                 f"{tokenizer.vocab.hash[:12]}: the gene rows would mean other genes",
                                 str(directory), "restore the tokenizer/ folder saved with this model")
        return cls(model, tokenizer, directory, axes=EmbeddingAxes.load(directory))

    def save(self, directory: str | Path) -> None:
        """Weights, model config, the start where known, the embedding's axes where fitted, and the
        tokenizer (with its vocabulary) into ``directory``."""
        self.model.save_pretrained(directory, self.tokenizer.vocab.hash)
        if self.axes is not None:
            self.axes.save(directory)
        if self.has_start:
            write_weights(self.start_model(), Path(directory) / START_FILE)
        self.tokenizer.save(Path(directory) / TOKENIZER_DIR)

    # ---- AnnData in ----------------------------------------------------------------------
    def gene_mapping(self, adata, inputs: InputSettings | None = None, where: str = "input") -> GeneMapping:
        """How ``adata.var_names`` map onto the vocabulary; refused below ``inputs``' floors
        (``min_gene_overlap``, ``min_genes_mapped``)."""
        inputs = inputs or InputSettings()
        return map_genes(adata.var_names, self.vocab, inputs.min_gene_overlap, inputs.min_genes_mapped, where)

    def input_cells(self, adata, inputs: InputSettings | None = None, where: str = "input",
                    panel: np.ndarray | None = None) -> InputCells:
        """``adata``'s cells as this checkpoint tokenises them under ``inputs`` (its batch column,
        fixed conditions, gene floors and block size), every setting checked before any work;
        ``panel``: vocabulary indices, the only genes the cells are read on (``GeneMapping.keeping``)."""
        inputs = inputs or InputSettings()
        require_obs_column(adata, inputs.batch_key, "batch_key", where)
        mapping = self.gene_mapping(adata, inputs, where)
        if panel is not None:
            mapping = mapping.keeping(panel)
        return InputCells.build(adata, mapping, self.tokenizer, inputs, where)

    def embed(self, adata, inputs: InputSettings | str | None = None, key_added: str | None = EMBEDDING_KEY,
              progress: bool = True, where: str = "input") -> np.ndarray:
        """``[n_obs, embedding_dim]`` float32 cell embeddings (on the axes where the checkpoint has
        them), rows in order, deterministic; written to
        ``adata.obsm[key_added]`` unless ``key_added`` is None. ``inputs``: the ``InputSettings``
        (a string is the batch column alone); its ``conditions`` fix condition tokens for every
        cell (``{"assay": "10x"}``), keys left out are dropped."""
        inputs = InputSettings(batch_key=inputs) if isinstance(inputs, str) else inputs or InputSettings()
        embedding = embed_cells(self.model, self.input_cells(adata, inputs, where), inputs.batch_cells, progress)
        if self.axes is not None:
            embedding = self.axes.apply(embedding)
        if key_added is not None:
            adata.obsm[key_added] = embedding
        return embedding
