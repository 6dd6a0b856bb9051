"""Training-step throughput: sc_fm's packed transformer vs Hugging Face BERT on padded batches.

Both models get the same cells (simulated counts, so lengths vary like real cells: each cell
is ``<cls>`` + its expressed genes in rank order, capped at ``--max-len``), the same 15% of
positions masked, and the same size (layers, width, heads, FFN, vocabulary); each step is
forward + backward + AdamW. sc_fm gets packed batches; BERT (``BertForMaskedLM``, the
Geneformer architecture) gets padded batches with an attention mask, once in random order and
once grouped by length (Geneformer's ``group_by_length``). Throughput counts real tokens only.
The figure is sc_fm tokens/s over the faster BERT's. It also prints sc_fm's MFU
(``sc_fm/train/flops.py``: against the dense bf16 peak on CUDA, the measured fp32 peak on CPU).

    .venv/bin/python benchmarks/model.py --quick
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sc_fm.batch import HIDDEN_VALUE, IGNORE_INDEX
from sc_fm.config import ModelConfig
from sc_fm.model import MaskedGeneTransformer, count_parameters
from sc_fm.model.attention import PackedCells, sdpa_attention
from sc_fm.simulate import AtlasSimulator, AtlasSpec
from sc_fm.train.flops import StepFlops, peak_flops
from sc_fm.vocab import CLS_ID, MASK_ID, N_SPECIAL, PAD_ID

from peers import require_peers  # benchmarks/peers.py, beside this script

MASK_RATIO = 0.15


@dataclass
class Cell:
    gene_ids: np.ndarray  # <cls> then genes by descending count
    values: np.ndarray  # -1 at <cls>, log1p(normalised count) elsewhere
    condition_ids: np.ndarray


def simulate_cells(n_cells: int, n_genes: int, mean_depth: float, max_len: int, seed: int) -> list[Cell]:
    """Cells of a simulated atlas (varied depth and quality) tokenised as ranked genes."""
    sim = AtlasSimulator(AtlasSpec(n_cells=n_cells, n_genes=n_genes, n_studies=4, seed=seed,
                                   mean_depth=mean_depth, empty_fraction=0.0))
    counts, obs, _ = sim.block(0, n_cells)
    dataset_codes = obs["dataset"].astype("category").cat.codes.to_numpy() + 1
    assay_codes = obs["assay"].astype("category").cat.codes.to_numpy() + 1
    cells = []
    for i in range(n_cells):
        row = counts.getrow(i)
        order = np.argsort(-row.data, kind="stable")[: max_len - 1]
        normalised = np.log1p(row.data[order] * 1e4 / max(row.data.sum(), 1))
        cells.append(Cell(np.r_[CLS_ID, N_SPECIAL + row.indices[order]],
                          np.r_[HIDDEN_VALUE, normalised].astype(np.float32),
                          np.array([assay_codes[i], dataset_codes[i]], dtype=np.int64)))
    return cells


def mask_positions(cells: list[Cell], seed: int) -> list[np.ndarray]:
    """The same masked positions for both models: 15% of each cell's genes (never <cls>)."""
    rng = np.random.default_rng(seed)
    return [np.flatnonzero(np.r_[False, rng.random(len(c.gene_ids) - 1) < MASK_RATIO]) for c in cells]


def packed_batch(cells: list[Cell], masks: list[np.ndarray]) -> dict:
    """The sc_fm batch contract: cells back to back, masked genes and values hidden."""
    gene_ids = np.concatenate([c.gene_ids for c in cells])
    values = np.concatenate([c.values for c in cells])
    offsets = np.r_[0, np.cumsum([len(c.gene_ids) for c in cells])]
    masked = np.concatenate([m + o for m, o in zip(masks, offsets)])
    labels = np.full(len(gene_ids), IGNORE_INDEX)
    targets = np.full(len(gene_ids), float(IGNORE_INDEX), np.float32)
    labels[masked], targets[masked] = gene_ids[masked], values[masked]
    gene_ids[masked], values[masked] = MASK_ID, HIDDEN_VALUE
    return {"gene_ids": torch.from_numpy(gene_ids), "values": torch.from_numpy(values),
            "cu_seqlens": torch.from_numpy(offsets.astype(np.int32)),
            "max_seqlen": int(np.diff(offsets).max()),
            "condition_ids": torch.from_numpy(np.stack([c.condition_ids for c in cells])),
            "labels": torch.from_numpy(labels), "target_values": torch.from_numpy(targets)}


def padded_batch(cells: list[Cell], masks: list[np.ndarray]) -> dict:
    """The BERT input: ``[B, L_max]`` ids padded with <pad>, attention mask, MLM labels."""
    width = max(len(c.gene_ids) for c in cells)
    input_ids = np.full((len(cells), width), PAD_ID)
    labels = np.full((len(cells), width), IGNORE_INDEX)
    for row, (cell, masked) in enumerate(zip(cells, masks)):
        input_ids[row, : len(cell.gene_ids)] = cell.gene_ids
        labels[row, masked] = cell.gene_ids[masked]
        input_ids[row, masked] = MASK_ID
    return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy((input_ids != PAD_ID).astype(np.int64))}


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class TrainingRun:
    """One model stepping through its own batches (fwd + bwd + AdamW), timing each step."""

    def __init__(self, model: torch.nn.Module, batches: list[dict], loss_of, device: torch.device):
        self.model, self.batches, self.loss_of, self.device = model.train(), batches, loss_of, device
        self.optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.seconds = 0.0
        self.step(batches[0])  # warm-up, not timed

    def step(self, batch: dict) -> float:
        start = time.perf_counter()
        self.optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self.loss_of(self.model, batch)
        loss.backward()
        self.optimiser.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def race(runs: dict[str, TrainingRun]) -> None:
    """Step the runs in turn, batch by batch, so that they share any load on the machine evenly."""
    for i in range(max(len(run.batches) for run in runs.values())):
        for run in runs.values():
            run.seconds += run.step(run.batches[i])


def attention_layouts(cells: list[Cell], d_head: int, n_heads: int, block_diagonal: bool) -> None:
    """Why ``sdpa`` runs once per cell: fwd+bwd of one attention layer per layout, same q/k/v.

    Timed as single-thread CPU seconds (best of 3), which other load on the machine barely moves.
    """
    lengths = torch.tensor([len(c.gene_ids) for c in cells])
    cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    packed = PackedCells(cu, int(lengths.max()))
    qkv = torch.randn(int(cu[-1]), 3, n_heads, d_head, requires_grad=True)

    def padded_with_key_mask():
        rows, cols = packed.cell_of_token, packed.position_in_cell
        padded = qkv.new_zeros(len(cells), packed.max_seqlen, 3, n_heads, d_head).index_put((rows, cols), qkv)
        q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)
        real_keys = (torch.arange(packed.max_seqlen) < lengths[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=real_keys)
        return out.transpose(1, 2)[rows, cols]

    def block_diagonal_mask():
        same_cell = packed.cell_of_token[:, None] == packed.cell_of_token[None, :]
        q, k, v = qkv.permute(1, 2, 0, 3).unsqueeze(1).unbind(0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=same_cell)[0].transpose(0, 1)

    layouts = {"one SDPA call per cell (sc_fm sdpa)": lambda: sdpa_attention(qkv, packed),
               "padded [B, H, L_max, D] + key mask": padded_with_key_mask}
    if block_diagonal:
        layouts["block-diagonal mask over the pack"] = block_diagonal_mask
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name, attend in layouts.items():
        cpu_seconds = []
        for _ in range(3):
            start = time.thread_time()
            attend().sum().backward()
            cpu_seconds.append(time.thread_time() - start)
        print(f"attention layout: {name:<38} {min(cpu_seconds):7.3f} CPU s fwd+bwd "
              f"({len(cells)} cells, {int(cu[-1])} tokens, 1 thread)")
    torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under ~2 minutes on 2 cores")
    parser.add_argument("--cells", type=int, default=None, help="cells in the pass (default 64; quick 32)")
    parser.add_argument("--batch-cells", type=int, default=None, help="cells per step (default 16; quick 8)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="tokens per cell cap (default 2048; quick 1024)")
    parser.add_argument("--size", default=None, help="model preset (default: small on CPU, base on CUDA)")
    parser.add_argument("--mean-depth", type=float, default=None,
                        help="mean counts per cell (default 3000: median 1,300 genes; quick 1000: 550)")
    parser.add_argument("--n-genes", type=int, default=25_000)
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU peak bf16 TFLOP/s for MFU")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: all cores); 1 is steadier on a busy machine")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    require_peers("model.py", "transformers")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_cells = args.cells or (32 if args.quick else 64)
    mean_depth = args.mean_depth or (1000.0 if args.quick else 3000.0)
    batch_cells = args.batch_cells or (8 if args.quick else 16)
    max_len = args.max_len or (1024 if args.quick else 2048)
    size = args.size or ("base" if device.type == "cuda" else "small")
    torch.manual_seed(args.seed)

    cells = simulate_cells(n_cells, args.n_genes, mean_depth, max_len, args.seed)
    masks = mask_positions(cells, args.seed)
    n_tokens = N_SPECIAL + args.n_genes
    real_tokens = sum(len(c.gene_ids) for c in cells)
    lengths = np.array([len(c.gene_ids) for c in cells])
    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'no GPU'}), "
          f"threads: {torch.get_num_threads()}")
    print(f"cells: {n_cells}, tokens per cell min/median/max: {lengths.min()}/{int(np.median(lengths))}/"
          f"{lengths.max()}, real tokens: {real_tokens}, batch: {batch_cells} cells")

    config = ModelConfig(size=size, mlp="gelu", norm="layernorm", attention="auto", cell_objective="none")
    sc_fm = MaskedGeneTransformer(config, n_tokens, "continuous", 51, [5, 5]).to(device)
    from transformers import BertConfig, BertForMaskedLM

    c = sc_fm.config
    bert = BertForMaskedLM(BertConfig(
        vocab_size=n_tokens, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, intermediate_size=c.d_ff, max_position_embeddings=max_len,
        pad_token_id=PAD_ID, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa")).to(device)
    print(f"model: {size} ({c.n_layers} layers, d={c.d_model}, {c.n_heads} heads, FFN {c.d_ff}, "
          f"vocabulary {n_tokens}); parameters sc_fm {count_parameters(sc_fm):,}, "
          f"BERT {count_parameters(bert):,}")

    order = np.random.default_rng(args.seed).permutation(n_cells)
    by_length = np.argsort(-lengths, kind="stable")
    groups = {name: [idx[i: i + batch_cells] for i in range(0, n_cells, batch_cells)]
              for name, idx in (("random", order), ("length-grouped", by_length))}
    packed = [to_device(packed_batch([cells[i] for i in g], [masks[i] for i in g]), device)
              for g in groups["random"]]
    runs = {"sc_fm packed": TrainingRun(sc_fm, packed, lambda m, b: m(b)["loss"], device)}
    for name, batches_idx in groups.items():
        padded = [to_device(padded_batch([cells[i] for i in g], [masks[i] for i in g]), device)
                  for g in batches_idx]
        slots = sum(b["input_ids"].numel() for b in padded)
        print(f"BERT {name} batches: {slots} slots, {1 - real_tokens / slots:.0%} padding")
        runs[f"BERT padded, {name}"] = TrainingRun(copy.deepcopy(bert), padded,
                                                   lambda m, b: m(**b).loss, device)
    race(runs)
    seconds = {name: run.seconds for name, run in runs.items()}
    for name, secs in seconds.items():
        print(f"{name:<28} {real_tokens / secs:10,.0f} tokens/s  ({secs:.2f} s for {real_tokens} tokens)")

    if device.type == "cpu":
        attention_layouts(cells[:8], c.d_model // c.n_heads, c.n_heads, block_diagonal=not args.quick)
    flops = StepFlops.of(sc_fm).step(packed)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
    if peak:
        print(f"sc_fm MFU = model FLOPs / (time x peak) = {flops:.3e} / ({seconds['sc_fm packed']:.3f} s x "
              f"{peak / 1e12:.2f} TFLOP/s{' measured fp32' if device.type == 'cpu' else ' bf16'}) = "
              f"{flops / seconds['sc_fm packed'] / peak:.1%}")
    else:
        print(f"MFU: peak FLOP/s of {torch.cuda.get_device_name()} unknown; pass --peak-tflops")
    best_bert = min(v for k, v in seconds.items() if k.startswith("BERT"))
    print(f"result: model_train_tokens_per_s ratio={best_bert / seconds['sc_fm packed']:.2f} target=2.0")


if __name__ == "__main__":
    main()
