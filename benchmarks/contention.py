"""Training and embedding beside other CPU work: tokens/s alone and beside a competitor, under
sc_fm's thread policy (``sc_fm/threads.py``) and under the one before it.

The tiny model's training step (two micro-batches of 32 packed cells, max_len 128, as
``configs/runs/tiny.yaml``; forward, backward, clipping, AdamW) and its embedding pass
(``model.embed`` under inference mode, 64 cells a batch) run on simulated batches in a
worker process per policy, since OpenMP reads its wait policy once, when torch loads. Every
simulated cell fills the 128 tokens, as every shipped cell does at that length (PBMC and
mixture pretraining cells, both evaluation sets); ``--short-cells`` draws log-normal lengths
(median 64) instead, the shape of longer contexts, where cells differ in length:

- ``new``: sc_fm imported first (its bounded OpenMP spin), threads from ``cpu_threads()``;
- ``before``: torch imported first (``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` unset: libgomp's
  default spin) and one thread per core of the affinity mask, the policy this one replaced.

The competitors are started here, and sc_fm is not told about them: a pure CPU torch matmul
loop with as many threads as cores, at the benchmark's own priority, with OpenMP's default
waits; and, the case users meet, a second default ``scfm pretrain --config tiny`` on a
simulated store (``--no-pretrain`` leaves it out). Both start once and are paused
(``SIGSTOP`` to their process group) while a worker measures alone, resumed beside it, so
each worker alternates alone and contended windows a few seconds apart, and rounds
alternate the policies. Ratios are taken within a worker (contended over alone) or within a
round (new alone over before alone), then the median over rounds, with the spread beside it.

Who starts first matters under the new policy, which leaves the cores that others keep busy
at a run's start. Each worker decides its count with the competitors paused: it is the run
that was there first. The competing ``scfm pretrain`` starts while the matmul loop keeps the
cores busy, as a second run started beside a first one does (its thread line is printed). One
more train worker per round takes the other order: it decides its count while that pretraining
runs (``train_started_beside_pretrain_vs_alone``; its alone windows keep that count).

Ends with ``result:`` lines: ``train_contended_vs_alone`` and ``embed_contended_vs_alone``
(target 0.4, the matmul competitor, new policy), ``train_alone_vs_before`` (target 0.95),
and, beside them, the same under the old policy and beside ``scfm pretrain``.

    .venv/bin/python benchmarks/contention.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONTENDED_TARGET = 0.4
BEFORE_TARGET = 0.95
CELLS, MAX_LEN, ACCUMULATION, EMBED_CELLS = 32, 128, 2, 64
SECOND = ("train", "new, started beside pretrain")
OPENMP_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # what sc_fm's import sets; "before" and the matmul loop unset
GENES, CONDITIONS = 2000, [6, 12]

COMPETITOR = """
import os, torch
torch.set_num_threads(len(os.sched_getaffinity(0)))
a, b = torch.randn(512, 512), torch.randn(512, 512)
while True:
    a @ b
"""


def worker(mode: str, policy: str, seconds: float, windows: list[str], groups: dict[str, int],
           started_beside: str | None = None, short_cells: bool = False) -> dict:
    """Run in its own process: tokens/s of ``mode`` in each window, competitors paused or running;
    the thread count is decided while ``started_beside`` runs (None: every competitor paused)."""
    if policy == "before":
        for name in OPENMP_WAIT:
            os.environ.pop(name, None)
        import torch  # first: its OpenMP runtime reads an environment without sc_fm's bounded spin

        torch.set_num_threads(len(os.sched_getaffinity(0)))
    else:
        import sc_fm  # noqa: F401 (first: it sets the wait policy before torch loads)
    import torch

    sys.path.insert(0, str(HERE))
    from gpu import synthetic_batch  # benchmarks/gpu.py, beside this script

    from sc_fm.config import ModelConfig, TrainConfig
    from sc_fm.model import MaskedGeneTransformer
    from sc_fm.threads import cpu_threads
    from sc_fm.train.engines import build_optimizer
    from sc_fm.vocab import N_SPECIAL

    n_tokens, cpu = N_SPECIAL + GENES, torch.device("cpu")
    torch.manual_seed(0)
    model = MaskedGeneTransformer(ModelConfig(size="tiny"), n_tokens, "continuous", 51, CONDITIONS)
    cells = CELLS if mode == "train" else EMBED_CELLS
    batches = [synthetic_batch(cells, MAX_LEN, n_tokens, len(CONDITIONS), cpu, seed, not short_cells)
               for seed in range(4)]
    optimizer = build_optimizer(model, TrainConfig(), cpu)

    def step(i: int) -> int:
        micro = [batches[(i * ACCUMULATION + j) % len(batches)] for j in range(ACCUMULATION)]
        if mode == "embed":
            with torch.inference_mode():
                model.embed(micro[0])
            return int(micro[0]["gene_ids"].numel())
        for batch in micro:
            (model(batch)["loss"] / ACCUMULATION).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return sum(int(b["gene_ids"].numel()) for b in micro)

    def window() -> float:
        step(0)  # the first step after a switch belongs to neither window
        began, tokens, i = time.perf_counter(), 0, 1
        while time.perf_counter() - began < seconds:
            tokens += step(i)
            i += 1
        return tokens / (time.perf_counter() - began)

    rates: dict[str, float] = {}
    _signal(groups, started_beside)
    with cpu_threads() if policy == "new" else nullcontext():
        _signal(groups, None)
        threads = torch.get_num_threads()
        for _ in range(2):
            step(0)  # warm-up: allocation, thread pool
        for name in windows:
            _signal(groups, name)
            rates[name] = window()
            _signal(groups, None)
    return {"threads": threads, "rates": rates}


def _signal(groups: dict[str, int], running: str | None) -> None:
    """Resume the competitor named ``running``, pause every other."""
    for name, group in groups.items():
        os.killpg(group, signal.SIGCONT if name == running else signal.SIGSTOP)


def child_env(*drop: str) -> dict[str, str]:
    """This environment for a process started here: sc_fm importable, and without
    ``OMP_NUM_THREADS`` (or the other names in ``drop``), so that it chooses its own threads."""
    return {k: v for k, v in {**os.environ, "PYTHONPATH": str(ROOT)}.items() if k not in ("OMP_NUM_THREADS", *drop)}


def start_matmul() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", COMPETITOR], env=child_env(*OPENMP_WAIT), start_new_session=True)


def start_pretrain(workdir: Path) -> subprocess.Popen:
    """A default tiny pretraining on a simulated store, running once its first steps are logged."""
    sys.path.insert(0, str(HERE))
    from train import build_store  # benchmarks/train.py, beside this script

    began = time.perf_counter()
    store = build_store(workdir, n_cells=2000, n_genes=GENES)
    run_dir = workdir / "competitor"
    log = workdir / "competitor.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sc_fm", "pretrain", "--config", "tiny", "-o", str(run_dir),
                                 f"data.stores=[{store}]", "train.max_steps=100000", "tracking.enabled=false"],
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=err, env=child_env())
    while not (run_dir / "metrics.jsonl").exists():
        if proc.poll() is not None:
            raise SystemExit(f"the competing scfm pretrain exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        time.sleep(1)
    decision = next((line for line in log.read_text().splitlines() if "CPU thread(s)" in line), "no thread line")
    print(f"competing scfm pretrain --config tiny training after {time.perf_counter() - began:.0f} s "
          f"(store included), started while the matmul loop kept the cores busy: {decision}", flush=True)
    return proc


def run_worker(mode: str, policy: str, seconds: float, windows: list[str], groups: dict[str, int],
               started_beside: str | None = None, short_cells: bool = False) -> dict:
    args = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--policy", policy,
            "--seconds", str(seconds), "--windows", ",".join(windows), "--groups", json.dumps(groups)]
    if started_beside:
        args += ["--started-beside", started_beside]
    if short_cells:
        args.append("--short-cells")
    out = subprocess.run(args, env=child_env(), capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"worker {mode}/{policy} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values: list[float], digits: int = 3) -> str:
    return (f"median {statistics.median(values):.{digits}f} (spread {min(values):.{digits}f}-"
            f"{max(values):.{digits}f} over {len(values)} rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 rounds of 3 s windows (a few minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 9, quick 5)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per window (default 8, quick 3)")
    parser.add_argument("--no-pretrain", action="store_true", help="leave out the scfm pretrain competitor")
    parser.add_argument("--short-cells", action="store_true",
                        help="log-normal cell lengths (median 64) instead of every cell filling max_len 128")
    parser.add_argument("--worker", choices=("train", "embed"), help=argparse.SUPPRESS)
    parser.add_argument("--policy", choices=("new", "before"), help=argparse.SUPPRESS)
    parser.add_argument("--windows", help=argparse.SUPPRESS)
    parser.add_argument("--groups", help=argparse.SUPPRESS)
    parser.add_argument("--started-beside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.policy, args.seconds, args.windows.split(","),
                                json.loads(args.groups), args.started_beside, args.short_cells)))
        return
    rounds = args.rounds or (5 if args.quick else 9)
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    load = os.getloadavg()
    print(f"{len(os.sched_getaffinity(0))} cores, load average {load[0]:.1f} at the start: other load slows the "
          f"'alone' windows too", flush=True)
    procs: dict[str, subprocess.Popen] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            procs["matmul"] = start_matmul()
            if not args.no_pretrain:
                procs["pretrain"] = start_pretrain(Path(tmp))
            groups = {name: os.getpgid(proc.pid) for name, proc in procs.items()}
            _signal(groups, None)
            results: dict[tuple[str, str], list[dict]] = {}
            for r in range(rounds):
                for mode in ("train", "embed"):
                    for policy in (("new", "before") if r % 2 == 0 else ("before", "new")):
                        windows = ["alone", "matmul"] + (["pretrain"] if mode == "train" and "pretrain" in procs
                                                         else [])
                        out = run_worker(mode, policy, seconds, windows, groups, short_cells=args.short_cells)
                        results.setdefault((mode, policy), []).append(out)
                        rates = ", ".join(f"{w} {rate:,.0f}" for w, rate in out["rates"].items())
                        print(f"round {r + 1} {mode:<5} {policy:<6} ({out['threads']} thr): {rates} tokens/s",
                              flush=True)
                if "pretrain" in procs:  # the other order: the measured run starts second, beside it
                    out = run_worker("train", "new", seconds, ["alone", "pretrain"], groups, "pretrain",
                                     args.short_cells)
                    results.setdefault(SECOND, []).append(out)
                    rates = ", ".join(f"{w} {rate:,.0f}" for w, rate in out["rates"].items())
                    print(f"round {r + 1} train new, started beside pretrain ({out['threads']} thr): {rates} tokens/s",
                          flush=True)
        finally:
            for proc in procs.values():
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def ratios(mode: str, policy: str, against: str) -> list[float]:
        return [o["rates"][against] / o["rates"]["alone"] for o in results[(mode, policy)]]

    lines: list[tuple[bool, str]] = []  # (beside the three figures, line)
    for mode in ("train", "embed"):
        for policy in ("new", "before"):
            alone = [o["rates"]["alone"] for o in results[(mode, policy)]]
            print(f"{mode} {policy}: alone {spread(alone, 0)} tokens/s")
            for against in results[(mode, policy)][0]["rates"]:
                if against != "alone":
                    values = ratios(mode, policy, against)
                    print(f"{mode} {policy}: beside {against} / alone {spread(values)}")
                    name = f"{mode}_contended_vs_alone" if against == "matmul" else f"{mode}_beside_{against}_vs_alone"
                    suffix = "" if policy == "new" else "_before"
                    lines.append((policy != "new" or against != "matmul",
                                  f"result: {name}{suffix} ratio={statistics.median(values):.3f} "
                                  f"target={CONTENDED_TARGET}"))
        pairs = [n["rates"]["alone"] / b["rates"]["alone"]
                 for n, b in zip(results[(mode, "new")], results[(mode, "before")])]
        print(f"{mode}: new alone / before alone within each round: {', '.join(f'{p:.3f}' for p in pairs)}")
        lines.append((mode != "train",
                      f"result: {mode}_alone_vs_before ratio={statistics.median(pairs):.3f} target={BEFORE_TARGET}"))
    if SECOND in results:
        second = results[SECOND]
        values = [o["rates"]["pretrain"] / o["rates"]["alone"] for o in second]
        print(f"train new, started beside pretrain ({second[0]['threads']} thr): alone "
              f"{spread([o['rates']['alone'] for o in second], 0)} tokens/s; beside / alone {spread(values)}")
        lines.append((True, f"result: train_started_beside_pretrain_vs_alone ratio={statistics.median(values):.3f} "
                            f"target={CONTENDED_TARGET}"))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print("\n".join(line for _, line in sorted(lines, key=lambda item: item[0])))  # the three targets first


if __name__ == "__main__":
    main()
