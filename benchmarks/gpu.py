"""The prepared GPU check: attention parity, then ``base`` under DeepSpeed ZeRO-2 bf16, in minutes.

Runs on a GPU machine that has only Python, a CUDA build of PyTorch and Triton, and no
network: everything else arrives as wheels (docs/train.md, *The GPU check*, lists them and
the commands that fetch them). What is missing is said first, with the wheel that brings it.

1. Parity: every fast attention backend present (``varlen``: PyTorch's FlashAttention-2,
   ``flash``: flash-attn, ``sdpa``) against the ``math`` reference in fp32, on packed bf16
   cells of varied length, forward output and q/k/v gradients.
2. Training: ``--steps`` (30) steps of ``base`` under DeepSpeed ZeRO-2 in bf16 on packed
   batches of simulated lengths: tokens/s, cells/s, peak memory, MFU against the device's
   dense bf16 peak (``sc_fm/train/flops.py``), and a profile of two steps split into matmuls,
   attention, optimizer and the rest (element-wise, norms, copies).
3. The same with activation checkpointing.

``--cpu`` runs the same code on the CPU with SDPA, the tiny model and fp32 in a few seconds
(the test suite runs it), so the script is known to work before it meets a GPU. Ends with
``result:`` lines (MFU target 0.45 at ``base``); exits 1 when a parity check fails.

    python benchmarks/gpu.py            # on the GPU machine
    python benchmarks/gpu.py --cpu      # anywhere
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, when sc_fm is not installed

# module -> the wheel that brings it (docs/train.md: "The GPU check" lists how to fetch each)
NEEDED = {"torch": "torch (preinstalled, CUDA build)", "numpy": "numpy", "yaml": "PyYAML",
          "safetensors": "safetensors", "sc_fm": "sc_fm (pip wheel --no-deps .)"}
OPTIONAL = {"deepspeed": "deepspeed (pip wheel --no-deps deepspeed) and its dependencies",
            "flash_attn": "flash-attn (a wheel built for this torch and CUDA; optional: varlen needs none)",
            "triton": "triton (preinstalled with CUDA torch; torch.compile on GPU needs it)"}
MFU_TARGET = 0.45
CHECKPOINTED_MFU_TARGET = round(MFU_TARGET * 3 / 4, 2)  # recomputing the forward: 4/3 the work, uncounted
PARITY_TOLERANCE = {"cuda": 3e-2, "cpu": 1e-4}  # bf16 vs fp32 reference; fp32 vs fp32


def missing_modules() -> tuple[list[str], list[str]]:
    """(required, optional) wheels whose modules do not import here."""
    def absent(names: dict[str, str]) -> list[str]:
        out = []
        for module, wheel in names.items():
            try:
                importlib.import_module(module)
            except ImportError as err:
                out.append(f"{module}: carry {wheel} ({err})")
        return out
    return absent(NEEDED), absent(OPTIONAL)


def report_environment(cpu: bool) -> tuple[bool, bool]:
    """Print what is present and missing; returns (can run at all, DeepSpeed present)."""
    import torch

    required, optional = missing_modules()
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA build: {torch.version.cuda}, "
          f"CUDA available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        print(f"device: {torch.cuda.get_device_name()} ({memory:.0f} GiB)")
    for line in required:
        print(f"MISSING (required) {line}")
    for line in optional:
        print(f"missing (optional) {line}")
    if not cpu and not torch.cuda.is_available():
        print("MISSING: a CUDA device (torch.cuda.is_available() is False); run with --cpu for the CPU path")
        return False, False
    return not required, not any(line.startswith("deepspeed") for line in optional)


def parity(device, dtype, max_len: int) -> dict[str, float]:
    """Max abs error of each fast backend vs the fp32 math reference: output and q/k/v gradients."""
    import torch

    from sc_fm.model.attention import BACKENDS, PackedCells, _flash_varlen, _torch_varlen

    lengths = [min(n, max_len) for n in (1, 7, 300, 1024, 64, 513, 2048, 130)]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    cells = PackedCells(cu, max(lengths))
    generator = torch.Generator(device="cpu").manual_seed(0)
    qkv = torch.randn(int(cu[-1]), 3, 8, 64, generator=generator).to(device)
    grad_out = torch.randn(int(cu[-1]), 8, 64, generator=generator).to(device)

    def run(backend: str, tensor_dtype) -> tuple:
        x = qkv.to(tensor_dtype).requires_grad_(True)
        out = BACKENDS[backend](x, cells, 0.0)
        out.backward(grad_out.to(tensor_dtype))
        return out.detach().float(), x.grad.float()

    reference = run("math", torch.float32)
    names = ["sdpa"]
    if device.type == "cuda":
        present = {"varlen": (_torch_varlen(), "PyTorch >= 2.10 needed"),
                   "flash": (_flash_varlen(), "flash-attn not installed")}
        for name, (function, why) in present.items():
            if function is None:
                print(f"parity: {name} not available here ({why})")
        names = [name for name, (function, _) in present.items() if function is not None] + names
    errors = {}
    for name in names:
        out, grad = run(name, dtype)
        errors[name] = max(float((out - reference[0]).abs().max()), float((grad - reference[1]).abs().max()))
        print(f"parity: {name:<6} vs math (fp32), {sum(lengths)} packed tokens in {len(lengths)} cells, "
              f"{dtype}: "
              f"max abs error {errors[name]:.2e} (output and q/k/v gradients)")
    return errors


def synthetic_batch(n_cells: int, max_len: int, n_tokens: int, n_conditions: int, device, seed: int,
                    full: bool = False) -> dict:
    """A packed training batch of the model contract: log-normal cell lengths (median ~ max_len / 2)
    or, ``full``, every cell ``max_len`` long, genes distinct within a cell, 15% masked, counts for
    the cell-level objective."""
    import torch

    from sc_fm.batch import (EXPRESSION_COUNTS, EXPRESSION_GENES, EXPRESSION_OFFSETS, HIDDEN_VALUE,
                             IGNORE_INDEX)
    from sc_fm.vocab import CLS_ID, MASK_ID, N_SPECIAL

    g = torch.Generator().manual_seed(seed)
    lengths = (torch.randn(n_cells, generator=g) * 0.5 + torch.log(torch.tensor(max_len / 2))).exp()
    lengths = torch.full_like(lengths, max_len).long() if full else lengths.clamp(16, max_len).long()
    genes = [torch.randperm(n_tokens - N_SPECIAL, generator=g)[: int(n) - 1] + N_SPECIAL for n in lengths]
    gene_ids = torch.cat([torch.cat([torch.tensor([CLS_ID]), x]) for x in genes])
    values = torch.rand(len(gene_ids), generator=g) * 4
    values[torch.cat([torch.tensor([0]), lengths.cumsum(0)[:-1]])] = HIDDEN_VALUE
    masked = (torch.rand(len(gene_ids), generator=g) < 0.15) & (gene_ids >= N_SPECIAL)
    labels = torch.where(masked, gene_ids, IGNORE_INDEX)
    targets = torch.where(masked, values, float(IGNORE_INDEX))
    cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    batch = {"gene_ids": torch.where(masked, MASK_ID, gene_ids),
             "values": torch.where(masked, HIDDEN_VALUE, values),
             "cu_seqlens": cu, "max_seqlen": int(lengths.max()),
             "condition_ids": torch.randint(1, 3, (n_cells, n_conditions), generator=g),
             "labels": labels, "target_values": targets, "cell_index": torch.arange(n_cells),
             EXPRESSION_OFFSETS: torch.cat([torch.zeros(1, dtype=torch.long), (lengths - 1).cumsum(0)]),
             EXPRESSION_GENES: torch.cat(genes),
             EXPRESSION_COUNTS: torch.randint(1, 20, (int((lengths - 1).sum()),), generator=g).float()}
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


CATEGORIES = (("attention", ("attention", "attn", "flash", "varlen")),
              ("optimizer", ("adam", "_foreach", "optimizer")),
              ("matmul", ("mm", "matmul", "linear", "gemm", "addmm", "bmm", "cutlass", "sm90", "sm80")))


def breakdown(events, device_type: str) -> dict[str, float]:
    """Self time of the profiled ops, by category (matched on the op or kernel name)."""
    totals = {name: 0.0 for name, _ in CATEGORIES} | {"other (element-wise/norms/copies)": 0.0}
    for event in events:
        seconds = (event.self_device_time_total if device_type == "cuda" else event.self_cpu_time_total) / 1e6
        name = event.key.lower()
        category = next((c for c, keys in CATEGORIES if any(k in name for k in keys)),
                        "other (element-wise/norms/copies)")
        totals[category] += seconds
    return totals


def train(size: str, steps: int, cells: int, max_len: int, device, checkpointing: bool, use_deepspeed: bool,
          compile_model: bool) -> dict[str, float]:
    """``steps`` optimizer steps of ``size``; rates after two warm-up steps, then a profiled pair."""
    import torch

    from sc_fm.config import ModelConfig, TrainConfig
    from sc_fm.model import MaskedGeneTransformer
    from sc_fm.train.deepspeed_config import build_deepspeed_config, load_zero_settings
    from sc_fm.train.distributed import DistEnv, init_process_group
    from sc_fm.train.engines import DeepSpeedEngine, PlainEngine
    from sc_fm.train.flops import StepFlops, peak_flops
    from sc_fm.vocab import N_SPECIAL

    precision = "bf16" if device.type == "cuda" else "fp32"
    n_tokens, conditions = N_SPECIAL + 25_000, [6, 12]
    torch.manual_seed(0)
    config = ModelConfig(size=size, activation_checkpointing=checkpointing, attention="auto")
    model = MaskedGeneTransformer(config, n_tokens, "continuous", 51, conditions)
    if compile_model:
        for block in model.blocks:
            block.compile()
    train_cfg = TrainConfig(max_steps=steps + 4, global_batch_cells=cells, micro_batch_cells=cells,
                            warmup_steps=2, engine="deepspeed" if use_deepspeed else "plain")
    if use_deepspeed:
        init_process_group(DistEnv(), device)
        ds_config = build_deepspeed_config(load_zero_settings("zero2"), train_cfg, 1)
        engine = DeepSpeedEngine(model, train_cfg, device, precision, ds_config)
    else:
        engine = PlainEngine(model, train_cfg, 1, device, precision)
    batches = [synthetic_batch(cells, max_len, n_tokens, len(conditions), device, seed) for seed in range(4)]
    counter, peak = StepFlops.of(model), peak_flops(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(2):  # warm-up: allocation, kernels selection, compilation
        engine.train_step([batches[i % len(batches)]])
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    began, flops, tokens, losses = time.perf_counter(), 0.0, 0, []
    for i in range(steps):
        batch = batches[i % len(batches)]
        losses.append(engine.train_step([batch])["loss"])
        flops += counter.batch(batch)
        tokens += int(batch["gene_ids"].numel())
    sync()
    seconds = time.perf_counter() - began
    memory = (torch.cuda.max_memory_allocated() if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as profiler:
        for i in range(2):
            engine.train_step([batches[i]])
        sync()
    parts = breakdown(profiler.key_averages(), device.type)
    label = f"{size}{' + activation checkpointing' if checkpointing else ''}"
    engine_name = "DeepSpeed ZeRO-2" if use_deepspeed else "plain PyTorch (DeepSpeed missing)"
    mfu = flops / seconds / peak if peak else float("nan")
    print(f"train {label}: {engine_name}, {precision}, {steps} steps of {cells} cells "
          f"({tokens // steps:,} tokens/step): {tokens / seconds:,.0f} tokens/s, "
          f"{cells * steps / seconds:,.1f} cells/s, "
          f"{seconds / steps * 1e3:,.1f} ms/step, peak memory {memory / 2**30:.2f} GiB, "
          f"MFU {mfu:.3f} ({flops / seconds / 1e9:,.1f} GFLOP/s of {f'{peak / 1e9:,.0f}' if peak else '?'}), "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    total = sum(parts.values()) or 1.0
    shares = ", ".join(f"{name} {100 * s / total:.0f}%" for name, s in parts.items())
    print(f"  step time (2 profiled steps): {shares}")
    if not all(torch.isfinite(torch.tensor(losses))):
        raise SystemExit(f"train {label}: non-finite loss {losses}")
    return {"mfu": mfu, "tokens_per_s": tokens / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the same code path on the CPU (tiny, fp32, SDPA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; --cpu 3)")
    parser.add_argument("--cells", type=int, default=None, help="cells per step (default 64; --cpu 4)")
    parser.add_argument("--max-len", type=int, default=None, help="longest cell (default 2048; --cpu 64)")
    parser.add_argument("--size", default=None, help="model size (default base; --cpu tiny)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    args = parser.parse_args()
    if args.cpu:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    can_run, has_deepspeed = report_environment(args.cpu)
    if not can_run:
        print("nothing ran: bring the missing pieces above (docs/train.md, 'The GPU check')")
        return 2
    import torch

    device = torch.device("cpu" if args.cpu else "cuda")
    size = args.size or ("tiny" if args.cpu else "base")
    steps, cells = args.steps or (3 if args.cpu else 30), args.cells or (4 if args.cpu else 64)
    max_len = args.max_len or (64 if args.cpu else 2048)
    began = time.perf_counter()
    errors = parity(device, torch.bfloat16 if device.type == "cuda" else torch.float32, max_len)
    failed = [name for name, error in errors.items() if error > PARITY_TOLERANCE[device.type]]
    runs = {checkpointing: train(size, steps, cells, max_len, device, checkpointing, has_deepspeed,
                                 args.compile) for checkpointing in (False, True)}
    print(f"gpu check finished in {time.perf_counter() - began:.0f} s on {device.type}")
    tolerance = PARITY_TOLERANCE[device.type]
    for name, error in errors.items():
        ratio = tolerance / max(error, 1e-12)
        print(f"result: attention_{name}_parity_{device.type} ratio={ratio:.1f} target=1.0")
    print(f"result: mfu_{size}_{device.type} ratio={runs[False]['mfu']:.3f} target={MFU_TARGET}")
    print(f"result: mfu_{size}_checkpointed_{device.type} ratio={runs[True]['mfu']:.3f} "
          f"target={CHECKPOINTED_MFU_TARGET}")
    if failed:
        print(f"parity FAILED for {', '.join(failed)} (tolerance {tolerance})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
