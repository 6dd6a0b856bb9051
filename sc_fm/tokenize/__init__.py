"""Cells -> tokens: normalisation, rank/bin encodings, condition tokens, masking, packing."""

from sc_fm.tokenize.cells import TokenizedCell, TokenizedCells
from sc_fm.tokenize.packing import to_padded, unpack
from sc_fm.tokenize.tokenizer import CellTokenizer, check_vocabulary

__all__ = ["CellTokenizer", "TokenizedCell", "TokenizedCells", "check_vocabulary", "to_padded", "unpack"]
