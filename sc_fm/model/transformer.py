"""The masked-gene transformer: packed cells in, masked-gene, masked-value and cell-level losses out.

Reading order: embed tokens -> put condition tokens in front of each cell (when the encoder
reads conditions) -> pre-norm blocks -> final norm -> drop the condition tokens -> heads on the
masked tokens -> pool each cell -> the expression decoder (``decoder.py``) on the pooled state. Initialisation (GPT-2 style): every
Linear and Embedding weight ~ N(0, init_std), biases 0, norms 1; the last projection of
each residual branch (attention output, MLP down) ~ N(0, init_std / sqrt(2 * n_layers)) so
that the residual stream's variance does not grow with depth.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sc_fm.batch import (ADVERSARY_LOSS, CONDITION_IDS, CU_SEQLENS, EXPRESSION_COUNTS, EXPRESSION_GENES, EXPRESSION_KEYS,
                         EXPRESSION_LOSS, EXPRESSION_OFFSETS, GENE_IDS, GENE_LOSS, INPUT_KEYS, LABELS, LOSS, MAX_SEQLEN,
                         MIXING_LOSS, TARGET_KEYS, TARGET_VALUES, VALUE_LOSS, VALUES)
from sc_fm.config import ModelConfig, resolve_model
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.model.adversary import ConditionAdversary
from sc_fm.model.attention import PackedCells
from sc_fm.model.blocks import Block, make_norm
from sc_fm.model.conditions import ConditionEmbedding, ConditionedPack, prepend_conditions
from sc_fm.model.decoder import ExpressionDecoder, dense_counts
from sc_fm.model.embeddings import TokenEmbedding
from sc_fm.model.heads import GeneHead, ValueHead, pool_cells
from sc_fm.model.mixing import CrossBatchNeighbours
from sc_fm.model.io import load_weights, read_model_config, write_model

VALUE_ENCODINGS = ("bin", "continuous")


def _require(batch: dict, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in batch]
    if missing:
        raise InputDataError(f"the batch has no {', '.join(missing)}", "model input",
                             "build batches with CellTokenizer.mask_and_pack (with an rng for "
                             "training)")


class MaskedGeneTransformer(nn.Module):
    """Pre-norm transformer encoder over packed cells with gene, value and cell-embedding heads."""

    def __init__(self, config: ModelConfig, n_tokens: int, value_encoding: str, n_bins: int,
                 condition_sizes: list[int]):
        super().__init__()
        if value_encoding not in VALUE_ENCODINGS:
            raise ConfigError(f"value_encoding {value_encoding!r} is not one of {VALUE_ENCODINGS}",
                              "model inputs", "use the tokenizer's model_inputs['value_encoding']")
        config = resolve_model(config)
        self.config = config
        self.init_args = {"n_tokens": n_tokens, "value_encoding": value_encoding, "n_bins": n_bins,
                          "condition_sizes": list(condition_sizes)}
        positional = (value_encoding == "continuous") if config.positional is None else config.positional
        d = config.d_model
        self.embedding = TokenEmbedding(n_tokens, d, value_encoding, n_bins, positional)
        # batches always carry the condition ids; the encoder reads them only when asked to
        self.n_condition_keys = len(condition_sizes)
        self.conditions = ConditionEmbedding(list(condition_sizes) if config.encoder_conditions else [], d)
        self.blocks = nn.ModuleList(
            Block(d, config.n_heads, config.d_ff, config.norm, config.mlp, config.attention,
                  config.dropout) for _ in range(config.n_layers))
        self.norm = make_norm(config.norm, d)
        self.gene_head = GeneHead(d, n_tokens, self.embedding.gene.weight if config.tie_embeddings else None)
        self.value_head = ValueHead(d, value_encoding, n_bins)
        self.decoder = (None if config.cell_objective == "none" else
                        ExpressionDecoder(d, n_tokens, list(condition_sizes), config.cell_objective,
                                          config.cell_latent))
        self.adversary = (ConditionAdversary(self.embedding_dim, list(condition_sizes), config.cell_adversary_lr_scale)
                          if self.decoder is not None and config.cell_adversary_weight > 0 else None)
        self.mixing = (CrossBatchNeighbours(self.embedding_dim, len(condition_sizes), config.cell_mixing_bank,
                                            config.cell_mixing_k) if config.cell_mixing_weight > 0 else None)
        self._init_weights()
        if self.decoder is not None:
            self.decoder.reset_parameters()

    def _init_weights(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for residual_out in (block.attn.out, block.mlp.down):
                nn.init.normal_(residual_out.weight, std=std / math.sqrt(2 * self.config.n_layers))

    def _encode(self, batch: dict) -> tuple[torch.Tensor, PackedCells]:
        """Final hidden states of the batch's own tokens ``[T, d]`` and their layout."""
        _require(batch, INPUT_KEYS)
        n_condition_columns = batch[CONDITION_IDS].shape[1]
        if n_condition_columns != self.n_condition_keys:
            raise InputDataError(f"the batch has {n_condition_columns} condition columns, the model "
                                 f"{self.n_condition_keys}", "model input",
                                 "tokenize with the tokenizer saved beside the model")
        cells = PackedCells(batch[CU_SEQLENS], int(batch[MAX_SEQLEN]))
        x = self.embedding(batch[GENE_IDS], batch[VALUES], cells.position_in_cell)
        if self.conditions.n_keys:
            pack = prepend_conditions(x, self.conditions(batch[CONDITION_IDS]), cells)
        else:
            pack = ConditionedPack(x, cells, torch.arange(len(x), device=x.device))
        h = pack.x
        use_checkpoint = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_checkpoint:
                h = checkpoint(block, h, pack.cells, use_reentrant=False)
            else:
                h = block(h, pack.cells)
        return self.norm(h[pack.token_rows]), cells

    def hidden_states(self, batch: dict) -> torch.Tensor:
        """Per-token output ``[T, d]`` aligned with ``batch[GENE_IDS]`` (condition tokens removed)."""
        return self._encode(batch)[0]

    @property
    def _embeds_latent(self) -> bool:
        return self.config.cell_objective != "none" and self.config.cell_embedding == "latent"

    @property
    def embedding_dim(self) -> int:
        """Width of a cell embedding: the pooled state, or the decoder's bottleneck (``cell_embedding``)."""
        return self.config.cell_latent if self._embeds_latent else self.config.d_model

    def _cell_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.decoder.mean(pooled) if self._embeds_latent else pooled

    def pool(self, batch: dict) -> torch.Tensor:
        """Each cell's pooled final state ``[B, d_model]`` (``config.pooling``), before any bottleneck:
        what task heads (fine-tuning) read. Unmasked batches are fine."""
        hidden, cells = self._encode(batch)
        return pool_cells(hidden, cells.cu_seqlens, cells.cell_of_token, self.config.pooling)

    def embed(self, batch: dict) -> torch.Tensor:
        """Cell embeddings ``[B, embedding_dim]``: the pooled state or, with ``cell_embedding:
        latent``, the cell objective's bottleneck mean (as scVI's latent mean); unmasked batches are fine.

        Gradient mode is the caller's: wrap in ``torch.inference_mode()`` for pure inference.
        """
        return self._cell_embedding(self.pool(batch))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Losses on the masked positions of a training batch, the cell-level loss, and the cell
        embeddings."""
        _require(batch, TARGET_KEYS)
        hidden, cells = self._encode(batch)
        gene_loss = self.gene_head.loss(hidden, batch[LABELS])
        value_loss = self.value_head.loss(hidden, batch[TARGET_VALUES])
        pooled = pool_cells(hidden, cells.cu_seqlens, cells.cell_of_token, self.config.pooling)
        loss = self.config.token_loss_weight * (gene_loss + value_loss)
        expression_loss = adversary_loss = mixing_loss = gene_loss.new_zeros(())
        embedding = self._cell_embedding(pooled)
        if self.decoder is not None:
            _require(batch, EXPRESSION_KEYS)
            counts = dense_counts(batch[EXPRESSION_OFFSETS], batch[EXPRESSION_GENES], batch[EXPRESSION_COUNTS],
                                  self.init_args["n_tokens"])
            expression_loss = self.decoder.loss(pooled, batch[CONDITION_IDS], counts, self.config.cell_kl_weight)
            loss = loss + self.config.cell_loss_weight * expression_loss
        if self.adversary is not None:
            adversary_loss, added = self.adversary.loss(embedding, batch[CONDITION_IDS],
                                                        self.config.cell_adversary_weight,
                                                        self.config.cell_adversary)
            loss = loss + added
        if self.mixing is not None and self.training:
            mixing_loss = self.mixing.loss(embedding, batch[CONDITION_IDS])
            loss = loss + self.config.cell_mixing_weight * mixing_loss
        return {LOSS: loss, GENE_LOSS: gene_loss, VALUE_LOSS: value_loss, EXPRESSION_LOSS: expression_loss,
                ADVERSARY_LOSS: adversary_loss, MIXING_LOSS: mixing_loss, "cell_embedding": embedding}

    def grow_conditions(self, condition_sizes: list[int]) -> None:
        """More categories per condition key (new batches of an adaptation); known rows keep."""
        if self.conditions.n_keys:
            self.conditions.grow(list(condition_sizes))
        if self.decoder is not None:
            self.decoder.grow(list(condition_sizes))
        if self.adversary is not None:
            self.adversary.grow(list(condition_sizes))
        self.init_args["condition_sizes"] = list(condition_sizes)

    def start_from(self, other: "MaskedGeneTransformer") -> None:
        """Take ``other``'s weights (adaptation). A condition adversary on one side only is allowed:
        switched on for the adaptation, it keeps this model's seeded initialisation."""
        try:
            missing, unexpected = self.load_state_dict(other.state_dict(), strict=False)
        except RuntimeError as err:  # a shape differs
            raise ConfigError(f"the starting model's weights do not fit this model ({str(err)[:200]})",
                              "model config", "adapt with the checkpoint's own model settings") from err
        stray = [key for key in (*missing, *unexpected) if not key.startswith("adversary.")]
        if stray:
            raise ConfigError(f"the starting model's weights do not fit this model ({', '.join(stray[:3])})",
                              "model config", "adapt with the checkpoint's own model settings")

    def save_pretrained(self, directory: str | Path, vocab_hash: str | None = None) -> None:
        """Weights and config, for ``from_pretrained`` (``sc_fm.Pretrained`` adds the tokenizer
        and records its vocabulary hash)."""
        write_model(self, directory, vocab_hash)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "MaskedGeneTransformer":
        """The model saved by ``save_pretrained``, on the CPU, in eval mode."""
        config, init_args = read_model_config(directory)
        model = cls(config, **init_args)
        load_weights(model, directory)
        return model.eval()
