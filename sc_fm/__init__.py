"""sc_fm: single-cell foundation-model pretraining.

Atlases go into a sharded Zarr corpus (``scfm prepare``), stream through a batch-aware
tokeniser into a masked-gene transformer trained under DeepSpeed (``scfm pretrain``), and
come out as embeddings checked against scVI and PCA baselines (``scfm benchmark``).
"""

from sc_fm.threads import bound_openmp_spin

# Before anything loads torch, whose OpenMP runtime reads its spin count once (sc_fm/threads.py).
bound_openmp_spin()

__version__ = "0.1.0"
