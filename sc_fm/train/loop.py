"""The pretraining loop: stores -> tokenizer -> model -> engine -> steps -> checkpoints -> final.

One optimizer step consumes ``accumulation`` micro-batches on every rank, so each step sees
exactly ``train.global_batch_cells`` cells whatever the world size. Checkpoints hold the
engine state, every rank's RNG states and loader position, so a resumed run continues the
same sequence of batches and random draws as an uninterrupted one.
"""

from __future__ import annotations

import copy
import importlib
import json
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from sc_fm.batch import LOSS_NAMES, to_device
from sc_fm.config import RunConfig, save_config, to_dict
from sc_fm.errors import ConfigError
from sc_fm.model.io import START_FILE, load_weights
from sc_fm.outputs import check_run_dir, swap_in
from sc_fm.pretrained import Pretrained
from sc_fm.rundir import FINAL_DIR, METRICS_FILE, RUN_CONFIG_FILE
from sc_fm.threads import cpu_threads, ranks_sharing_cores, setup_blas_threads
from sc_fm.tracking import RunTracker, flatten, system_info
from sc_fm.train.callbacks import EvaluatorFactory
from sc_fm.train.checkpoint import (CheckpointManager, check_resumable, check_same_data, data_identity,
                                    read_rank_state, recorded_threads, write_rank_state,
                                    write_trainer_state)
from sc_fm.train.distributed import DistEnv, all_reduce_sum, barrier, init_process_group
from sc_fm.train.engines import DeepSpeedEngine, PlainEngine, TrainEngine
from sc_fm.train.guards import check_finite, out_of_memory_advice
from sc_fm.train.plan import TrainPlan, make_plan
from sc_fm.train.flops import StepFlops, peak_flops, raised_cpu_peak
from sc_fm.train.progress import ProgressBar, Throughput
from sc_fm.train.rng import capture_rng, restore_rng, seed_everything

if TYPE_CHECKING:
    from sc_fm.model import MaskedGeneTransformer


def pretrain(cfg: RunConfig, run_dir: str | Path, resume: bool = False,
             evaluator: EvaluatorFactory | None = None, initial: Pretrained | None = None) -> Path:
    """Train ``cfg`` into ``run_dir``; returns ``RUN_DIR/final`` (a ``Pretrained.load`` directory).

    With ``resume`` the latest complete checkpoint in ``run_dir`` is continued (a fresh start
    if there is none yet). ``evaluator`` builds the callback that scores the model every
    ``train.eval_every`` steps. ``initial`` starts from a model and tokenizer instead of a
    random initialisation and the stores' statistics (adaptation); its model config is the
    run's. Config errors are raised before any data or model is loaded.
    """
    if cfg.train.eval_every > 0 and evaluator is None:
        raise ConfigError(f"train.eval_every={cfg.train.eval_every} but no evaluator was given", "config",
                          "run through scfm pretrain (which builds the evaluation on eval.h5ad), pass "
                          "evaluator= to pretrain(), or set train.eval_every=0")
    env = DistEnv.from_env()
    plan = make_plan(cfg, env)
    run_dir = Path(run_dir)
    checkpoints = CheckpointManager(run_dir, cfg.train.keep_last, env)
    if env.is_main:  # one rank checks, before any writes: ranks may share the directory
        check_run_dir(run_dir, resume)
    latest = checkpoints.latest_usable(env.world_size) if resume else None
    if latest is not None:
        check_resumable(latest, to_dict(cfg), env.world_size)
    created = cfg.train.engine == "deepspeed" and init_process_group(env, plan.device)
    try:
        # ranks_sharing_cores is collective: every rank calls it. A resume keeps the run's count.
        saved = recorded_threads(latest, env.rank) if latest is not None else None
        budget = cpu_threads(ranks_sharing_cores(), saved) if plan.device.type == "cpu" else nullcontext()
        with budget as threads:
            if threads is not None and env.is_main:
                workers = cfg.data.num_workers
                print(f"scfm pretrain: {threads.describe()}"
                      + (f"; {workers} loader worker(s) at idle priority" if workers else ""), file=sys.stderr)
            return Trainer(cfg, plan, run_dir, checkpoints, latest, resume, evaluator, initial).run()
    finally:
        # A lone process keeps its group: DeepSpeed caches it for later runs in the same process.
        if created and env.world_size > 1:
            dist.destroy_process_group()


class Trainer:
    """One run's state: built in ``__init__``, advanced by ``run``."""

    def __init__(self, cfg: RunConfig, plan: TrainPlan, run_dir: Path, checkpoints: CheckpointManager,
                 latest: Path | None, resume: bool, evaluator: EvaluatorFactory | None = None,
                 initial: Pretrained | None = None):
        from sc_fm.data import open_stores
        from sc_fm.train.builder import coexpression_start, run_loader, run_tokenizer
        from sc_fm.model import MaskedGeneTransformer, count_parameters

        self.cfg, self.plan, self.env = cfg, plan, plan.env
        self.run_dir, self.checkpoints, self.latest, self.resume = run_dir, checkpoints, latest, resume
        stores = open_stores(cfg.data.stores)
        self.data_identity = data_identity(stores)
        if latest is not None and not cfg.train.allow_data_change:
            check_same_data(latest, stores)
        if self.env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / RUN_CONFIG_FILE)
        self.tokenizer = run_tokenizer(cfg, stores, latest, initial)
        self.loader = run_loader(cfg, self.tokenizer, stores, self.env.rank, self.env.world_size,
                                 idle_workers=plan.device.type == "cpu")
        if latest is None:  # a resume repositions the loader first
            self.loader.start()  # its workers fork before the set-up thread below exists
        # DeepSpeed's import (~7 s of Python on 2 cores) and opening the MLflow run (~3 s on a new
        # database) were most of a small run's start-up. In a thread they overlap the
        # co-expression start, whose numpy and LAPACK work releases the interpreter lock (and
        # leaves that thread a core: setup_blas_threads), and the loader's first fetch; their
        # errors are raised where their results are needed.
        setup = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sc_fm-setup")
        engine_import = (setup.submit(importlib.import_module, "deepspeed")
                         if plan.deepspeed_config is not None else None)
        tracking: Future | None = None
        try:
            seed_everything(cfg.train.seed)  # identical initial weights on every rank
            self.model = MaskedGeneTransformer(cfg.model, **self.tokenizer.model_inputs)
            self.n_parameters = count_parameters(self.model)
            if self.env.is_main and cfg.tracking.enabled:
                tracking = setup.submit(self._start_tracking)
            if initial is not None:
                self.model.start_from(initial.model)
            elif latest is None and cfg.model.gene_init == "coexpression":
                with setup_blas_threads(beside_setup_thread=engine_import is not None or tracking is not None):
                    coexpression_start(self.model, cfg, self.tokenizer, stores)
            self.start = self._untrained_start(initial, latest)
            seed_everything(cfg.train.seed + 1 + self.env.rank)  # per-rank dropout draws
            if engine_import is not None:
                engine_import.result()
            self.engine: TrainEngine = (
                PlainEngine(self.model, cfg.train, plan.accumulation, plan.device, plan.precision)
                if plan.deepspeed_config is None else
                DeepSpeedEngine(self.model, cfg.train, plan.device, plan.precision, plan.deepspeed_config))
            self.step = 0
            if latest is not None:
                self._restore(latest)
            self.evaluator = evaluator(self.tokenizer) if evaluator is not None and self.env.is_main else None
            self.tracker: RunTracker | None = tracking.result() if tracking is not None else None
        except BaseException:
            if tracking is not None and tracking.exception() is None:
                tracking.result().finish("FAILED")  # the MLflow run opened beside a set-up that failed
            raise
        finally:
            setup.shutdown(wait=False)
        self.step_flops = StepFlops.of(self.model)
        self.peak_flops = peak_flops(plan.device)

    def _untrained_start(self, initial: Pretrained | None, latest: Path | None) -> MaskedGeneTransformer | None:
        """What every checkpoint of this run saves as its start (``Pretrained.start_model``): a
        resumed run's saved start, an adaptation's base's own start, else the weights as they are
        now, before the first optimiser step; None when a resumed checkpoint has none (written
        before starts were saved: its run's start is unknown, and the weights here are not it).
        Built outside the training RNG streams."""
        from sc_fm.model import MaskedGeneTransformer

        if latest is None and (initial is None or not initial.has_start):
            return copy.deepcopy(self.model).eval()
        with torch.random.fork_rng(devices=[]):
            start = MaskedGeneTransformer(self.cfg.model, **self.tokenizer.model_inputs)
        if latest is not None and (latest / START_FILE).is_file():
            load_weights(start, latest, START_FILE)
        elif latest is None:
            start.start_from(initial.start_model())
        else:
            return None
        return start.eval()

    # ----------------------------------------------------------------------------------- run
    def run(self) -> Path:
        """Train to ``train.max_steps``, checkpointing on the way; returns the final directory."""
        self._announce()
        bar = ProgressBar(self.cfg.train.max_steps, self.step, self.env.is_main)
        status = "FAILED"
        try:
            if self.evaluator is not None and self.step == 0 and self.tracker is not None:
                self._log({f"baseline/{k}": v for k, v in self.evaluator.baseline_metrics.items()}, 0)
            self._train(bar)
            final = self._save_final()
            status = "FINISHED"
            return final
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            bar.close()
            if self.tracker is not None:
                self.tracker.finish(status)

    def _train(self, bar: ProgressBar) -> None:
        t = self.cfg.train
        batches = iter(self.loader)
        throughput = Throughput()
        while self.step < t.max_steps:
            lr = self.engine.lr
            micro = [to_device(next(batches), self.plan.device, non_blocking=True)
                     for _ in range(self.plan.accumulation)]
            with out_of_memory_advice(t.micro_batch_cells, self.cfg.tokenizer.max_len):
                local = self.engine.train_step(micro)
            metrics = self._reduce(local, micro, throughput, lr)
            self.step += 1
            check_finite(metrics, self.step, self.checkpoints.latest)
            bar.update(metrics)
            bar.advance()
            if self.env.is_main:
                self._record(metrics)
            if self.step % t.checkpoint_every == 0 or self.step == t.max_steps:
                self._save_checkpoint()
            if t.eval_every and self.step % t.eval_every == 0:
                self._evaluate()

    def _reduce(self, local: dict[str, float], micro: list[dict], throughput: Throughput,
                lr: float) -> dict[str, float]:
        """Mean losses over ranks; tokens and cells summed over ranks; rates since the last step."""
        tokens = sum(int(b["gene_ids"].numel()) for b in micro)
        cells = sum(int(b["cell_index"].numel()) for b in micro)
        totals = torch.tensor([local[k] for k in LOSS_NAMES] + [tokens, cells, self.step_flops.step(micro)],
                              dtype=torch.float64, device=self.plan.device)
        *loss_sums, n_tokens, n_cells, flops = all_reduce_sum(totals).tolist()
        world = self.env.world_size
        throughput.add(int(n_tokens), int(n_cells), flops)
        tokens_per_s, cells_per_s, flops_per_s = throughput.rates()
        metrics = {**{k: v / world for k, v in zip(LOSS_NAMES, loss_sums)},
                   "tokens_per_s": tokens_per_s, "cells_per_s": cells_per_s, "lr": lr,
                   "grad_norm": local["grad_norm"]}
        if self.peak_flops:
            if self.plan.device.type == "cpu":
                self.peak_flops = raised_cpu_peak(self.peak_flops, flops_per_s / world)
            metrics["mfu"] = flops_per_s / (self.peak_flops * world)
        return metrics

    def _record(self, metrics: dict[str, float]) -> None:
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")
        self._log(metrics, self.step)
        if self.tracker is not None and self.step % self.cfg.train.log_every == 0:
            self.tracker.flush()

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)

    def _evaluate(self) -> None:
        """Score a copy of the current weights on rank 0, outside the training RNG streams.

        A standalone copy keeps evaluation away from the engine's module (ZeRO hooks, train
        mode), so evaluation cannot change what training does next.
        """
        devices = [self.plan.device] if self.plan.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            with self.engine.full_weights():
                snapshot = None
                if self.evaluator is not None:
                    snapshot = type(self.model)(self.cfg.model, **self.tokenizer.model_inputs)
                    snapshot.load_state_dict(self.model.state_dict())
            if snapshot is not None:
                scores = self.evaluator(snapshot.to(self.plan.device).eval())
                self._log({f"eval/{k}": v for k, v in scores.items()}, self.step)
        barrier()

    # ---------------------------------------------------------------------- checkpoints
    def _write_pretrained(self, directory: Path) -> None:
        """Model and tokenizer as a ``Pretrained.load`` directory (rank 0 writes)."""
        with self.engine.full_weights():
            if self.env.is_main:
                Pretrained(self.model, self.tokenizer, start=self.start).save(directory)

    def _write_checkpoint(self, directory: Path) -> None:
        self.engine.save_state(directory)
        state = {"step": self.step, "rng": capture_rng(), "loader": self.loader.state_dict()}
        if self.plan.device.type == "cpu":  # a resume keeps the count (sc_fm/threads.py)
            state["threads"] = torch.get_num_threads()
        write_rank_state(directory, self.env.rank, state)
        self._write_pretrained(directory)
        if self.env.is_main:
            save_config(self.cfg, directory / RUN_CONFIG_FILE)
            write_trainer_state(directory, {
                "step": self.step, "world_size": self.env.world_size, "engine": self.cfg.train.engine,
                "accumulation": self.plan.accumulation, "precision": self.plan.precision,
                "data": self.data_identity})

    def _save_checkpoint(self) -> None:
        if self.tracker is not None:
            self.tracker.flush()
        self.checkpoints.save(self.step, self._write_checkpoint)

    def _restore(self, checkpoint: Path) -> None:
        self.engine.load_state(checkpoint)
        state = read_rank_state(checkpoint, self.env.rank)
        self.loader.load_state_dict(state["loader"])
        restore_rng(state["rng"])
        self.step = int(state["step"])
        if self.env.is_main:
            self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop per-step records written after the checkpoint by the interrupted run."""
        path = self.run_dir / METRICS_FILE
        if path.is_file():
            lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            path.write_text("".join(f"{line}\n" for line in lines))

    def _save_final(self) -> Path:
        """``RUN_DIR/final``: written beside, then swapped in, and logged as an MLflow artifact."""
        final = self.run_dir / FINAL_DIR
        tmp = self.run_dir / f".{FINAL_DIR}.partial"
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        self._write_pretrained(tmp)
        if self.env.is_main:
            save_config(self.cfg, tmp / RUN_CONFIG_FILE)
            if self.tracker is not None:
                self.tracker.write_info(tmp)
            swap_in(tmp, final)  # a crash at any point leaves the old final/ or the new one
            if self.tracker is not None:
                self.tracker.flush()
                self.tracker.log_artifacts(final, FINAL_DIR)
        barrier()
        return final

    # -------------------------------------------------------------------------- tracking
    def _start_tracking(self) -> RunTracker:
        params = flatten(to_dict(self.cfg))
        params.update({"run.world_size": str(self.env.world_size),
                       "run.accumulation": str(self.plan.accumulation),
                       "run.precision": self.plan.precision, "run.n_parameters": str(self.n_parameters)})
        return RunTracker.start(self.cfg.tracking, self.run_dir, params, system_info(self.env.world_size),
                                resume=self.resume)

    def _announce(self) -> None:
        if not self.env.is_main:
            return
        where = f"resuming at step {self.step} from {self.latest}" if self.latest else "starting at step 0"
        print(f"scfm pretrain: {self.cfg.train.engine} engine, {self.env.world_size} process(es) on "
              f"{self.plan.device.type}, {self.plan.precision}, {self.n_parameters:,} parameters, "
              f"{self.cfg.train.global_batch_cells} cells/step = {self.cfg.train.micro_batch_cells} x "
              f"{self.plan.accumulation} accumulation x {self.env.world_size}; {where}", file=sys.stderr)
        if self.tracker is not None:
            print(f"scfm pretrain: MLflow run {self.tracker.run_id} at {self.tracker.uri}", file=sys.stderr)
