"""``Pretrained``: model + tokenizer + vocabulary as one object; load, save, the input contract
(``InputSettings`` -> ``InputCells``) and embed on AnnData."""

from sc_fm.pretrained.batches import embed_cells, embed_tokens, unmasked_batches
from sc_fm.pretrained.bundle import EMBEDDING_KEY, Pretrained
from sc_fm.pretrained.cells import InputCells
from sc_fm.pretrained.genes import GeneMapping, map_genes
from sc_fm.pretrained.h5ad import embed_h5ad

__all__ = ["EMBEDDING_KEY", "GeneMapping", "InputCells", "Pretrained", "embed_cells", "embed_h5ad", "embed_tokens",
           "map_genes", "unmasked_batches"]
