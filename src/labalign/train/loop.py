"""One training phase: packed micro-batches, accumulation to the effective batch, checkpoints, selection.

The schedule of a phase is a pure function of (seed, phase, epoch) and the data, and every rank knows
the whole step (which samples, how they are packed, how many targets), so the loss of a step is the same
on 1 or N processes and after a resume, up to floating-point summation order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from labalign.settings.train import TrainSettings
from labalign.train import checkpoint as ckpt
from labalign.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
    parallelism,
)
from labalign.train.general import GeneralValidation
from labalign.train.model import CausalLMLoss, Student, bf16_enabled, load_student, merged_state_dict
from labalign.train.packing import build_pack, epoch_order, pack_step, steps_of
from labalign.train.plots import plot_losses
from labalign.train.summary import PhaseResult
from labalign.train.tokenize import TokenizedData, TokenStats
from labalign.train.trainlog import LogWriter, read_log

Evaluator = Callable[[Path], float]
"""Scores a checkpoint (a Hugging Face model directory); higher is better. Called on the main process."""


@dataclass
class PhaseSpec:
    """What one phase trains on and from where."""

    name: str  # directory name and log label: phase1, phase2, stacked
    index: int  # 1 or 2 (0 for stacked): picks phase settings and seeds the data order
    start_model: Path
    train: TokenizedData
    heldout: TokenizedData | None
    evaluator: Evaluator | None = None
    data_stats: TokenStats = field(default_factory=TokenStats)
    general: GeneralValidation | None = None  # held-out general text: drift from the base per checkpoint
    replay: dict[str, int] = field(default_factory=dict)  # general replay mixed into `train`
    # With replay: `train` is the phase's own samples [0, own) followed by replay texts, and each epoch
    # trains on the own samples plus that epoch's draw (indices into `train`).
    own: int | None = None
    replay_draws: list[list[int]] | None = None

    def epoch_samples(self, epoch: int, seed: int) -> list[int]:
        """The samples of one epoch in their training order: a function of (seed, phase, epoch)."""
        if self.replay_draws is None:
            return epoch_order(len(self.train), seed=seed, phase=self.index, epoch=epoch)
        items = [*range(self.own or 0), *self.replay_draws[epoch]]
        return [items[i] for i in epoch_order(len(items), seed=seed, phase=self.index, epoch=epoch)]

    def epoch_size(self) -> int:
        return len(self.train) if self.replay_draws is None else (self.own or 0) + len(self.replay_draws[0])


def lr_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based): linear warm-up, then
    constant or cosine to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    return 1.0


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    module.eval()
    try:
        yield
    finally:
        module.train()


class PhaseRunner:
    """Trains one phase; construct, then `run()`."""

    def __init__(
        self,
        spec: PhaseSpec,
        settings: TrainSettings,
        out_dir: Path,
        ctx: DistContext,
        log: LogWriter,
        *,
        resume: bool,
        show_progress: bool,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.ctx = ctx
        self.log = log
        self.show_progress = show_progress
        self.phase_dir = out_dir / spec.name
        self.ckpt_root = self.phase_dir / "checkpoints"
        self.state_root = self.phase_dir / "state"
        self.best_dir = self.phase_dir / "best"
        self.epochs = settings.phase_epochs(spec.index)
        self.batch_size = settings.phase_batch_size(spec.index)
        self.steps_per_epoch = math.ceil(spec.epoch_size() / self.batch_size)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.bf16 = bf16_enabled(settings.bf16, ctx.device)
        self.student: Student = load_student(
            spec.start_model, settings, device=ctx.device, bf16=self.bf16, seed=settings.seed + spec.index
        )
        self.loss_module = CausalLMLoss(self.student, settings.loss_chunk_tokens, settings.kl_weight)
        self.model: nn.Module = self.loss_module
        self.mode = parallelism(settings.distributed, ctx)
        if self.mode == "fsdp":
            from labalign.train import fsdp

            # In place: the loss module becomes the FSDP root, its parameters DTensor shards.
            fsdp.shard(self.loss_module, self.student.causal_lm, ctx.device, ctx.world_size, bf16=self.bf16)
        elif self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.loss_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
        self.params = self.student.trainable()  # after sharding: the optimizer must hold the shards
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=settings.phase_learning_rate(spec.index),
            betas=(0.9, 0.95),
            eps=1e-8,
            weight_decay=settings.weight_decay,
        )
        warmup, total, kind = settings.warmup_steps, self.total_steps, settings.scheduler
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup=warmup, total=total, kind=kind)
        )
        self.progress: dict[str, Any] = {
            "phase": spec.name,
            "step": 0,
            "epoch": 0,  # next epoch to run
            "step_in_epoch": 0,  # next step of that epoch
            "samples": 0,
            "tokens": 0,
            "elapsed_s": 0.0,
            "best_step": None,
            "best_heldout_loss": None,
            "best_score": None,
            "best_general_ratio": None,
            "candidates": [],
            "world_size": ctx.world_size,
            "parallelism": self.mode,
        }
        self.filler = int(self.student.tokenizer.pad_token_id or 0)
        # CPU kernels (oneDNN) cache per matmul shape; GPUs gain nothing from padding.
        self.pad_to = 64 if ctx.device.type == "cpu" else 1
        self.lengths = spec.train.lengths()
        self.target_counts = spec.train.loss_counts()  # CE targets + anchored positions
        if resume:
            self._restore()

    # ---- resume -------------------------------------------------------------------------------

    def _restore(self) -> None:
        path = ckpt.latest_state(self.state_root)
        if path is None:
            return
        state = ckpt.load_train_state(path)
        missing = set(self.params) - set(state.trainable)
        if missing:
            raise RuntimeError(f"saved state {path} lacks parameters: {sorted(missing)[:3]}")
        if self.mode == "fsdp":
            from labalign.train import fsdp

            fsdp.load_weights(self.student.module, {n: state.trainable[n] for n in self.params})
            fsdp.load_optimizer_state(self.student.module, self.optimizer, list(self.params), state.optimizer)
        else:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(state.trainable[name].to(param.device, param.dtype))
            self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        rng = state.rng[self.ctx.rank] if self.ctx.rank < len(state.rng) else state.rng[0]
        ckpt.set_rng_state(rng)
        # How this run is laid out, not how the interrupted one was (the saved state fits either).
        self.progress = {**state.progress, "world_size": self.ctx.world_size, "parallelism": self.mode}
        if self.ctx.is_main:
            step = int(self.progress["step"])
            ckpt.drop_after([self.ckpt_root, self.state_root], step)
            best = self.progress.get("best_step")
            marker = self.phase_dir / "best.json"
            recorded = ckpt.read_json(marker).get("step") if marker.is_file() else None
            if best is not None and recorded != best:
                ckpt.copy_checkpoint(self.ckpt_root / f"step-{best}", self.best_dir)
                ckpt.write_json(marker, {"step": best})
        barrier(self.ctx)

    # ---- training -----------------------------------------------------------------------------

    def _autocast(self) -> Any:
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _train_step(self, samples: list[int]) -> tuple[float, float]:
        """One optimizer step over `samples` (all ranks); returns (mean loss per target, grad norm)."""
        plan = pack_step(samples, self.lengths, self.settings.max_batch_tokens, self.ctx.world_size)
        total_targets = int(self.target_counts[samples].sum())
        # DDP and FSDP average gradients over ranks; scaling by world / total makes every supervised
        # token of the whole effective batch weigh the same (not a mean of per-micro-batch means).
        scale = self.ctx.world_size / total_targets
        mine = plan[self.ctx.rank]
        local = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        for j, indices in enumerate(mine):
            batch = build_pack(self.spec.train, indices, filler_token=self.filler, pad_to=self.pad_to)
            batch = batch.to(self.ctx.device)
            last = j == len(mine) - 1
            # DDP all-reduces once per step. FSDP reduce-scatters every micro-batch: skipping that
            # would keep whole unsharded gradients until the last one, the memory FSDP is there to save.
            no_sync = getattr(self.model, "no_sync", None) if self.mode == "ddp" else None
            sync_ctx = no_sync() if (no_sync is not None and not last) else nullcontext()
            with sync_ctx:
                with self._autocast():
                    loss_sum, _ = self.model(
                        batch.input_ids,
                        batch.position_ids,
                        batch.targets,
                        batch.kl_index,
                        batch.kl_ids,
                        batch.kl_logp,
                    )
                (loss_sum * scale).backward()
            local += loss_sum.detach().double()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(all_reduce_sum(self.ctx, local)) / total_targets
        return loss, float(grad_norm)

    @torch.no_grad()
    def heldout_loss(self, data: TokenizedData | None = None) -> float | None:
        """Mean loss per target over the held-out samples, or over `data` (sharded over ranks)."""
        data = self.spec.heldout if data is None else data
        if data is None or not len(data):
            return None
        per_rank = pack_step(
            range(len(data)), data.lengths(), self.settings.max_batch_tokens, self.ctx.world_size
        )
        total = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        with _eval_mode(self.loss_module):
            for indices in per_rank[self.ctx.rank]:
                batch = build_pack(data, indices, filler_token=self.filler, pad_to=self.pad_to)
                batch = batch.to(self.ctx.device)
                with self._autocast():
                    loss_sum, count = self.loss_module(batch.input_ids, batch.position_ids, batch.targets)
                total[0] += loss_sum.double()
                total[1] += count.double()
        if self.mode == "fsdp":
            from labalign.train import fsdp

            fsdp.reshard(self.loss_module)
        total = all_reduce_sum(self.ctx, total)
        return float(total[0] / total[1]) if total[1] > 0 else None

    def _full_states(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(the causal LM's full state dict, the optimizer's state) on the main process, gathered from
        every rank's shards under FSDP (a collective: all ranks call it)."""
        lm = self.student.causal_lm
        if self.mode == "fsdp":
            from labalign.train import fsdp

            names = list(self.params)
            return fsdp.full_model_state(lm), fsdp.full_optimizer_state(
                self.student.module, self.optimizer, names
            )
        if not self.ctx.is_main:
            return {}, {}
        return dict(lm.state_dict()), self.optimizer.state_dict()

    def _checkpoint(self) -> None:
        """Evaluate, save, select the best and prune; RNG is restored afterwards so that evaluating
        (and a judge's sampling) does not change the training that follows."""
        rng = gather_objects(self.ctx, ckpt.rng_state())
        heldout = self.heldout_loss()
        general = self.spec.general
        general_loss = self.heldout_loss(general.data) if general is not None else None
        ratio = general.ratio(general_loss) if general is not None and general_loss is not None else None
        step = int(self.progress["step"])
        full, optimizer_state = self._full_states()
        if self.ctx.is_main:
            hf_dir = self.ckpt_root / f"step-{step}"
            ckpt.save_hf_checkpoint(hf_dir, self.student, merged_state_dict(self.student, full))
            score = float(self.spec.evaluator(hf_dir)) if self.spec.evaluator is not None else None
            candidate = {"step": step, "heldout_loss": heldout, "score": score, "general_ratio": ratio}
            self.progress["candidates"] = [*self.progress.get("candidates", []), candidate]
            if self._is_better(heldout, score, ratio):
                self.progress.update(
                    best_step=step, best_heldout_loss=heldout, best_score=score, best_general_ratio=ratio
                )
                ckpt.copy_checkpoint(hf_dir, self.best_dir)
                ckpt.write_json(self.phase_dir / "best.json", {"step": step})
            self.log.write(
                {
                    "event": "eval",
                    "phase": self.spec.name,
                    "step": step,
                    "heldout_loss": heldout,
                    "score": score,
                    "general_ratio": ratio,
                    "best_step": self.progress["best_step"],
                }
            )
            self.progress["elapsed_s"] = self._elapsed()
            # Trainable weights by their names in the optimizer's module, taken from the full state
            # (a tied parameter is there under one of its names).
            lm_names: dict[int, str] = {}
            for name, param in self.student.causal_lm.named_parameters(remove_duplicate=False):
                if name in full:
                    lm_names.setdefault(id(param), name)
            state = ckpt.TrainState(
                trainable={n: full[lm_names[id(p)]] for n, p in self.params.items()},
                optimizer=optimizer_state,
                scheduler=self.scheduler.state_dict(),
                rng=rng,
                progress=self.progress,
            )
            ckpt.save_train_state(self.state_root / f"step-{step}", state)
            ckpt.prune(
                [self.ckpt_root, self.state_root], self.settings.keep_last, {self.progress["best_step"]}
            )
        self.progress = broadcast_object(self.ctx, self.progress)
        ckpt.set_rng_state(rng[self.ctx.rank])
        barrier(self.ctx)

    def _is_better(self, heldout: float | None, score: float | None, ratio: float | None = None) -> bool:
        if self.progress["best_step"] is None:
            return True
        budget = self.settings.forgetting_budget
        if budget is not None and ratio is not None:
            # Within the forgetting budget first; among checkpoints over it, the least drifted.
            best_ratio = self.progress.get("best_general_ratio")
            fits, best_fits = ratio <= budget, best_ratio is not None and best_ratio <= budget
            if fits != best_fits:
                return fits
            if not fits:
                return best_ratio is None or ratio < best_ratio
        if score is not None:
            best = self.progress["best_score"]
            return best is None or score > best
        if heldout is not None:
            best = self.progress["best_heldout_loss"]
            return best is None or heldout < best
        return True  # nothing to judge by: the latest checkpoint is the best

    def _elapsed(self) -> float:
        return self._base_elapsed + (time.perf_counter() - self._t_start)

    def run(self) -> PhaseResult:
        settings, spec, progress = self.settings, self.spec, self.progress
        self._t_start = time.perf_counter()
        self._base_elapsed = float(progress.get("elapsed_s", 0.0))
        with _progress_bar(self.show_progress and self.ctx.is_main) as bar:
            task = bar.add_task(
                spec.name, total=self.total_steps, completed=progress["step"], loss="-", tps="-"
            )
            for epoch in range(int(progress["epoch"]), self.epochs):
                steps = steps_of(
                    spec.epoch_samples(epoch, settings.seed),
                    self.batch_size,
                )
                first = int(progress["step_in_epoch"]) if epoch == int(progress["epoch"]) else 0
                for k in range(first, len(steps)):
                    t0 = time.perf_counter()
                    lr = self.scheduler.get_last_lr()[0]
                    loss, grad_norm = self._train_step(steps[k])
                    seconds = time.perf_counter() - t0
                    tokens = int(self.lengths[steps[k]].sum())
                    progress["step"] += 1
                    progress["samples"] += len(steps[k])
                    progress["tokens"] += tokens
                    progress["epoch"], progress["step_in_epoch"] = (
                        (epoch + 1, 0) if k + 1 == len(steps) else (epoch, k + 1)
                    )
                    if self.ctx.is_main:
                        self.log.write(
                            {
                                "event": "train",
                                "phase": spec.name,
                                "step": progress["step"],
                                "epoch": epoch,
                                "loss": loss,
                                "lr": lr,
                                "grad_norm": grad_norm,
                                "samples": len(steps[k]),
                                "tokens": tokens,
                                "tokens_per_s": tokens / seconds if seconds > 0 else None,
                                "elapsed_s": round(self._elapsed(), 3),
                            }
                        )
                    bar.update(task, advance=1, loss=f"{loss:.4f}", tps=f"{tokens / max(seconds, 1e-9):,.0f}")
                    epoch_end = k + 1 == len(steps)
                    if epoch_end or (settings.save_every and progress["step"] % settings.save_every == 0):
                        self._checkpoint()
                        progress = self.progress
        return self._result()

    def _result(self) -> PhaseResult:
        p = self.progress
        p["elapsed_s"] = self._elapsed()
        stats = self.spec.data_stats
        return PhaseResult(
            phase=self.spec.name,
            steps=int(p["step"]),
            samples=int(p["samples"]),
            tokens=int(p["tokens"]),
            seconds=round(float(p["elapsed_s"]), 3),
            best_step=int(p["best_step"]),
            best_dir=str(self.best_dir),
            heldout_loss=p["best_heldout_loss"],
            score=p["best_score"],
            train_samples=self.spec.epoch_size(),
            heldout_samples=len(self.spec.heldout) if self.spec.heldout is not None else 0,
            data={
                "samples": stats.samples,
                "dropped_long": stats.dropped_long,
                "truncated": stats.truncated,
                "dropped_unsupervised": stats.dropped_unsupervised,
                **self.spec.replay,
            },
            general_ratio=p.get("best_general_ratio"),
            candidates=list(p.get("candidates", [])),
        )


def run_phase(
    spec: PhaseSpec,
    settings: TrainSettings,
    out_dir: Path,
    ctx: DistContext,
    log: LogWriter,
    *,
    resume: bool,
    show_progress: bool,
) -> PhaseResult:
    """Train one phase to its end; also draws `<phase>/loss.png` from the log."""
    runner = PhaseRunner(spec, settings, out_dir, ctx, log, resume=resume, show_progress=show_progress)
    result = runner.run()
    if ctx.is_main and log.path is not None:
        plot_losses(read_log(log.path), runner.phase_dir / "loss.png", phases=[spec.name])
    return result
