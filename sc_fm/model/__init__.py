"""The masked-gene transformer: packed cells in, masked-gene/value losses and cell embeddings out."""

from sc_fm.model.summary import count_parameters, parameters_by_component, size_table
from sc_fm.model.transformer import MaskedGeneTransformer

__all__ = ["MaskedGeneTransformer", "count_parameters", "parameters_by_component", "size_table"]
