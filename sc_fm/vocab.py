"""Gene vocabulary: Ensembl IDs as keys, symbols as aliases, special tokens, a version hash.

Token ids are ``[specials..., genes...]`` so a gene's token is ``N_SPECIAL + gene_index``. The
hash covers the ordered gene IDs and specials, so a store and a checkpoint agree on token
meaning exactly when their hashes agree.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from sc_fm.errors import InputDataError

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<cls>", "<mask>")
PAD_ID, CLS_ID, MASK_ID = 0, 1, 2
N_SPECIAL = len(SPECIAL_TOKENS)

DEFAULT_VOCAB_FILE = Path(__file__).resolve().parent / "resources" / "vocab" / "gencode_v44_human.tsv.gz"
MITO_PREFIX = "MT-"

_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d{11})\.\d+(_PAR_Y)?$")


def strip_version(gene_id: str) -> str:
    """``ENSG00000141510.17`` -> ``ENSG00000141510``; other strings unchanged."""
    match = _ENSEMBL_VERSION.match(gene_id.strip())
    return match.group(1) if match else gene_id.strip()


def is_ensembl_id(gene_id: str) -> bool:
    return bool(re.match(r"^ENS[A-Z]*G\d{11}$", gene_id))


@dataclass
class GeneVocab:
    """An ordered gene list; ``gene_ids[i]`` has token ``N_SPECIAL + i``."""

    gene_ids: list[str]
    symbols: list[str] = field(default_factory=list)
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.symbols or self.symbols == self.gene_ids:
            # IDs only (a corpus vocabulary, or one saved before symbols were kept): the shipped
            # table's symbols, so that symbol-named inputs map to it and reports name genes
            known = shipped_symbols()
            self.symbols = [known.get(g, g) for g in self.gene_ids]
        if len(self.symbols) != len(self.gene_ids):
            raise InputDataError("vocabulary symbols and gene IDs differ in length")
        self._index = {g: i for i, g in enumerate(self.gene_ids)}
        if len(self._index) != len(self.gene_ids):
            raise InputDataError("vocabulary has duplicated gene IDs", self.name,
                                 "deduplicate the gene ID column of the vocabulary file")
        self._symbol_index: dict[str, int] = {}
        ambiguous: set[str] = set()
        for i, sym in enumerate(self.symbols):
            key = sym.upper()
            if key in self._symbol_index:
                ambiguous.add(key)
            self._symbol_index.setdefault(key, i)
        for key in ambiguous:  # a symbol shared by several IDs cannot be mapped safely
            del self._symbol_index[key]

    @property
    def n_genes(self) -> int:
        return len(self.gene_ids)

    @property
    def n_tokens(self) -> int:
        return N_SPECIAL + len(self.gene_ids)

    @property
    def hash(self) -> str:
        digest = hashlib.sha256("\n".join((*SPECIAL_TOKENS, *self.gene_ids)).encode())
        return digest.hexdigest()[:16]

    def lookup(self, names: list[str] | np.ndarray) -> np.ndarray:
        """Vocabulary index of each name (Ensembl ID with or without version, or symbol); -1 if unknown."""
        out = np.full(len(names), -1, dtype=np.int64)
        for j, name in enumerate(names):
            key = str(name).strip()
            if "." in key:  # the regex only where a version suffix can be
                key = strip_version(key)
            idx = self._index.get(key)
            if idx is None:
                idx = self._symbol_index.get(key.upper())
            if idx is not None:
                out[j] = idx
        return out

    def mito_mask(self) -> np.ndarray:
        """Which genes are mitochondrially encoded (symbol ``MT-...``), for the QC fraction."""
        return np.array([s.upper().startswith(MITO_PREFIX) for s in self.symbols], dtype=bool)

    def save(self, path: str | Path) -> None:
        """Write a two-column TSV (``gene_id``, ``symbol``) with the name in a header comment."""
        lines = [f"# sc_fm vocabulary name={self.name} hash={self.hash}", "gene_id\tsymbol"]
        lines += [f"{g}\t{s}" for g, s in zip(self.gene_ids, self.symbols)]
        Path(path).write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "GeneVocab":
        """Read a TSV/CSV (optionally gzipped) with a gene-ID column and optionally a symbol column."""
        path = Path(path)
        if not path.is_file():
            raise InputDataError(f"vocabulary file {path} does not exist", str(path),
                                 "pass an existing vocabulary TSV (gene_id, symbol)")
        plain = path.with_suffix("") if path.suffix == ".gz" else path
        name = plain.stem
        ids: list[str] = []
        syms: list[str] = []
        sep = "," if plain.suffix == ".csv" else "\t"
        header_seen = False
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for line in text.splitlines():
            if line.startswith("#"):
                found = re.search(r"name=(\S+)", line)
                name = found.group(1) if found else name
                continue
            if not line.strip():
                continue
            cols = line.split(sep)
            if not header_seen:
                header_seen = True
                if not is_ensembl_id(strip_version(cols[0])):
                    continue  # a header row
            ids.append(strip_version(cols[0]))
            syms.append(cols[1].strip() if len(cols) > 1 and cols[1].strip() else ids[-1])
        if not ids:
            raise InputDataError("vocabulary file lists no genes", str(path),
                                 "write one gene per line: gene_id<TAB>symbol")
        return cls(ids, syms, name=name)


@lru_cache(maxsize=1)
def shipped_symbols() -> dict[str, str]:
    """Ensembl ID -> symbol of the shipped GENCODE v44 table (IDs without a name left out)."""
    known = {}
    for line in gzip.decompress(DEFAULT_VOCAB_FILE.read_bytes()).decode().splitlines():
        gene_id, _, symbol = line.partition("\t")
        if symbol and symbol != gene_id and is_ensembl_id(gene_id):
            known[gene_id] = symbol
    return known


@lru_cache(maxsize=1)
def default_vocab() -> GeneVocab:
    """The shipped human vocabulary: GENCODE v44 Ensembl IDs with their symbols."""
    return GeneVocab.load(DEFAULT_VOCAB_FILE)
