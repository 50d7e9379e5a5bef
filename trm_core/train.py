"""The training loop, for pre-training and the four post-training modes, on one or many processes.

Input: a TRM, an iterator of local batches (dicts of int32 tensors `inputs`, `labels`,
`puzzle_identifiers`; with `state_dict()`/`load_state_dict()` when resumable) and a TrainConfig.
Output: the trained model in place, a kit checkpoint plus a resumable `train_state.pt` in
`out_dir`, metrics as JSON lines, and one log line per interval on stderr.
With a FitSchedule (trm_core/fit.py; default none), every `every` steps each task's demonstration
pairs are checked as the model will be used, the check is one more line of metrics.jsonl, and the
sampler's per-task weights follow the schedule's rule: fitted tasks leave the batches, tasks that
stop being fitted come back, stalled ones are drawn less. Each task's embedding rows are kept as
they were at the last check that found it fitted; at the end of the run, a task fitted once but not
at the last check gets those rows back when they fit more of its pairs under the final trunk (one
more check over those tasks only, recorded in metrics.jsonl). Without a schedule, nothing of this runs.

Semantics are the reference's: the ACT carry persists across batches (halted rows take the new
batch's row, the others keep refining theirs), every row is supervised at every step, the loss is
scaled by 1/global batch and gradients are summed across ranks; AdamATan2 steps the trunk, sparse
SignSGD the puzzle-embedding rows, one schedule drives both. Under torchrun each process takes
its slice of every global batch; only rank 0 writes.

One file of ~800 lines on purpose: the loop, its resumable state, the micro-batch accumulation and
the compile fallback all act on the same step, and a reader checks their agreement in one place.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from trm_core import checkpoint as ckpt_io
from trm_core.config import TrainConfig
from trm_core.distributed import rank_world
from trm_core.loggers import MetricsLogger, NullLogger
from trm_core.loss import act_loss
from trm_core.model import TRM, Carry, flops_per_sample
from trm_core.optim import EMA, AdamAtan2, SparseSignSGD, lr_at, set_lr
from trm_core.perf import mfu
from trm_core.safe_io import atomic_path
from trm_core.warmup import WarmupOverLimit, warmup_limit

if TYPE_CHECKING:
    from trm_core.fit import FitSchedule, TaskFit

STATE_FILE, METRICS_FILE, CHECKPOINT_DIR = "train_state.pt", "metrics.jsonl", "checkpoint"
# An interval also ends when this many seconds have passed since the last line, whatever log_every:
# a run whose log_every steps take an hour (a big batch on a slow GPU) still shows it is alive.
LOG_AT_LEAST_S = 30.0
_STATE_KEYS = ("step", "train_config", "world_size", "model", "adam", "sign", "ema", "sampler", "generators")
_START_FRESH = "delete it (or pick a new output folder) to start fresh; the run's last checkpoint/ is kept"


class ResumeError(ValueError):
    """A train_state.pt that cannot be resumed from; the message names the file and what to do."""


def read_train_state(path: Path) -> dict[str, Any]:
    """The resumable state a run saved, read with weights_only=True (a pickle that needs code is
    refused, never run); damage, a foreign pickle or a wrong layout is a ResumeError naming the file."""
    import pickle
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ResumeError(f"{path} is damaged or not a torch file (not the zip format torch.save writes); "
                          f"{_START_FRESH}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines() or [""]
        why = next((line.strip() for line in lines if "Unsupported" in line), lines[0]).split(". ")[0][:200]
        raise ResumeError(f"{path} needs code to load and was refused (only tensors and plain values are read: "
                          f"{why}); {_START_FRESH}") from None
    except Exception as e:  # noqa: BLE001 - a truncated zip, an empty file, a non-torch file: all damage
        raise ResumeError(f"{path} is damaged or not a torch file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); {_START_FRESH}") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["train_config"], dict) or not isinstance(state["model"], dict) \
            or not isinstance(state["step"], int) or not isinstance(state["generators"], list):
        raise ResumeError(f"{path} is not a trm-kit training state (missing or malformed: "
                          f"{', '.join(missing) or 'step, train_config, model or generators'}); {_START_FRESH}")
    return state


@dataclass
class TrainResult:
    steps_done: int  # total optimiser steps reached (including those of a resumed run)
    stopped_early: bool  # the stop condition ended the run before cfg.steps
    seconds: float  # wall time of this call
    samples_per_s: float  # over this call's steps
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None  # kit checkpoint written by rank 0
    first_metrics: dict[str, float] = field(default_factory=dict)  # the first logged interval of this call
    micro_batch: int = 0  # rows per forward/backward on each process
    compile: str = "off"  # off | on | fallback: <why> (compiled, then eager after the compiled step failed)
    memory_fit: dict[str, Any] | None = None  # the peak-memory fit that chose the micro-batch (CUDA, micro -1)


def trainable_parameters(model: TRM, mode: str) -> list[torch.nn.Parameter]:
    """The parameters the trunk optimiser owns in `mode` (empty: embeddings only)."""
    if mode in ("pretrain", "full", "embeddings-then-full"):
        return list(model.parameters())
    if mode == "lora":
        return [p for n, p in model.named_parameters() if ".lora_" in n or n == "embed_tokens.embedding_weight"]
    return []


def _set_trainable(model: TRM, params: list[torch.nn.Parameter], on: bool) -> None:
    owned = {id(p) for p in params} if on else set()
    for p in model.parameters():
        p.requires_grad_(id(p) in owned)


def _log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def micro_split(rows: int, max_rows: int) -> list[int]:
    """Split `rows` into as few micro-batches of at most `max_rows` as possible, as even as possible
    (192 rows at most 80 -> [64, 64, 64]), so a compiled step sees one shape, two at most."""
    if max_rows <= 0 or max_rows >= rows:
        return [rows]
    n = -(-rows // max_rows)
    size = -(-rows // n)
    return [size] * (rows // size) + ([rows % size] if rows % size else [])


def _slice_carry(c: Carry, lo: int, hi: int) -> Carry:
    return Carry(z_H=c.z_H[lo:hi], z_L=c.z_L[lo:hi], steps=c.steps[lo:hi], halted=c.halted[lo:hi],
                 current_data={k: v[lo:hi] for k, v in c.current_data.items()})


def _cat_carries(parts: list[Carry]) -> Carry:
    if len(parts) == 1:
        return parts[0]
    return Carry(z_H=torch.cat([c.z_H for c in parts]), z_L=torch.cat([c.z_L for c in parts]),
                 steps=torch.cat([c.steps for c in parts]), halted=torch.cat([c.halted for c in parts]),
                 current_data={k: torch.cat([c.current_data[k] for c in parts]) for k in parts[0].current_data})


def _gather_rows(t: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate each rank's rows (rank order) on every rank."""
    if world == 1:
        return t
    out = t.new_empty((world * t.shape[0], *t.shape[1:]))
    dist.all_gather_into_tensor(out, t.contiguous())
    return out


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Host batch to the device: through pinned memory and a non-blocking copy on CUDA."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: (v if v.is_cuda else v.pin_memory()).to(device, non_blocking=True) for k, v in batch.items()}


class _Trainer:
    """The state one training run carries; `run()` is the loop."""

    clock: Callable[[], float] = staticmethod(time.perf_counter)  # interval timing (a fake one in tests)

    def __init__(self, model: TRM, batches: Iterable[dict[str, torch.Tensor]], cfg: TrainConfig,
                 device: torch.device, out_dir: Path | None, manifest: dict[str, Any],
                 log: Callable[[str], None], logger: MetricsLogger) -> None:
        self.model, self.batches, self.cfg, self.device = model, batches, cfg, device
        self.out_dir, self.manifest, self.log, self.logger = out_dir, manifest, log, logger
        self.rank, self.world = rank_world()
        if cfg.global_batch_size % self.world:
            raise ValueError(f"global_batch_size {cfg.global_batch_size} is not divisible by {self.world} processes")
        self.local_batch = cfg.global_batch_size // self.world
        self.micro = micro_split(self.local_batch, cfg.micro_batch_size)  # row counts of one step's micro-batches
        # CPU flags (stop decisions, metric sums) travel on a gloo group so the GPU queue never waits.
        self.cpu_group = None
        if self.world > 1:
            self.cpu_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

        if cfg.mode == "lora":
            g = torch.Generator().manual_seed(cfg.seed)
            model.add_lora(cfg.lora_rank, cfg.lora_alpha, generator=g)
        model.to(device)
        if self.world > 1:  # every rank starts from rank 0's weights and table
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)
        self.trunk = trainable_parameters(model, cfg.mode)
        _set_trainable(model, self.trunk, True)
        self.ema = EMA(model, cfg.ema_rate) if cfg.ema and self.trunk else None
        self.adam = AdamAtan2(self.trunk, lr=0.0, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                              variant=cfg.optimizer) if self.trunk else None
        self.sign = SparseSignSGD(model.puzzle_emb, lr=0.0, weight_decay=cfg.puzzle_emb_weight_decay) \
            if model.config.puzzle_emb_ndim > 0 else None
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + self.rank)
        self.step = 0
        self.carry: Carry | None = None
        self.pending_carry: dict[str, torch.Tensor] | None = None
        self.fit_history: list[dict[str, TaskFit]] = []  # the last checks of a FitSchedule, oldest first
        # per task: (step, its embedding rows [n_variants, D] on CPU) at the last check that found it fitted
        self.best_rows: dict[str, tuple[int, torch.Tensor]] = {}
        # with a gated FitSchedule: per embedding row, the training rows that halted exactly right
        # since the last check (which tasks are worth checking)
        self.exact_rows: torch.Tensor | None = None
        # per task whose table rows were put back at the end of the run: the rows training left there,
        # which train_state.pt keeps so that a resumed run trains on as an uninterrupted one would
        self.trained_rows: dict[str, torch.Tensor] = {}
        model.checkpoint_activations = cfg.checkpoint_activations
        self.memory_fit: dict[str, Any] | None = None
        if cfg.micro_batch_size == -1 and device.type == "cuda":
            self.micro = micro_split(self.local_batch, self._fit_micro_batch())
        self.compile = "off"
        self.eager_recursion = model.recursion
        if cfg.compile if cfg.compile is not None else device.type == "cuda":
            model.recursion = torch.compile(model.recursion)
            self.compile = "on"

    def _fit_micro_batch(self) -> int:
        """Peak memory of eager steps at two small batches, fitted per row; the largest micro-batch
        that fits the GPU with the stated headroom (compiled steps need less: fusion keeps fewer
        intermediates)."""
        from trm_core import memory

        rows = (min(2, self.local_batch), min(4, self.local_batch))
        if rows[0] == rows[1]:
            return self.local_batch
        fit = memory.measure_peak(lambda r: memory.train_step_peak(self.model, r, self.device), rows, self.device)
        budget = memory.device_budget(self.device) or 0
        extra = memory.optimiser_bytes(self.model)
        micro = memory.choose_micro_batch(fit, self.local_batch, budget, self.model.config, extra)
        self.memory_fit = {**fit.to_json(), "budget_bytes": budget, "headroom": memory.HEADROOM, "micro_batch": micro}
        if self.rank == 0:
            self.log(f"memory: {fit.render(budget)}; micro-batch {micro} of {self.local_batch} local rows")
        return micro

    # ---- persistence -----------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step, "train_config": asdict(self.cfg), "world_size": self.world,
            "model": self._model_state(),
            "adam": self.adam.state_dict() if self.adam else None,
            "sign": self.sign.state_dict() if self.sign else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "sampler": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
        }
        gens = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(gens, self.generator.get_state(), group=self.cpu_group)
        else:
            gens = [self.generator.get_state()]
        state["generators"] = gens
        if self.fit_history:
            state["fit"] = [{tid: [f.exact_pairs, f.pairs] for tid, f in check.items()} for check in self.fit_history]
        if self.best_rows:
            state["best_rows"] = {tid: {"step": s, "rows": rows} for tid, (s, rows) in self.best_rows.items()}
        parts: dict[str, torch.Tensor] | None = self.pending_carry  # restored but no step taken yet: keep it
        if self.carry is not None:
            c = self.carry
            parts = {"z_H": c.z_H, "z_L": c.z_L, "steps": c.steps, "halted": c.halted}
            parts.update({f"data.{k}": v for k, v in c.current_data.items()})
        if parts is not None:
            state["carry"] = {k: _gather_rows(v, self.world).cpu() for k, v in parts.items()}
        return state

    def _model_state(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if self.trained_rows:  # the rows training left, not the ones put back for the checkpoint
            table = state["puzzle_emb.weights"] = state["puzzle_emb.weights"].clone()
            for tid, rows in self.trained_rows.items():
                table[self._task_rows(tid)] = rows
        return state

    def save(self) -> Path | None:
        state = self._state()  # collective: every rank takes part
        if self.rank != 0 or self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out_dir / STATE_FILE) as tmp:
            torch.save(state, tmp)
        manifest = dict(self.manifest)
        manifest["weights"] = "ema" if self.ema else "raw"
        manifest["train"] = {"step": self.step, **asdict(self.cfg)}
        if self.ema:
            with self.ema.applied(self.model):
                snap = ckpt_io.from_model(self.model, manifest)
        else:
            snap = ckpt_io.from_model(self.model, manifest)
        # Write to a fresh folder then swap, so a crash never leaves a half-written checkpoint.
        final, tmp = self.out_dir / CHECKPOINT_DIR, self.out_dir / (CHECKPOINT_DIR + ".tmp")
        ckpt_io.save(snap, tmp)
        if final.exists():
            old = self.out_dir / (CHECKPOINT_DIR + ".old")
            os.replace(final, old)
            os.replace(tmp, final)
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        else:
            os.replace(tmp, final)
        return final

    def restore(self, path: Path) -> None:
        state = read_train_state(path)
        saved_batch = state["train_config"].get("global_batch_size")
        if saved_batch != self.cfg.global_batch_size:
            raise ResumeError(f"{path}: saved with global_batch_size {saved_batch!r}, "
                              f"now {self.cfg.global_batch_size}; resume with the same batch size")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:  # a different model (preset, canvas, table rows) wrote this state
            raise ResumeError(f"{path} was saved by a different model ({str(e).splitlines()[0][:200]}): "
                              f"{_START_FRESH}") from None
        if self.adam and state["adam"]:
            self.adam.load_state_dict(state["adam"])
        if self.sign and state["sign"]:
            self.sign.load_state_dict(state["sign"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        if state["sampler"] is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["sampler"])
        if state.get("world_size") == self.world:
            self.generator.set_state(state["generators"][self.rank])
        if "carry" in state:
            lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
            self.pending_carry = {k: v[lo:hi].to(self.device) for k, v in state["carry"].items()}
        if state.get("fit"):
            from trm_core.fit import TaskFit

            self.fit_history = [{tid: TaskFit(int(e), int(n)) for tid, (e, n) in check.items()}
                                for check in state["fit"]]
        self.best_rows = {tid: (int(kept["step"]), kept["rows"]) for tid, kept in state.get("best_rows", {}).items()}
        self.step = int(state["step"])

    def _carry_for(self, batch: dict[str, torch.Tensor]) -> Carry:
        if self.pending_carry is None:
            return self.model.initial_carry(batch)
        p, self.pending_carry = self.pending_carry, None
        return Carry(z_H=p["z_H"], z_L=p["z_L"], steps=p["steps"], halted=p["halted"],
                     current_data={k[5:]: v for k, v in p.items() if k.startswith("data.")})

    # ---- the loop ----------------------------------------------------------------------------

    def _agree(self, stop: bool, log: bool) -> tuple[bool, bool]:
        """(stop now, end the log interval after this step): true on every rank when true on any,
        in the one collective a step already had, so every rank takes part in the same _log."""
        if self.world == 1:
            return stop, log
        flag = torch.tensor([int(stop), int(log)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(flag[0].item()), bool(flag[1].item())

    def _all_reduce_grads(self) -> None:
        grads = [p.grad for p in self.trunk if p.grad is not None]
        if self.world == 1 or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for the whole trunk
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def run(self, stop: Callable[[int], bool] | None, fit: FitSchedule | None = None) -> TrainResult:
        cfg, model = self.cfg, self.model
        if fit is not None and not hasattr(self.batches, "set_weights"):
            raise ValueError("a FitSchedule needs batches with per-task weights (a TrainSampler)")
        if fit is not None and fit.gate:
            self.exact_rows = torch.zeros(model.puzzle_emb.weights.shape[0], dtype=torch.int64, device=self.device)
        model.train()
        batches = iter(self.batches)
        sums: dict[str, torch.Tensor] = {}
        t_start = self.clock()
        t_log, steps_at_log, first_step = t_start, self.step, self.step
        timed_from: tuple[float, int] | None = None  # (time, step) after warm-up/compile, for the ETA
        last: dict[str, float] = {}
        first: dict[str, float] = {}
        stopped = False
        frozen = None
        flops = flops_per_sample(model.config, train=True) * cfg.global_batch_size
        first_step_of_call = True

        while self.step < cfg.steps:
            # an interval also ends on time (LOG_AT_LEAST_S), decided before the step so the ranks agree
            halt, log_due = self._agree(bool(stop and stop(self.step)), self.clock() - t_log >= LOG_AT_LEAST_S)
            if halt:
                stopped = True
                break
            self.step += 1
            now_frozen = self.step <= cfg.frozen_steps
            if now_frozen != frozen:
                _set_trainable(model, self.trunk, not now_frozen)
                frozen = now_frozen
            batch = self._next_batch(batches)
            if self.carry is None:
                self.carry = self._carry_for(batch)
            draws = model.exploration_draws(self.local_batch, self.generator, self.device) \
                if model.config.halt_max_steps > 1 else None
            if self.compile == "on" and first_step_of_call:
                loss, metrics = self._first_compiled_step(batch, draws)
            else:
                loss, metrics = self._forward_backward(batch, draws)
            first_step_of_call = False

            scale = self._optimiser_step(frozen)

            metrics["loss"] = loss
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v.detach().double()

            if self.step % cfg.log_every == 0 or self.step == cfg.steps or log_due:
                last = self._log(sums, t_log, steps_at_log, flops, timed_from, scale)
                first = first or last
                t_log, steps_at_log, sums = self.clock(), self.step, {}
                if timed_from is None:  # the first interval includes warm-up and compilation
                    timed_from = (t_log, self.step)
            if fit is not None and self.step % fit.every == 0:
                self._check_fit(fit)  # sets the sampler's weights from the next batch on
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save()

        if sums:
            tail = self._log(sums, t_log, steps_at_log, flops, timed_from, None)
            # a short final interval in which no row halted has no accuracy to report: keep the last
            # interval that had one as the run's last figures (metrics.jsonl still records both)
            if tail["halted_rows"] > 0 or not last:
                last = tail
            first = first or last
        if fit is not None and self.best_rows:
            self._put_back_best_rows(fit)
        seconds = self.clock() - t_start
        path = self.save()
        done = self.step - first_step
        return TrainResult(self.step, stopped, seconds, done * cfg.global_batch_size / max(seconds, 1e-9), last, path,
                           first, micro_batch=max(self.micro), compile=self.compile,
                           memory_fit=self.memory_fit)

    def _verdict(self, fit: FitSchedule, only: list[str] | None = None) -> dict[str, TaskFit]:
        """The tasks' fit (all, or `only` those), checked on rank 0 with the weights the checkpoint
        would hold and broadcast, so every rank acts on the same verdict."""
        verdict = None
        if self.rank == 0:
            compiled = self.model.recursion if self.compile == "on" else None
            if compiled is not None:  # inference on the eager recursion: no recompile in the training graph
                self.model.recursion = self.eager_recursion
            try:
                with self.ema.applied(self.model) if self.ema else contextlib.nullcontext():
                    verdict = fit.check(self.model, self.batches.variants, self.device, only=only)
            finally:
                if compiled is not None:
                    self.model.recursion = compiled
            if only is not None:
                verdict = {tid: verdict[tid] for tid in only}
        if self.world > 1:
            box = [verdict]
            dist.broadcast_object_list(box, src=0, group=self.cpu_group)
            verdict = box[0]
        return verdict

    def _task_rows(self, task_id: str) -> slice:
        """The task's embedding rows: identifier = 1 + its variant's code row (trm_core/variants.py)."""
        variants = self.batches.variants
        i = variants.task_index(task_id)
        return slice(1 + int(variants.offsets[i]), 1 + int(variants.offsets[i + 1]))

    def _count_exact_rows(self, carry: Carry, preds: torch.Tensor) -> None:
        """Count, per embedding row, the rows that halted this step with every label right."""
        labels = carry.current_data["labels"]  # (B, S)
        mask = labels != -100
        exact = carry.halted & mask.any(-1) & ((preds == labels) | ~mask).all(-1)  # (B,)
        self.exact_rows.index_add_(0, carry.current_data["puzzle_identifiers"].long(), exact.long())

    def _worth_checking(self) -> list[str] | None:
        """The gate (FitSchedule.gate): the tasks whose training rows halted exactly right at least
        once since the last check, those out of the batches and those fitted at the last check (so
        a fitted task is seen to unfit); None without a gate: every task."""
        if self.exact_rows is None:
            return None
        counts = self.exact_rows.clone()
        if self.world > 1:
            dist.all_reduce(counts)
        counts = counts.cpu()
        self.exact_rows.zero_()
        last = self.fit_history[-1] if self.fit_history else {}
        weights = self.batches.weights
        return [tid for tid in self.batches.variants.task_ids
                if int(counts[self._task_rows(tid)].sum()) > 0 or weights.get(tid, 1.0) == 0
                or (tid in last and last[tid].fitted)]

    def _check_fit(self, fit: FitSchedule) -> None:
        """Check every task's fit (with the gate, the tasks worth checking; the others count as no
        pair exact), keep the rows of the fitted ones, record the check and set the sampler's weights."""
        from trm_core.fit import TaskFit, spending

        only = self._worth_checking()
        verdict = self._verdict(fit, only) if only is None or only else {}
        if only is not None:
            tasks = self.batches.variants.tasks
            verdict = {tid: verdict.get(tid, TaskFit(0, len(tasks[tid].train))) for tid in self.batches.variants.task_ids}
        table = self.model.puzzle_emb.weights
        for tid, f in verdict.items():
            if f.fitted:  # every rank holds the same table: each keeps its own copy
                self.best_rows[tid] = (self.step, table[self._task_rows(tid)].detach().cpu().clone())
        self.fit_history = (self.fit_history + [verdict])[-fit.memory:]
        weights = spending(self.fit_history, fit.patience, fit.stall)
        self.batches.set_weights(weights)
        if self.rank != 0:
            return
        rows = self.batches.rows_by_task()
        fitted = sum(f.fitted for f in verdict.values())
        line = {"step": self.step, "fitted_tasks": fitted, "checked": len(verdict) if only is None else len(only),
                "fit": {tid: {"fitted": f.fitted, "exact_pairs": f.exact_pairs, "pairs": f.pairs,
                              "active": weights[tid] > 0, "weight": weights[tid], "rows": rows[tid]}
                        for tid, f in verdict.items()}}
        halved = sum(w == 0.5 for w in weights.values())
        self.log(f"step {self.step}/{self.cfg.steps} | fit: {fitted}/{len(verdict)} tasks fitted "
                 f"({line['checked']} checked) | "
                 f"{sum(w == 0 for w in weights.values())} left the batches | {halved} drawn at half weight")
        self._append_metrics(line)
        self.logger.log({"fitted_tasks": fitted}, self.step)

    def _put_back_best_rows(self, fit: FitSchedule) -> None:
        """End of the run: each task fitted at an earlier check but not at the last one gets the rows
        kept from its last fitted check back when, under the final trunk, they reproduce more of its
        demonstration pairs than the rows training left (a tie keeps those). One check of those
        tasks with each set of rows; the choice is one metrics.jsonl line."""
        last = self.fit_history[-1] if self.fit_history else {}
        tasks = [tid for tid in self.batches.variants.task_ids
                 if tid in self.best_rows and tid in last and not last[tid].fitted]
        if not tasks:
            return
        table = self.model.puzzle_emb.weights
        trained = {tid: table[self._task_rows(tid)].detach().clone() for tid in tasks}
        final = self._verdict(fit, tasks)
        with torch.no_grad():
            for tid in tasks:
                table[self._task_rows(tid)] = self.best_rows[tid][1].to(table.device, table.dtype)
        restored = self._verdict(fit, tasks)
        record = {}
        with torch.no_grad():
            for tid in tasks:
                if restored[tid].exact_pairs > final[tid].exact_pairs:
                    self.trained_rows[tid] = trained[tid].cpu()
                else:
                    table[self._task_rows(tid)] = trained[tid]
                record[tid] = {"fitted_at": self.best_rows[tid][0], "exact_pairs_final": final[tid].exact_pairs,
                               "exact_pairs_restored": restored[tid].exact_pairs,
                               "kept": "restored" if tid in self.trained_rows else "final"}
        if self.rank != 0:
            return
        back = [tid for tid in tasks if tid in self.trained_rows]
        self.log(f"step {self.step}/{self.cfg.steps} | best rows: {len(tasks)} task(s) fitted at an earlier check "
                 f"but not at the last | {len(back)} given their earlier rows back"
                 + (f" ({', '.join(back[:10])}{', ...' if len(back) > 10 else ''})" if back else ""))
        self._append_metrics({"step": self.step, "restored": record})

    def _append_metrics(self, line: dict[str, Any]) -> None:
        """One line of metrics.jsonl (rank 0; nothing without an output folder)."""
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(line) + "\n")

    def _next_batch(self, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        try:
            batch = next(batches)
        except StopIteration:
            raise RuntimeError(f"the batch iterator ran out at step {self.step} of {self.cfg.steps}") from None
        return _to_device(batch, self.device)

    def _optimiser_step(self, frozen: bool) -> float:
        """Reduce the gradients across ranks, step both optimisers at this step's scheduled rate
        (the trunk's only while it is not frozen) and the EMA; return the schedule's scale."""
        cfg = self.cfg
        self._all_reduce_grads()
        scale = lr_at(self.step, 1.0, cfg.warmup_steps, cfg.steps, cfg.lr_min_ratio)
        if self.sign is not None:
            set_lr(self.sign, cfg.puzzle_emb_lr * scale)
            self.sign.step()
            self.sign.zero_grad()
        if self.adam is not None:
            if not frozen:
                set_lr(self.adam, cfg.lr * scale)
                self.adam.step()
            self.adam.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return scale

    def _forward_backward(self, batch: dict[str, torch.Tensor], draws: tuple[torch.Tensor, torch.Tensor] | None
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One ACT step on the local batch, as micro-batches whose gradients accumulate.

        The carry stays one local-batch carry (saved and resumed whatever the micro-batch), the
        exploration draws are made for the whole local batch, each micro-batch's loss is scaled by
        1/global batch, and the puzzle-embedding row gradients of all micro-batches are joined for
        SignSGD: the step is one big batch's, up to the order of float sums."""
        model, cfg = self.model, self.cfg
        carries: list[Carry] = []
        grads: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        sums: dict[str, torch.Tensor] = {}
        lo = 0
        for rows in self.micro:
            hi = lo + rows
            whole = len(self.micro) == 1
            carry = self.carry if whole else _slice_carry(self.carry, lo, hi)
            part = batch if whole else {k: v[lo:hi] for k, v in batch.items()}
            part_draws = None if draws is None else (draws[0][lo:hi], draws[1][lo:hi])
            carry, out = model(carry, part, generator=self.generator, draws=part_draws)
            loss, metrics, preds = act_loss(carry, out)
            if self.exact_rows is not None:
                self._count_exact_rows(carry, preds)
            (loss / cfg.global_batch_size).backward()
            carries.append(carry)
            emb = model.puzzle_emb
            if not whole and emb.local_weights.grad is not None:
                grads.append((emb.local_weights.detach(), emb.local_weights.grad, emb.local_ids))
            metrics["loss"] = loss.detach()
            for k, v in metrics.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach()
            lo = hi
        if len(grads) > 1:  # SignSGD sees the whole local batch's rows, in batch order
            emb = model.puzzle_emb
            emb.local_weights = torch.cat([w for w, _, _ in grads]).requires_grad_(True)
            emb.local_weights.grad = torch.cat([g for _, g, _ in grads])
            emb.local_ids = torch.cat([i for _, _, i in grads])
        self.carry = _cat_carries(carries)
        loss = sums.pop("loss")
        return loss, sums

    def _first_compiled_step(self, batch: dict[str, torch.Tensor], draws: tuple[torch.Tensor, torch.Tensor] | None
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The first step of a compiled run; if compiling or running the compiled code fails, or the
        step runs past cfg.compile_limit_s, the same step runs again eagerly (nothing of the failed
        attempt is kept) and the run goes on."""
        carry = self.carry
        try:
            with warmup_limit(self.cfg.compile_limit_s):
                return self._forward_backward(batch, draws)
        except (Exception, WarmupOverLimit) as e:  # noqa: BLE001 - any compiler failure: eager is always available
            if isinstance(e, torch.OutOfMemoryError):  # memory, not the compiler: the caller decides
                raise
            why = str(e) if isinstance(e, WarmupOverLimit) else \
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            self.log(f"torch.compile failed ({why}); training eagerly")
            self.compile = f"fallback: {why}"
            self.model.recursion = self.eager_recursion
            self.carry = carry
            for p in self.model.parameters():
                p.grad = None
            self.model.puzzle_emb.local_weights = self.model.puzzle_emb.local_weights.detach()
            return self._forward_backward(batch, draws)

    def _log(self, sums: dict[str, torch.Tensor], t0: float, step0: int, flops: float,
             timed_from: tuple[float, int] | None, scale: float | None) -> dict[str, float]:
        cfg = self.cfg
        keys = sorted(sums)
        vec = torch.stack([sums[k].to("cpu") for k in keys])  # the one host sync of the interval
        if self.world > 1:
            dist.all_reduce(vec, group=self.cpu_group)
        s = dict(zip(keys, vec.tolist()))
        n_steps = self.step - step0
        dt = max(self.clock() - t0, 1e-9)
        count = max(s.get("count", 0.0), 1.0)
        rows = n_steps * cfg.global_batch_size
        m = {
            "step": self.step, "loss": s["loss"] / rows, "lm_loss": s["lm_loss"] / rows,
            "q_halt_loss": s["q_halt_loss"] / rows, "accuracy": s["accuracy"] / count,
            "exact_accuracy": s["exact_accuracy"] / count, "q_halt_accuracy": s["q_halt_accuracy"] / count,
            "act_steps": s["steps"] / count, "halted_rows": s.get("count", 0.0),
            "samples_per_s": rows / dt, "lr": cfg.lr * (scale if scale is not None else 1.0),
        }
        if "q_continue_loss" in s:  # an HRM's bootstrapped-target term
            m["q_continue_loss"] = s["q_continue_loss"] / rows
        util = mfu(flops * n_steps / dt / self.world, self.device, self.model.config.dtype)
        m["mfu"] = util if util is not None else float("nan")
        eta = ""
        if timed_from is not None:
            t_ref, step_ref = timed_from
            per_step = (self.clock() - t_ref) / max(self.step - step_ref, 1)
            m["eta_s"] = per_step * (cfg.steps - self.step)
            eta = f" | ETA {_fmt_time(m['eta_s'])}"
        if self.rank == 0:
            frozen = " (trunk frozen)" if self.step <= cfg.frozen_steps and cfg.frozen_steps else ""
            util_s = f"{100 * util:.1f}%" if util is not None else "n/a"
            self.log(f"step {self.step}/{cfg.steps}{frozen} | loss {m['loss']:.4f} | exact {m['exact_accuracy']:.3f} "
                     f"| acc {m['accuracy']:.3f} | {m['samples_per_s']:.1f} samples/s | MFU {util_s}{eta}")
            self._append_metrics(m)
            self.logger.log(m, self.step)  # after metrics.jsonl, which stays the record
        return m


def train(model: TRM, batches: Iterable[dict[str, torch.Tensor]], cfg: TrainConfig, *,
          device: torch.device | str = "cpu", out_dir: str | os.PathLike | None = None,
          stop: Callable[[int], bool] | None = None, deadline: float | None = None,
          manifest: dict[str, Any] | None = None, resume: bool = True,
          log: Callable[[str], None] = _log_stderr, logger: MetricsLogger | None = None,
          clock: Callable[[], float] | None = None, fit: FitSchedule | None = None) -> TrainResult:
    """Train `model` in place for `cfg.steps` optimiser steps (or until stopped).

    `stop(step)` and `deadline` (a time.time() value) end the run cleanly between steps; all ranks
    agree on the decision. With `out_dir`, a resumable state is written there every
    `cfg.checkpoint_every` steps and at the end, and an existing one is resumed when `resume`.
    `manifest` (provenance, identifiers of the embedding rows, ...) goes into the kit checkpoint.
    `logger` (trm_core.loggers) receives each logged interval's metrics on rank 0; the caller closes it.
    A line is logged every `cfg.log_every` steps, and after any step that began LOG_AT_LEAST_S after
    the last line; `clock` (default time.perf_counter) times the intervals.
    `fit` (trm_core/fit.py) spends the steps per task: checks every `fit.every` steps, one
    metrics.jsonl line per check, fitted tasks out of the batches; None (default) trains as before.
    """
    device = torch.device(device)
    out = Path(out_dir) if out_dir is not None else None
    trainer = _Trainer(model, batches, cfg, device, out, dict(manifest or {}), log, logger or NullLogger())
    if clock is not None:
        trainer.clock = clock
    if out is not None and resume and (out / STATE_FILE).is_file():
        trainer.restore(out / STATE_FILE)
        log(f"resumed from {out / STATE_FILE} at step {trainer.step}")

    def should_stop(step: int) -> bool:
        if deadline is not None and time.time() >= deadline:
            return True
        return bool(stop and stop(step))

    return trainer.run(should_stop, fit)
