"""Ingestion: atlases (h5ad, 10x, count tables) -> harmonised, QC'd, sharded corpus store."""

from data_pipelines.merge import merge_stores
from data_pipelines.pipeline import PrepareSummary, prepare
from data_pipelines.sources import SourceSpec

__all__ = ["PrepareSummary", "SourceSpec", "merge_stores", "prepare"]
